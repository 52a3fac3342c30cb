"""Dataset mapper for compressed pair datasets (see ``vcm_d2.data.pairs``)."""
import copy
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..codecs.stored import DEFAULT_DECODED_CACHE_MB, DecodedFrameCache
from .pairs import BITSTREAM_FRAME, read_frame

__all__ = ["PairDatasetMapper"]


class PairDatasetMapper(DatasetMapper):
    """DatasetMapper that reads the compressed image and, optionally, its original.

    ``file_name`` (the compressed frame) becomes "image" exactly as in DatasetMapper; a frame of
    a bitstream-stored pair dataset is decoded from its bitstream (``pairs.read_frame``, through
    this mapper's cache of decoded segments: one per data-loader worker). With
    ``load_original``, ``original_file_name`` becomes "original" (CHW uint8 tensor in the same
    ``image_format``), transformed by the very ``TransformList`` drawn for the compressed image,
    so both stay pixel-aligned under random flips, resizes and crops. Annotations and sem_seg are
    handled as in DatasetMapper; "bits"/"bpp" (and the rest of the record) are kept.
    """

    @configurable
    def __init__(self, is_train: bool, *, load_original: bool = False,
                 decoded_cache_mb: float = DEFAULT_DECODED_CACHE_MB, **kwargs):
        """
        Args:
            is_train, kwargs: as for detectron2's DatasetMapper.
            load_original: also read ``original_file_name`` into "original". False for
                compressed-only evaluation (the original is then never read).
            decoded_cache_mb: memory for the frames decoded from stored bitstreams, per process.
        """
        super().__init__(is_train, **kwargs)
        self.load_original = bool(load_original)
        self.frame_cache = DecodedFrameCache(decoded_cache_mb)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, load_original: Optional[bool] = None):
        ret = super().from_config(cfg, is_train)
        ret["load_original"] = cfg.VCM.PAIRS.LOAD_ORIGINAL if load_original is None else load_original
        ret["decoded_cache_mb"] = cfg.VCM.PAIRS.DECODED_CACHE_MB
        return ret

    def _read_image(self, dataset_dict: dict) -> np.ndarray:
        """The record's (compressed) frame, from its file or its stored bitstream; the record
        loses its ``bitstream_frame``, so both storages give the same outputs."""
        image = read_frame(dataset_dict, self.image_format, self.frame_cache)
        dataset_dict.pop(BITSTREAM_FRAME, None)
        return image

    def _read_original(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        if "original_file_name" not in dataset_dict:
            raise KeyError(
                f"record {dataset_dict.get('file_name')!r} has no 'original_file_name': "
                "load_original=True needs a pair dataset (vcm_d2.data.pairs.register_pair_dataset)"
            )
        original = utils.read_image(dataset_dict["original_file_name"], format=self.image_format)
        if original.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"original {dataset_dict['original_file_name']!r} is {original.shape[1]}x"
                f"{original.shape[0]} but compressed {dataset_dict['file_name']!r} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH); the pair cannot be aligned"
            )
        return original

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = self._read_image(dataset_dict)
        utils.check_image_size(dataset_dict, image)
        original = self._read_original(dataset_dict, image) if self.load_original else None

        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # h, w

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if original is not None:
            original = transforms.apply_image(original)
            dataset_dict["original"] = torch.as_tensor(np.ascontiguousarray(original.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
