"""The rate-task pipeline as a library: resumable compress / train / evaluate steps
(``run``), which config trains which method (``methods``), report pieces and figures
(``report``), the `make demo` pipeline for any dataset (``rate_task``) and TransVFC's stages
(``transvfc``). Used by tools/demo.py, tools/rate_task.py and benchmarks/."""
from .methods import ANCHOR_METHOD, METHOD_TABLES, MethodTable, scale_schedule  # noqa: F401
from .rate_task import RateTaskSpec, run_rate_task, task_metric  # noqa: F401
from .run import Run, StepTimes, evaluate, train  # noqa: F401
