"""VSPW (Video Scene Parsing in the Wild): loader, mask conversion and registration helpers.

Layout (the official ``VSPW_480p`` release, renamed/linked to ``VSPW``)::

    VSPW/{train,val,test}.txt          # one video name per line
    VSPW/data/<video>/origin/*.jpg     # frames
    VSPW/data/<video>/mask/*.png       # labels: 0 "others", 1..124 classes, 255 void

Labels: 0 ("others") and 255 (void) are ignored and class k becomes k - 1, the usual VSPW
protocol (mmseg's ``reduce_zero_label``). detectron2's DatasetMapper and SemSegEvaluator read
label PNGs as they are, so the masks are converted once into ``mask_detectron2/`` next to
``mask/`` by :func:`convert_vspw_masks` (``python -m vcm_d2.data.datasets.vspw --root ...``).
"""
import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ...utils.io import atomic_write

__all__ = [
    "VSPW_CLASSES",
    "VSPW_IGNORE_LABEL",
    "VSPW_SPLITS",
    "vspw_label_lut",
    "read_vspw_split",
    "load_vspw",
    "convert_vspw_masks",
    "get_vspw_metadata",
    "register_vspw",
]

logger = logging.getLogger(__name__)

# The 124 VSPW classes (raw label k is VSPW_CLASSES[k - 1]); raw 0 is "others" (ignored).
VSPW_CLASSES = [
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide",
    "handrail_or_fence", "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass",
    "sand", "athletic_field", "road", "path", "crosswalk", "building", "house", "bridge", "tower",
    "windmill", "well_or_well_lid", "other_construction", "sky", "mountain", "stone", "wood", "ice",
    "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella",
    "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle",
    "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp", "person",
    "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant", "toy",
    "ball_net", "backboard", "skateboard", "bat", "ball", "cupboard_or_showcase_or_storage_rack",
    "box", "traveling_case_or_trolley_case", "basket", "bag_or_package", "trash_can", "cage",
    "plate", "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow",
    "table_or_desk", "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode",
    "roaster", "other_machine", "refrigerator", "washing_machine", "Microwave_oven", "fan",
    "curtain", "textiles", "clothes", "painting_or_poster", "mirror", "flower_pot_or_vase", "clock",
    "book", "tool", "blackboard", "tissue", "screen_or_television", "computer", "printer",
    "Mobile_phone", "keyboard", "other_electronic_product", "fruit", "food", "instrument", "train",
]
VSPW_IGNORE_LABEL = 255
# Split name -> whether the release has label masks for it.
VSPW_SPLITS = {"train": True, "val": True, "test": False}
FRAMES_DIRNAME = "origin"
RAW_MASK_DIRNAME = "mask"
MASK_DIRNAME = "mask_detectron2"  # converted labels (contiguous, 255 ignored)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def vspw_label_lut() -> np.ndarray:
    """256-entry lookup table raw VSPW label -> contiguous label (0 and >124 -> ignore)."""
    lut = np.full(256, VSPW_IGNORE_LABEL, dtype=np.uint8)
    lut[1:len(VSPW_CLASSES) + 1] = np.arange(len(VSPW_CLASSES), dtype=np.uint8)
    return lut


def get_vspw_metadata() -> Dict[str, Any]:
    return {
        "stuff_classes": list(VSPW_CLASSES),
        "ignore_label": VSPW_IGNORE_LABEL,
        "evaluator_type": "sem_seg",
        "video_key": "video_id",
    }


def read_vspw_split(vspw_root: str, split: str) -> List[str]:
    """Video names listed in ``<vspw_root>/<split>.txt``."""
    path = os.path.join(vspw_root, f"{split}.txt")
    with open(path, "r", encoding="utf-8") as f:
        videos = [line.strip() for line in f if line.strip()]
    if not videos:
        raise ValueError(f"{path} lists no videos")
    return videos


