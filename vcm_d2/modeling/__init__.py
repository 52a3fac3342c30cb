"""Models: CDRE (distortion representation embedding), TransVFC (video feature codec) and the
video instance segmentation model (per-frame network + tracker)."""
from . import cdre, transvfc, vis  # noqa: F401
