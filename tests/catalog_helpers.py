"""Tests that register datasets under names that may already hold data (the built-in real-data
names, degraded datasets found at import) set those aside and restore them afterwards."""
import contextlib
from typing import Iterable

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
