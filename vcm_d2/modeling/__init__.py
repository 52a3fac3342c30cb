"""Models: CDRE (distortion representation embedding), TransVFC (video feature codec), the
video instance segmentation model (per-frame network + tracker) and the restoration baseline
(restore, then detect)."""
from . import cdre, restoration, transvfc, vis  # noqa: F401
