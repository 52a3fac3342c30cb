from .datasets import MissingDatasetError, prepare_datasets  # noqa: F401
from .defaults import get_vcm_cfg, register_pair_roots  # noqa: F401
from .trainer import VCMTrainer, build_vcm_optimizer, freeze_parameters  # noqa: F401
from .video_predictor import VideoPredictor  # noqa: F401
from .tool_setup import load_model, setup_cfg  # noqa: F401
