"""Config loading shared by the tests (imported by name: pytest puts this folder on sys.path)."""
from vcm_d2.engine import get_vcm_cfg


def load_cfg(path, *opts):
    """A config file with no weights, on CPU, plus ``opts``."""
    cfg = get_vcm_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg
