from . import builtin  # noqa: F401  (registers real datasets present under $DETECTRON2_DATASETS)
