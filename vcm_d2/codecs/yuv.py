"""RGB <-> YUV 4:2:0 conversion shared by every YUV codec (x264, x265, VVC).

swscale's default RGB output from 4:2:0 repeats each chroma sample (no interpolation),
which alone caps the RGB PSNR near 33 dB on colourful content. Bicubic chroma resampling
with full chroma interpolation and accurate rounding reaches ~48 dB on the same frames,
so codec comparisons measure the codec, not the colour conversion. BT.601 limited range
(swscale's default for untagged video) is used in both directions.
"""
import numpy as np
import av
from av.video.reformatter import Interpolation

__all__ = ["rgb_to_yuv420p", "frame_to_rgb", "FFMPEG_SWS_FLAGS"]

RGB_TO_YUV_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
YUV_TO_RGB_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
# The same choice spelled for the ffmpeg command line (-sws_flags).
FFMPEG_SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int+full_chroma_inp"


def rgb_to_yuv420p(img: np.ndarray, threads: int = 1) -> "av.VideoFrame":
    """HxWx3 uint8 RGB (even H, W) -> yuv420p VideoFrame."""
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    return frame.reformat(format="yuv420p", interpolation=RGB_TO_YUV_FLAGS, threads=threads)


def frame_to_rgb(frame: "av.VideoFrame", threads: int = 1) -> np.ndarray:
    """Decoded YUV VideoFrame -> HxWx3 uint8 RGB."""
    rgb = frame.reformat(format="rgb24", interpolation=YUV_TO_RGB_FLAGS, threads=threads)
    return rgb.to_ndarray()
