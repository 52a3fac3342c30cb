#!/usr/bin/env python
"""Compress a registered detectron2 dataset with a codec at several qualities.

Example (two machines, each running one shard; the last one to finish writes the manifests)::

    python tools/compress_dataset.py --dataset coco_2017_val --codec x264 \\
        --quality 23 29 35 41 --codec-opt preset=medium --output datasets/vcm_compressed \\
        --workers 8 --shard 0/2

Output: ``<output>/<dataset>/<codec>/q<quality>/{manifest.json,frames/,records/}``, read back by
``vcm_d2.data.pairs`` (pair datasets named ``<dataset>@<codec>_q<quality>``). With ``--store
bitstream``, ``bitstreams/`` (one file per sequence, 1/25 to 1/300 of the disk) replaces the PNGs
of ``frames/``, and the pair dataset decodes frames when it reads them. Reruns resume and remove
the temp files of the writes a killed run left unfinished (shards running at the same time leave
each other's alone).
With ``--degradation lowlight|noise`` the source frames are first degraded (TransVFC robustness
test, ``vcm_d2.data.degradation``) and the dataset ``<dataset>~<kind>`` is compressed instead.
Exit status 1 if some sequence failed (all others are finished first) or ``--merge`` found
missing records.
"""
import argparse
import json
import logging
import os
import sys
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers codecs and built-in datasets)
from vcm_d2.codecs import available_codecs, parse_codec_options, parse_quality
from vcm_d2.data.datasets.builtin import DEGRADED_DIRNAME, datasets_root
from vcm_d2.data.degradation import DEGRADATIONS, degrade_dataset
from vcm_d2.data.pairs import PAIR_NAME_SEPARATOR as PAIR_SEPARATOR
from vcm_d2.data.pairs import STORAGE_BITSTREAM, STORAGE_PNG, STORAGES
from vcm_d2.engine.compress import CompressionError, assemble_manifests, compress_dataset, parse_shard

SYNTHETIC_PREFIX = "vcm_synth_"  # names registered by vcm_d2.data.synthetic.register_synthetic


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", nargs="+", help="registered dataset name(s); default: the "
                        "config's DATASETS.TEST")
    parser.add_argument("--codec", required=True, help="codec name, one of: " + ", ".join(available_codecs()))
    parser.add_argument("--quality", nargs="+", type=parse_quality, required=True,
                        help="quality values (codec-specific: CRF/QP, JPEG quality, ...)")
    parser.add_argument("--output", required=True, help="output root folder")
    parser.add_argument("--codec-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="codec constructor option (repeatable), e.g. gop=12 preset=medium")
    parser.add_argument("--workers", type=int, default=1, help="processes (1: in-process)")
    parser.add_argument("--shard", default="0/1", help="i/N: compress every N-th sequence from i")
    parser.add_argument("--store", choices=STORAGES,
                        help=f"{STORAGE_PNG} (the default): the decoded frames as PNG; "
                        f"{STORAGE_BITSTREAM}: only each sequence's bitstream, decoded when read "
                        "(with --merge: default what the records say)")
    parser.add_argument("--save-bitstreams", action="store_true",
                        help="with --store png, also keep each sequence's bitstream")
    parser.add_argument("--merge", action="store_true",
                        help="only assemble manifest.json from the records of all shards")
    parser.add_argument("--register-synthetic", metavar="ROOT",
                        help="register the vcm_d2 synthetic datasets stored under ROOT first")
    parser.add_argument("--pair-root", action="append", default=[], metavar="DIR",
                        help="register compressed pair datasets under DIR first (to recompress them)")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="config whose VCM.PAIRS.ROOTS / DATASETS.TEST are used")
    parser.add_argument("--degradation", choices=sorted(DEGRADATIONS),
                        help="degrade the source frames first (TransVFC robustness test) and "
                        "compress the degraded dataset <dataset>~<kind>")
    parser.add_argument("--degradation-root", metavar="DIR",
                        help="folder of the degraded datasets (default: "
                        f"$DETECTRON2_DATASETS/{DEGRADED_DIRNAME})")
    parser.add_argument("--degradation-seed", type=int, default=0,
                        help="seed of the noise (with each frame's path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def _register(args) -> List[str]:
    """Register what the arguments ask for; return the default dataset names of the config."""
    from vcm_d2.engine import get_vcm_cfg, register_pair_roots

    if args.register_synthetic:
        from vcm_d2.data.synthetic import register_synthetic

        # `import vcm_d2` registered them under the default root: re-register under ROOT.
        for name in DatasetCatalog.list():
            if name.startswith(SYNTHETIC_PREFIX) and PAIR_SEPARATOR not in name:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
        register_synthetic(args.register_synthetic)
    defaults: List[str] = []
    roots = list(args.pair_root)
    if args.config_file or args.opts:
        cfg = get_vcm_cfg()
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        roots += list(cfg.VCM.PAIRS.ROOTS)
        defaults = list(cfg.DATASETS.TEST)
    if roots:
        register_pair_roots(roots)
    return defaults


def _default_degradation_root() -> str:
    # The datasets root of vcm_d2.data.datasets.builtin, which registers what is found there.
    return os.path.join(datasets_root(), DEGRADED_DIRNAME)


def _degrade(datasets: List[str], args, log: logging.Logger) -> List[str]:
    """Create (or resume) the degraded copy of each dataset; return the degraded names."""
    root = args.degradation_root or _default_degradation_root()
    names = []
    for name in datasets:
        degraded = degrade_dataset(name, args.degradation, root, seed=args.degradation_seed,
                                   progress=not args.no_progress, workers=args.workers)
        log.info("Degraded %s with %s (seed %d) under %s: compressing dataset %s",
                 name, args.degradation, args.degradation_seed, root, degraded)
        names.append(degraded)
    return names


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="vcm_d2")
    log = logging.getLogger("vcm_d2.compress_dataset")
    try:
        shard = parse_shard(args.shard)
        options = parse_codec_options(args.codec_opt)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    defaults = _register(args)
    datasets = args.dataset or defaults
    if not datasets:
        print("error: give --dataset (or a --config-file with DATASETS.TEST)", file=sys.stderr)
        return 2

    unknown = [name for name in datasets if name not in DatasetCatalog.list()]
    if unknown:
        print(f"error: dataset(s) not registered: {unknown}", file=sys.stderr)
        return 2
    if args.degradation:
        try:
            datasets = _degrade(datasets, args, log)
        except ValueError as e:  # a folder made with other settings, bad seed, ...
            print(f"error: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:  # an unreadable frame
            log.error("%s", e)
            return 1
    status = 0
    for name in datasets:
        try:
            if args.merge:
                manifests = assemble_manifests(name, args.codec, args.quality, args.output,
                                               options or None, args.store)
            else:
                manifests = compress_dataset(
                    name, args.codec, args.quality, args.output, codec_options=options,
                    workers=args.workers, shard=shard, progress=not args.no_progress,
                    save_bitstreams=args.save_bitstreams, storage=args.store or STORAGE_PNG,
                )
        except CompressionError as e:
            log.error("%s", e)
            manifests, status = e.manifests, 1
        except RuntimeError as e:  # --merge with missing records
            log.error("%s", e)
            manifests, status = {}, 1
        for quality, path in sorted(manifests.items()):
            with open(path, "r", encoding="utf-8") as f:
                bpp = json.load(f)["bpp"]
            print(f"{name} {args.codec} q{quality}: {bpp:.4f} bpp -> {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
