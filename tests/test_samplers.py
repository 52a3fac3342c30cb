"""Evaluation sharding over processes: frame datasets split at video borders."""
import os

import pytest
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm

from catalog_helpers import shortened
from config_helpers import load_cfg
from vcm_d2.data.samplers import VideoInferenceSampler
from vcm_d2.engine import VCMTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME_SLIM = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml")


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_frame_test_loader_keeps_each_video_in_one_rank(monkeypatch, world_size):
    """Frame datasets (pairs evaluated by CDRE / TransVFC, whose streams run per video) are
    sharded at video borders: every frame once, each video whole and in order on one rank, the
    shards near InferenceSampler's sizes; records without a video id shard as InferenceSampler."""
    with shortened({"vcm_synth_val": 3}):  # 36 frames: no frame count splits it at videos
        cfg = load_cfg(FRAME_SLIM)
        monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
        ranks = []
        for rank in range(world_size):
            monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
            loader = VCMTrainer.build_test_loader(cfg, "vcm_synth_val")
            ranks.append([(r["video_id"], r["frame_idx"]) for batch in loader for r in batch])
            plain = VideoInferenceSampler([None] * 37)
            assert list(plain) == list(InferenceSampler(37))
    frames = [f for shard in ranks for f in shard]
    assert frames == sorted(frames) and len(frames) == 36  # every frame once, in order
    videos = [{v for v, _ in shard} for shard in ranks]
    assert all(not (a & b) for i, a in enumerate(videos) for b in videos[i + 1:])
    shortest = min(len(s) for s in ranks)
    assert max(len(s) for s in ranks) - shortest <= 12  # at most one video off balance
    with pytest.raises(ValueError, match="at least one record"):
        VideoInferenceSampler([])
