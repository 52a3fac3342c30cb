""""Restore, then analyse": the restoration-network competitor of CDRE Table I (PromptIR,
PromptCIR, CascadeNet style). A small residual artifact-removal CNN (``ArtifactRemovalCNN``)
restores the decoded frame in pixel space in front of detectron2's unchanged (frozen, clean)
detector; it is trained on pair datasets (decoded -> original) with ``restoration_loss``.

Importing registers the meta-architecture ``RestoreThenDetect``. Config:
``add_restoration_config`` (``MODEL.VCM.RESTORATION``).
"""
from .config import RESTORATION_LOSSES, add_restoration_config
from .meta_arch import RESTORATION_PREFIX, RestoreThenDetect
from .network import ArtifactRemovalCNN, restoration_loss

__all__ = ["add_restoration_config", "RESTORATION_LOSSES", "ArtifactRemovalCNN", "restoration_loss",
           "RestoreThenDetect", "RESTORATION_PREFIX"]