def _frames(video_dir: str) -> List[str]:
    origin = os.path.join(video_dir, FRAMES_DIRNAME)
    if not os.path.isdir(origin):
        raise FileNotFoundError(f"VSPW video folder {origin!r} does not exist")
    names = sorted(n for n in os.listdir(origin) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise ValueError(f"VSPW video folder {origin!r} has no frames")
    return names


def load_vspw(vspw_root: str, split: str, with_masks: Optional[bool] = None) -> List[dict]:
    """Per-frame dicts of one split: ``file_name``, ``sem_seg_file_name`` (converted mask),
    ``video_id`` (video name) and ``frame_idx`` (position in the sorted frame list)."""
    if with_masks is None:
        with_masks = VSPW_SPLITS.get(split, True)
    out = []
    for video in read_vspw_split(vspw_root, split):
        video_dir = os.path.join(vspw_root, "data", video)
        mask_dir = os.path.join(video_dir, MASK_DIRNAME)
        if with_masks and not os.path.isdir(mask_dir):
            raise FileNotFoundError(
                f"{mask_dir!r} is missing: convert the VSPW masks first with "
                f"`python -m vcm_d2.data.datasets.vspw --root {vspw_root}`"
            )
        for t, name in enumerate(_frames(video_dir)):
            record = {
                "file_name": os.path.join(video_dir, FRAMES_DIRNAME, name),
                "video_id": video,
                "frame_idx": t,
            }
            if with_masks:
                record["sem_seg_file_name"] = os.path.join(mask_dir, os.path.splitext(name)[0] + ".png")
            out.append(record)
    logger.info("Loaded %d VSPW frames of split %r from %s", len(out), split, vspw_root)
    return out


def _convert_one(src: str, dst: str, lut: np.ndarray) -> None:
    with Image.open(src) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{src}: expected a single-channel label PNG, got mode {im.mode}")
        raw = np.asarray(im)  # "P": the palette indices are the labels
    atomic_write(dst, lambda f: Image.fromarray(lut[raw]).save(f, format="PNG"))


def convert_vspw_masks(vspw_root: str, splits: Sequence[str] = ("train", "val"),
                       overwrite: bool = False) -> int:
    """Write ``mask_detectron2/*.png`` (contiguous labels) for every video of ``splits``.

    Idempotent: existing converted masks are kept unless ``overwrite``. Returns the number of
    masks written.
    """
    lut = vspw_label_lut()
    written = 0
    for split in splits:
        for video in read_vspw_split(vspw_root, split):
            video_dir = os.path.join(vspw_root, "data", video)
            src_dir = os.path.join(video_dir, RAW_MASK_DIRNAME)
            dst_dir = os.path.join(video_dir, MASK_DIRNAME)
            if not os.path.isdir(src_dir):
                raise FileNotFoundError(f"VSPW mask folder {src_dir!r} does not exist")
            os.makedirs(dst_dir, exist_ok=True)
            for name in sorted(os.listdir(src_dir)):
                if not name.lower().endswith(".png"):
                    continue
                dst = os.path.join(dst_dir, name)
                if overwrite or not os.path.exists(dst):
                    _convert_one(os.path.join(src_dir, name), dst, lut)
                    written += 1
    return written


def register_vspw(name: str, vspw_root: str, split: str) -> None:
    """Register one VSPW split (evaluator_type "sem_seg")."""
    with_masks = VSPW_SPLITS.get(split, True)
    DatasetCatalog.register(name, lambda: load_vspw(vspw_root, split, with_masks))
    meta = get_vspw_metadata()
    if not with_masks:
        meta.pop("evaluator_type")  # no labels to evaluate against
    MetadataCatalog.get(name).set(image_root=os.path.join(vspw_root, "data"), split=split, **meta)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Convert VSPW label masks for detectron2.")
    parser.add_argument("--root", required=True, help="the VSPW folder (holds data/ and train.txt)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    n = convert_vspw_masks(args.root, args.splits, args.overwrite)
    print(f"wrote {n} converted masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
