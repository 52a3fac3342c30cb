"""Rate-task evaluation: a detectron2 evaluator plus exact rate accounting.

The rate of a record is the pixel codec's ``bits`` (stored in pair-dataset records by
tools/compress_dataset.py) or, for models that code the frame themselves (feature codecs),
the ``bits`` in the model's output, plus any ``side_bits`` a model reports (e.g. CDRE's side
bitstream). bpp = all bits / all pixels of the evaluated frames.
"""
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..utils.rate import BITS, SIDE_BITS
from .ytvis_evaluation import YTVISEvaluator


class RateTaskEvaluator(DatasetEvaluator):
    """Wrap a task evaluator and add ``results["rate"] = {"bpp", "side_bpp", "frames"}``."""

    def __init__(self, task_evaluator: DatasetEvaluator, require_bits: bool = False):
        """
        Args:
            task_evaluator: the evaluator that computes the task metric (AP, mIoU, ...).
            require_bits: raise if an input has no ``bits`` (evaluating compressed data whose
                rate was lost would report a silently wrong bpp).
        """
        self._task = task_evaluator
        self._require_bits = require_bits
        self.reset()

    def reset(self):
        self._task.reset()
        self._bits = 0
        self._side_bits = 0
        self._pixels = 0
        self._frames = 0
        self._frames_with_bits = 0

    @staticmethod
    def _sum_bits(value):
        if value is None:
            return 0
        if isinstance(value, (list, tuple)):
            return int(sum(value))
        return int(value)

    def process(self, inputs, outputs):
        self._task.process(inputs, outputs)
        for inp, out in zip(inputs, outputs):
            frames = len(inp["file_names"]) if "file_names" in inp else 1
            coded_by_model = isinstance(out, dict) and BITS in out
            if BITS in inp and coded_by_model:
                raise ValueError(
                    f"record {inp.get('file_name')} has 'bits' from a pixel codec and from the "
                    "model; a frame is coded once"
                )
            if BITS in inp or coded_by_model:
                self._bits += self._sum_bits(out[BITS] if coded_by_model else inp[BITS])
                self._frames_with_bits += frames
            elif self._require_bits:
                raise ValueError(f"record {inp.get('file_name')} has no 'bits' field")
            if isinstance(out, dict) and SIDE_BITS in out:
                self._side_bits += self._sum_bits(out[SIDE_BITS])
            self._frames += frames
            self._pixels += frames * int(inp["height"]) * int(inp["width"])

    def evaluate(self):
        results = self._task.evaluate()
        totals = comm.gather(
            (self._bits, self._side_bits, self._pixels, self._frames, self._frames_with_bits),
            dst=0,
        )
        if not comm.is_main_process():
            return {}
        bits, side, pixels, frames, with_bits = (sum(t) for t in zip(*totals))
        results = OrderedDict(results or {})
        if pixels > 0:
            rate = {"side_bpp": side / pixels, "frames": frames}
            # A partially rated set would give a wrong bpp: report none rather than a wrong one.
            if with_bits == frames and with_bits > 0:
                rate["bpp"] = (bits + side) / pixels
                rate["codec_bpp"] = bits / pixels
            results["rate"] = rate
        return results


def load_sem_seg(filename, dtype=int):
    """Label PNG -> array. detectron2's default loader calls ``np.array(..., copy=False)``,
    which raises under numpy 2."""
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def build_task_evaluator(cfg, dataset_name, output_folder=None):
    """The task evaluator for a dataset's ``evaluator_type``, wrapped for rate accounting."""
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", "coco")
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        tasks = ["bbox"]
        if cfg.MODEL.MASK_ON:
            tasks.append("segm")
        if cfg.MODEL.KEYPOINT_ON:
            tasks.append("keypoints")
        kpt_sigmas = cfg.TEST.KEYPOINT_OKS_SIGMAS or None
        if cfg.MODEL.KEYPOINT_ON and not kpt_sigmas:
            kpt_sigmas = meta.get("keypoint_oks_sigmas", None)
        task = COCOEvaluator(
            dataset_name,
            tasks=tuple(tasks),
            distributed=True,
            output_dir=output_folder,
            kpt_oks_sigmas=kpt_sigmas or (),
        )
    elif evaluator_type == "sem_seg":
        task = SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                               sem_seg_loading_fn=load_sem_seg)
    elif evaluator_type == "ytvis":
        task = YTVISEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    else:
        known = ["coco", "coco_panoptic_seg", "sem_seg", "ytvis"]
        raise NotImplementedError(
            f"no evaluator for evaluator_type={evaluator_type!r} of {dataset_name}; known: {known}"
        )
    if not cfg.VCM.EVAL.REPORT_RATE:
        return task
    return RateTaskEvaluator(task)


__all__ = ["RateTaskEvaluator", "build_task_evaluator"]
