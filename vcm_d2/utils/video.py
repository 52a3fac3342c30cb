"""Video files: frames in, frames out.

* ``iter_video_frames``: the RGB frames of a video file (PyAV) or of a folder of images;
* ``prepare_frame``: an RGB frame as a model input, resized like detectron2's DefaultPredictor;
* ``video_frame_rate``: the frame rate of a video file (PyAV), None for a folder of frames;
* ``write_mp4``: RGB frames -> H.264 mp4 (PyAV's libx264), written atomically.

Drawing predictions on frames is ``drawing.py``'s.
"""
import os
from fractions import Fraction
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from detectron2.data import transforms as T
from PIL import Image

from .io import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "iter_video_frames", "prepare_frame", "video_frame_rate",
           "write_mp4"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_RGB_FORMATS = ("RGB", "BGR")  # INPUT.FORMATs a colour frame converts to

MP4_ENCODER = "libx264"
MP4_PIX_FMT = "yuv420p"  # what every player decodes; needs even width and height
YUV420_MULTIPLE = 2
DEFAULT_CRF = 18  # x264's "visually lossless" point: the demo shows predictions, not artifacts
FPS_MAX_DENOMINATOR = 1001  # keeps NTSC rates such as 30000/1001 exact


def iter_video_frames(path: str, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """RGB frames (H x W x 3 uint8) of a video file (decoded with PyAV) or of a folder of
    images (sorted by file name)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        frames = (np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names)
    elif os.path.isfile(path):
        frames = _decode_video_file(path)
    else:
        raise FileNotFoundError(f"no video file or frame folder at {path}")
    for i, frame in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _decode_video_file(path: str) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def prepare_frame(rgb: np.ndarray, input_format: str, min_size: int, max_size: int) -> torch.Tensor:
    """An RGB frame as the model's input: resized like DefaultPredictor (shortest edge
    ``min_size``, longest at most ``max_size``; 0 keeps the size), channels in ``input_format``,
    C x H x W float tensor."""
    if input_format not in _RGB_FORMATS:
        raise ValueError(f"INPUT.FORMAT must be one of {_RGB_FORMATS} for video input, got "
                         f"{input_format!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 frame, got {rgb.shape} {rgb.dtype}")
    image = rgb[:, :, ::-1] if input_format == "BGR" else rgb
    if min_size > 0:
        image = T.ResizeShortestEdge([min_size, min_size], max_size).get_transform(image) \
            .apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def video_frame_rate(path: str) -> Optional[Fraction]:
    """Frame rate of the first video stream of the file ``path``; None for a folder of frames
    or a stream that does not state it."""
    import av

    if not os.path.isfile(path):
        return None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    return Fraction(rate) if rate else None


def _even(frame: np.ndarray) -> np.ndarray:
    """Edge-replicate a bottom row / right column so that H and W are even (yuv420p)."""
    h, w = frame.shape[:2]
    pad_h, pad_w = (-h) % YUV420_MULTIPLE, (-w) % YUV420_MULTIPLE
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float, crf: int = DEFAULT_CRF) -> int:
    """Encode RGB uint8 frames (H x W x 3, all of one size) into an H.264 mp4 at ``path``.

    Frames are consumed one at a time (a generator may compute them). Odd sizes get one
    replicated row / column (yuv420p). The file is written to a temp file next to ``path``
    and renamed at the end, so an error or an interrupt (also one raised by ``frames``)
    leaves no partial file. Returns the number of frames written; ValueError if none.
    """
    import av

    rate = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    written = 0

    def write(f) -> None:
        nonlocal written
        with av.open(f, "w", format="mp4") as container:
            stream = None
            for index, frame in enumerate(frames):
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"frame {index}: expected H x W x 3 uint8 RGB, got "
                                     f"{frame.shape} {frame.dtype}")
                frame = _even(frame)
                if stream is None:
                    stream = container.add_stream(MP4_ENCODER, rate=rate)
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = MP4_PIX_FMT
                    stream.options = {"crf": str(crf)}
                elif frame.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"frame {index} is {frame.shape[:2]} (H x W), the first "
                                     f"frame was {(stream.height, stream.width)}")
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(picture))
                written += 1
            if stream is None:
                raise ValueError(f"no frames to write to {path}")
            container.mux(stream.encode(None))  # flush the encoder

    atomic_write(path, write)
    return written
