"""Inference sampling that keeps each video's frames in one process."""
from typing import Hashable, Optional, Sequence

from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm

__all__ = ["VideoInferenceSampler"]


class VideoInferenceSampler(InferenceSampler):
    """detectron2's ``InferenceSampler`` (each rank a contiguous share, every index once) with the
    shard borders moved to the nearest video border.

    Models that code one stream per video (CDRE's per-video side stream, TransVFC's GOPs) then
    see every video whole and in order in one process, so bits and predictions do not depend on
    the number of processes. ``video_ids[i]`` is record i's video (consecutive equal ids form a
    video); ``None`` makes a record a video of its own, which gives InferenceSampler's shards."""

    def __init__(self, video_ids: Sequence[Optional[Hashable]]):
        if not len(video_ids):
            raise ValueError("VideoInferenceSampler needs at least one record")
        self._size = len(video_ids)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._video_local_indices(video_ids, self._world_size, self._rank)

    @staticmethod
    def _video_local_indices(video_ids, world_size: int, rank: int) -> range:
        size = len(video_ids)
        starts = [i for i, v in enumerate(video_ids)
                  if i == 0 or v is None or v != video_ids[i - 1]] + [size]

        def begin(r: int) -> int:  # the video start nearest to InferenceSampler's shard start
            if r >= world_size:
                return size
            target = InferenceSampler._get_local_indices(size, world_size, r).start
            return min(starts, key=lambda s: (abs(s - target), s))

        return range(begin(rank), begin(rank + 1))
