"""vcm_d2: Video Coding for Machines as a Detectron2 plugin.

Importing the package registers its codecs, datasets, backbones and meta-architectures.
"""
from . import codecs, data, evaluation, modeling, utils  # noqa: F401  (registration side effects)
from .config import add_vcm_config

__all__ = ["add_vcm_config"]
