"""Config setup shared by tools/train_net.py, the demo and tests."""
import os

from detectron2.config import get_cfg

from ..config import add_vcm_config
from ..data.degradation import register_derived_datasets


def get_vcm_cfg():
    """detectron2's default config plus the vcm_d2 keys."""
    return add_vcm_config(get_cfg())


def register_pair_roots(roots):
    """Register every compressed pair dataset found under ``roots`` (cfg.VCM.PAIRS.ROOTS).

    Each root holds ``<dataset>/<codec>/q<quality>/manifest.json``; only folders named after a
    registered base dataset are used. Degraded datasets stored directly in a root
    (``<dataset>~<kind>/``, see vcm_d2.data.degradation) are registered first, so that their
    pairs (``<dataset>~<kind>@<codec>_q<quality>``) are found too. Returns the registered names."""
    names = []
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"VCM.PAIRS.ROOTS entry {root!r} is not a directory")
        names += register_derived_datasets(root)
    return names


__all__ = ["get_vcm_cfg", "register_pair_roots"]
