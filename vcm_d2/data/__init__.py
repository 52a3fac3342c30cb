"""Datasets: the synthetic benchmark, compressed pair datasets and real-dataset split tables.

Importing registers the synthetic benchmark, then every real dataset and compressed pair
dataset found under $DETECTRON2_DATASETS (see datasets/README.md). The synthetic sets come
first so that their compressed copies under vcm_compressed/ find their base dataset.
"""
from .synthetic import register_synthetic

register_synthetic()

from . import datasets  # noqa: E402,F401  (registers real datasets that are present)
from .clip_mapper import ClipDatasetMapper  # noqa: E402,F401
from .mapper import PairDatasetMapper  # noqa: E402,F401
from .pairs import (  # noqa: E402,F401
    load_pair_dicts,
    pair_dataset_name,
    register_pair_dataset,
    register_pair_datasets_from_dir,
)
