"""Tests that register datasets under names that may already hold data (the built-in real-data
names, degraded datasets found at import) set those aside and restore them afterwards."""
import contextlib
from typing import Iterable, Mapping, Optional, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog


@contextlib.contextmanager
def catalog_aside(names: Iterable[str]):
    """Set the registered ``names`` aside, then drop whatever the block registers and restore
    them."""
    saved = {}
    for name in names:
        if name in DatasetCatalog.list():
            saved[name] = (DatasetCatalog[name], MetadataCatalog.get(name).as_dict())
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    before = set(DatasetCatalog.list())
    try:
        yield
    finally:
        for name in set(DatasetCatalog.list()) - before:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        for name, (func, meta) in saved.items():
            DatasetCatalog.register(name, func)
            meta.pop("name", None)
            MetadataCatalog.get(name).set(**meta)


def first_videos(dicts, num_videos: int, num_frames: Optional[int] = None):
    """The records of the first ``num_videos`` videos (frame records or one record per video),
    each cut to its first ``num_frames`` frames when given."""
    keep = []
    for record in dicts:
        if record["video_id"] not in keep:
            if len(keep) == num_videos:
                break
            keep.append(record["video_id"])
    out = [r for r in dicts if r["video_id"] in keep]
    if num_frames is None:
        return out
    if out and "file_names" in out[0]:  # one record per video: cut its per-frame lists
        per_frame = ("file_names", "image_ids", "annotations")
        return [dict(r, length=min(r["length"], num_frames),
                     **{k: r[k][:num_frames] for k in per_frame if k in r}) for r in out]
    return [r for r in out if r["frame_idx"] < num_frames]


@contextlib.contextmanager
def shortened(num_videos: Mapping[str, Union[int, Tuple[int, int]]]):
    """Inside the block everything that reads a dataset of ``num_videos`` through the catalog
    (loaders, evaluators, the pairs made from it) sees only its first ``num_videos[name]``
    videos, or with ``(videos, frames)`` only the first frames of each.

    detectron2's COCOEvaluator caches a dataset's COCO json once per process and records it as
    the metadata's ``json_file``: the block starts without it and drops the shortened one."""
    num_videos, get = dict(num_videos), DatasetCatalog.get
    patched_before = "get" in vars(DatasetCatalog)
    saved = {n: MetadataCatalog.get(n).get("json_file") for n in num_videos}

    def drop_json_files():
        for name in num_videos:
            if hasattr(MetadataCatalog.get(name), "json_file"):
                delattr(MetadataCatalog.get(name), "json_file")

    drop_json_files()
    cut = {n: v if isinstance(v, tuple) else (v, None) for n, v in num_videos.items()}
    DatasetCatalog.get = lambda name: (first_videos(get(name), *cut[name])
                                       if name in cut else get(name))
    try:
        yield
    finally:
        if patched_before:
            DatasetCatalog.get = get
        else:
            del DatasetCatalog.get  # the class's method again
        drop_json_files()
        for name, json_file in saved.items():
            if json_file is not None:
                MetadataCatalog.get(name).json_file = json_file
