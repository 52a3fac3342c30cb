"""Codecs for video coding for machines: classical (PyAV, ffmpeg, Pillow) and learned.

Importing this package registers every codec in ``CODEC_REGISTRY``.
"""
from .base import CODEC_REGISTRY, Codec, CodedFrame, CodedSequence, available_codecs, build_codec
from . import image_codecs, neural, neural_video, pyav_codecs, vvc  # noqa: F401  (registration side effects)
from .options import parse_codec_options, parse_quality

__all__ = ["CODEC_REGISTRY", "Codec", "CodedFrame", "CodedSequence", "available_codecs", "build_codec",
           "parse_codec_options", "parse_quality"]
