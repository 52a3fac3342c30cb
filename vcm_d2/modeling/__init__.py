"""Models: CDRE (distortion representation embedding) and TransVFC (video feature codec)."""
from . import cdre, transvfc  # noqa: F401
