"""Codec settings as command-line tools take them (tools/compress_dataset.py, video_demo.py)."""
import argparse
import json
from typing import Any, Dict, Sequence, Union

__all__ = ["parse_quality", "parse_codec_options"]


def parse_quality(text: str) -> Union[int, float]:
    """An argparse ``type``: "27" -> 27, "0.5" -> 0.5 (integral values become ints, so folder
    and dataset names read q27, not q27.0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"quality must be a number, got {text!r}")
    return int(value) if value.is_integer() else value


def parse_codec_options(pairs: Sequence[str]) -> Dict[str, Any]:
    """``key=value`` strings (``--codec-opt``) -> dict; values parsed as JSON when possible
    (12, 0.5, true), else kept as strings."""
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--codec-opt expects key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options
