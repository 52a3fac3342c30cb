"""Make every dataset a config names available before its loader is built.

A config may name pair datasets (``<base>@<codec>_q<quality>``) and degraded copies
(``<base>~<kind>``) that nobody has made yet. Those of the synthetic benchmark are built on
first use, with the files ``tools/compress_dataset.py`` (no ``--codec-opt``) and
``--degradation`` would write, under ``VCM.PAIRS.BUILD_ROOT`` (``vcm_compressed/``,
``vcm_degraded/``), where ``import vcm_d2`` registers them in later runs. A missing copy of a
real dataset raises :class:`MissingDatasetError`: one line naming the copy, the folders searched
and the command that makes it.

Under detectron2's ``launch`` one process per machine builds; the others wait for it and then
register what it wrote.
"""
import argparse
import logging
import os
import shlex
from typing import Iterable, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..codecs.options import parse_quality
from ..data.datasets.builtin import (
    COMPRESSED_DIRNAME,
    DEGRADED_DIRNAME,
    datasets_root,
    register_all_derived,
)
from ..data.degradation import (
    DEGRADED_NAME_SEPARATOR,
    degrade_command,
    degrade_dataset,
    register_degraded_dataset,
)
from ..data.pairs import PAIR_NAME_SEPARATOR, register_pair_datasets_from_dir
from .compress import compress_dataset
from .defaults import register_pair_roots

logger = logging.getLogger(__name__)

QUALITY_PREFIX = "_q"  # <codec>_q<quality>, see vcm_d2.data.pairs.pair_dataset_name
COMPRESS_TOOL = "tools/compress_dataset.py"


class MissingDatasetError(KeyError):
    """A pair dataset or degraded copy of a real dataset that has not been made yet."""

    def __str__(self) -> str:  # KeyError would print the message as a quoted repr
        return str(self.args[0])


def parse_pair_name(name: str) -> Optional[Tuple[str, str, float]]:
    """``<base>@<codec>_q<quality>`` -> (base, codec, quality); None for any other name."""
    base, sep, rest = name.rpartition(PAIR_NAME_SEPARATOR)
    codec, qsep, quality = rest.rpartition(QUALITY_PREFIX)
    if not (sep and base and qsep and codec):
        return None
    try:
        return base, codec, parse_quality(quality)
    except argparse.ArgumentTypeError:  # not a number, so not a pair name
        return None


def parse_degraded_name(name: str) -> Optional[Tuple[str, str]]:
    """``<base>~<kind>`` -> (base, kind); None for any other name."""
    base, sep, kind = name.rpartition(DEGRADED_NAME_SEPARATOR)
    return (base, kind) if sep and base and kind else None


def _source(name: str) -> Tuple[str, Optional[str]]:
    """The undegraded dataset under ``name`` and the last degradation applied to it."""
    parsed = parse_degraded_name(name)
    return (_source(parsed[0])[0], parsed[1]) if parsed else (name, None)


def is_synthetic(name: str) -> bool:
    """True for a registered split of the synthetic benchmark (its metadata holds its spec)."""
    return name in DatasetCatalog.list() and "spec" in MetadataCatalog.get(name).as_dict()


def build_root(cfg) -> str:
    return cfg.VCM.PAIRS.BUILD_ROOT or datasets_root()


