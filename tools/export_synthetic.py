#!/usr/bin/env python
"""Write the vcm_d2 synthetic benchmark in the official YouTube-VIS 2019, VSPW and COCO-2017 layouts.

Example::

    python tools/export_synthetic.py --output datasets/synth_real --splits val --formats ytvis coco

Output under ``--output``: ``ytvis_2019/``, ``VSPW/`` (masks already converted for detectron2) and
``coco/``, laid out like the real releases so the real-data registrations read them (see
``vcm_d2.data.export``). Reruns keep the frames already written.
"""
import argparse
import logging
import os
import sys
from typing import List, Sequence

from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers the synthetic datasets)
from vcm_d2.data.export import EXPORT_FORMATS, EXPORT_SPLITS, coco_2017_paths, export_synthetic

# Extensions of the index files (annotation json, VSPW split lists) among the exported paths.
_INDEX_EXTENSIONS = (".json", ".txt")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="root folder (a DETECTRON2_DATASETS)")
    parser.add_argument("--formats", nargs="+", choices=EXPORT_FORMATS, default=list(EXPORT_FORMATS),
                        help="layouts to write (default: all)")
    parser.add_argument("--splits", nargs="+", choices=EXPORT_SPLITS, default=list(EXPORT_SPLITS),
                        help="synthetic splits to write (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite frames and masks that already exist")
    return parser


def usage(root: str, formats: Sequence[str], splits: Sequence[str]) -> List[str]:
    """How to load the export (Python), for the formats written. Not through
    DETECTRON2_DATASETS: the built-in ytvis_2019_* / coco_2017_* names carry the official
    classes, and the synthetic classes are others."""
    lines = ["from vcm_d2.data.datasets import builtin"]
    if "ytvis" in formats:
        lines.append(f"builtin.register_all_ytvis_2019('{root}', metadata={{}})  # "
                     + ", ".join(f"ytvis_2019_{s}[_frames]" for s in splits)
                     + " with the json's classes")
    if "vspw" in formats:
        lines.append(f"builtin.register_all_vspw('{root}')  # "
                     + ", ".join(f"vspw_{s}" for s in splits))
    if "coco" in formats:
        lines.append("from detectron2.data.datasets import register_coco_instances")
        for s in splits:
            json_file, image_root = coco_2017_paths(root, s)
            lines.append(f"register_coco_instances('synth_coco_{s}', {{}}, '{json_file}', "
                         f"'{image_root}')")
    return lines


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="vcm_d2")
    log = logging.getLogger("vcm_d2.export_synthetic")
    root = os.path.abspath(args.output)
    try:
        paths = export_synthetic(root, splits=args.splits, formats=args.formats,
                                 overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    for path in paths:
        if path.endswith(_INDEX_EXTENSIONS):
            print(path)
    print(f"{len(paths)} files under {root}. To register them (in Python):")
    print("\n".join(usage(root, args.formats, args.splits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
