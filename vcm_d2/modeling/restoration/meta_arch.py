"""``RestoreThenDetect``: a restoration network R in front of detectron2's GeneralizedRCNN.

The "restore, then analyse" competitor of CDRE Table I (PromptIR, PromptCIR, CascadeNet): the
decoded frame is restored by R (``ArtifactRemovalCNN``) and the restored frame goes to the
(frozen, clean) detector. The receiver needs nothing but the codec's bitstream: no side stream,
so the rate is the codec's alone.

R runs in pixel space on each input's own (unpadded, already resized) image, before the
detector's normalisation and padding, so that

* the restored frame is an image (what the papers' restoration networks output), R does not
  depend on the detector's PIXEL_MEAN / PIXEL_STD, and its loss is a pixel loss;
* R's output depends only on its own image, never on the other images of a batch or the
  padding (a padded border is the mean colour after normalisation, not the image's edge);
* with R the identity at init (zero last layer), the model is the plain detector bit for bit.

Each input dict holds the decoded frame as "image"; in training also its "original" (CHW, same
format and size; ``VCM.PAIRS.LOAD_ORIGINAL True`` with a pair dataset). Inference never reads
"original". Training losses: "loss_restoration" (``LOSS_WEIGHT`` x L1 or MSE of R(image) vs
original) and, with ``TASK_LOSS_WEIGHT`` > 0, the detector's losses on R(image) times that
weight (with 0 the detector is not run in training at all).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList

from .config import RESTORATION_LOSSES
from .network import ArtifactRemovalCNN, restoration_loss

__all__ = ["RestoreThenDetect", "RESTORATION_PREFIX"]

# Parameter-name prefix of R (MODEL.VCM.TRAINABLE of the frozen-detector configs).
RESTORATION_PREFIX = "restoration"
ORIGINAL_KEY = "original"
# An input's frame already restored by R (0..255, like "image"): R is not run on it again.
RESTORED_KEY = "restored"


@META_ARCH_REGISTRY.register()
class RestoreThenDetect(GeneralizedRCNN):
    """GeneralizedRCNN whose ``preprocess_image`` restores each frame with ``restoration``
    first; the backbone and heads are detectron2's, unchanged (a clean detector checkpoint
    loads with only ``restoration.*`` missing)."""

    @configurable
    def __init__(
        self,
        *,
        restoration: ArtifactRemovalCNN,
        loss: str = "L1",
        loss_weight: float = 1.0,
        task_loss_weight: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            restoration: the restoration network R (0..255 frames in, 0..255 frames out).
            loss: restoration loss, "L1" or "MSE" (``restoration_loss``).
            loss_weight: weight of the restoration loss.
            task_loss_weight: weight of the detector's losses on the restored frames (0: not
                computed).
            kwargs: GeneralizedRCNN's arguments.
        """
        super().__init__(**kwargs)
        if loss_weight < 0 or task_loss_weight < 0 or loss_weight + task_loss_weight == 0:
            raise ValueError(f"restoration loss weights must be >= 0 and not both 0, got "
                             f"LOSS_WEIGHT={loss_weight}, TASK_LOSS_WEIGHT={task_loss_weight}")
        if loss not in RESTORATION_LOSSES:
            raise ValueError(f"MODEL.VCM.RESTORATION.LOSS must be one of {RESTORATION_LOSSES}, got {loss!r}")
        self.restoration = restoration
        self.loss = loss
        self.loss_weight = float(loss_weight)
        self.task_loss_weight = float(task_loss_weight)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        r = cfg.MODEL.VCM.RESTORATION
        ret.update(
            restoration=ArtifactRemovalCNN(width=r.WIDTH, depth=r.DEPTH, channels=len(cfg.MODEL.PIXEL_MEAN)),
            loss=r.LOSS,
            loss_weight=r.LOSS_WEIGHT,
            task_loss_weight=r.TASK_LOSS_WEIGHT,
        )
        return ret

    def restore(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """R(image) of every input (CHW float, 0..255), each on its own image."""
        return [x[RESTORED_KEY] if RESTORED_KEY in x else
                self.restoration(self._move_to_current_device(x["image"]).float()[None])[0]
                for x in batched_inputs]

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Restore, then GeneralizedRCNN's normalisation, padding and batching."""
        images = [(x - self.pixel_mean) / self.pixel_std for x in self.restore(batched_inputs)]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)

    def _original(self, inp: Dict, index: int, restored: torch.Tensor) -> torch.Tensor:
        if ORIGINAL_KEY not in inp:
            raise ValueError(f"input {index}: training RestoreThenDetect needs the original frame as "
                             "'original' (set VCM.PAIRS.LOAD_ORIGINAL True with a pair dataset)")
        original = inp[ORIGINAL_KEY]
        if not isinstance(original, torch.Tensor) or original.shape != restored.shape:
            shape = tuple(original.shape) if isinstance(original, torch.Tensor) else type(original).__name__
            raise ValueError(f"input {index}: 'original' must be a tensor shaped like 'image' "
                             f"{tuple(restored.shape)}, got {shape}")
        return self._move_to_current_device(original)

    def forward(self, batched_inputs: List[Dict]):
        """Training: "loss_restoration" (+ weighted detector losses). Inference: R, then
        GeneralizedRCNN.inference (through ``preprocess_image``)."""
        if not self.training:
            return self.inference(batched_inputs)
        restored = self.restore(batched_inputs)
        per_image = [restoration_loss(r, self._original(x, i, r), self.loss)
                     for i, (x, r) in enumerate(zip(batched_inputs, restored))]
        losses = {"loss_restoration": self.loss_weight * sum(per_image) / len(per_image)}
        if self.task_loss_weight > 0:
            task = super().forward([dict(x, **{RESTORED_KEY: r}) for x, r in zip(batched_inputs, restored)])
            losses.update({k: self.task_loss_weight * v for k, v in task.items()})
        return losses