def _missing_error(name: str, cfg) -> MissingDatasetError:
    pair = parse_pair_name(name)
    base = pair[0] if pair else name
    source, kind = _source(base)
    if source not in DatasetCatalog.list():
        return MissingDatasetError(
            f"Dataset {name!r} is not registered, nor is its source dataset {source!r} "
            f"(real datasets are registered from $DETECTRON2_DATASETS={datasets_root()!r}, see "
            "datasets/README.md)")
    root = datasets_root()
    if pair is None:
        folder = os.path.join(root, DEGRADED_DIRNAME)
        return MissingDatasetError(
            f"Degraded dataset {name!r} is not registered: no finished copy under {folder!r}. "
            f"Make it with: {degrade_command(parse_degraded_name(name)[0], kind, folder)}")
    searched = list(cfg.VCM.PAIRS.ROOTS) + [os.path.join(root, COMPRESSED_DIRNAME)]
    _, codec, quality = pair
    command = (f"python {COMPRESS_TOOL} --dataset {shlex.quote(source)} --codec {codec} "
               f"--quality {quality} --output {shlex.quote(searched[-1])}")
    if kind:
        command += f" --degradation {kind}"
    return MissingDatasetError(
        f"Pair dataset {name!r} is not registered: no manifest {base}/{codec}/q{quality} under "
        f"{', '.join(map(repr, searched))} (VCM.PAIRS.ROOTS and $DETECTRON2_DATASETS). "
        f"Make it with: {command}")


def _plan(names: Iterable[str], cfg) -> List[str]:
    """The unregistered names, sources first; raises MissingDatasetError for real data."""
    plan: List[str] = []

    def visit(name):
        if name in DatasetCatalog.list() or name in plan:
            return
        pair, degraded = parse_pair_name(name), parse_degraded_name(name)
        parent = pair[0] if pair else degraded[0] if degraded else None
        if parent is None:  # not a name of ours: detectron2's loader raises its own KeyError
            return
        if not (cfg.VCM.PAIRS.BUILD_SYNTHETIC and is_synthetic(_source(parent)[0])):
            raise _missing_error(name, cfg)  # the name asked for: its command makes it whole
        visit(parent)
        plan.append(name)

    for name in names:
        visit(name)
    return plan


def _build(name: str, root: str) -> None:
    """Write (or resume) ``name`` under ``root`` and register it."""
    pair = parse_pair_name(name)
    if pair is None:
        base, kind = parse_degraded_name(name)
        logger.info("Building degraded dataset %s on first use under %s", name, root)
        degrade_dataset(base, kind, os.path.join(root, DEGRADED_DIRNAME))
        return
    base, codec, quality = pair
    logger.info("Building pair dataset %s on first use under %s", name, root)
    compress_dataset(base, codec, [quality], os.path.join(root, COMPRESSED_DIRNAME), codec_options={})
    register_pair_datasets_from_dir(os.path.join(root, COMPRESSED_DIRNAME), base)


def _register_built(name: str, root: str) -> None:
    """Register what another process built (same files as :func:`_build`)."""
    pair = parse_pair_name(name)
    if pair is None:
        register_degraded_dataset(*parse_degraded_name(name), os.path.join(root, DEGRADED_DIRNAME))
    else:
        register_pair_datasets_from_dir(os.path.join(root, COMPRESSED_DIRNAME), pair[0])


def prepare_datasets(cfg, names: Iterable[str]) -> List[str]:
    """Register what ``cfg.VCM.PAIRS.ROOTS`` and ``$DETECTRON2_DATASETS`` hold now and make
    every dataset of ``names`` available.

    Synthetic pair datasets and degraded copies are built on first use (once per machine under
    ``launch``); a missing one of a real dataset raises MissingDatasetError. Returns the names
    built here or by another process of this machine."""
    register_pair_roots(cfg.VCM.PAIRS.ROOTS)
    names = [n for n in names if n not in DatasetCatalog.list()]
    if names:  # made since `import vcm_d2` scanned the datasets root (e.g. by the command of
        # a MissingDatasetError)
        register_all_derived(datasets_root())
    plan = _plan(names, cfg)
    if not plan:
        return []
    root = build_root(cfg)
    if comm.get_local_rank() == 0:
        for name in plan:
            _build(name, root)
    comm.synchronize()
    for name in plan:
        if name not in DatasetCatalog.list():
            _register_built(name, root)
    return plan


__all__ = ["MissingDatasetError", "build_root", "is_synthetic", "parse_degraded_name",
           "parse_pair_name", "prepare_datasets"]
