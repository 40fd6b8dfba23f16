"""Recycled shared memory for decoded episodes: a slot is reused only once the training process let go of it."""

from __future__ import annotations

import gc
import io

import pytest
import torch

from conftest import curved_trajectory, frame_with_index
from datamodules import pipeline, video_decode
from datamodules.frame_pool import FramePool, PooledFrames, released_table
from datamodules.pipeline import NavWindowLoader, touched_shared_frames
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import WindowConfig
from s2e.video_io import write_mp4

SHAPE = (6, 8, 8, 3)
FPS = 10.0
SIZE = (48, 64)
CONFIG = WindowConfig(goal_horizon_s=(1.0, 2.0))


def _send(pool: FramePool, consumer: PooledFrames, frames: torch.Tensor) -> torch.Tensor:
    """One record of ``frames`` from worker 0, as the training process sees it."""
    ref = pool.ref(frames)
    assert ref is not None
    return consumer.frames(0, ref)


def test_a_slot_is_reused_only_after_the_training_process_let_go_of_it() -> None:
    table = released_table(1, slots=4)
    pool, consumer = FramePool(table[0], touched_shared_frames), PooledFrames(table)
    first = pool.take(SHAPE)
    first.fill_(1)
    seen = _send(pool, consumer, first)
    assert seen.data_ptr() == first.data_ptr() and int(seen.sum()) == first.numel()
    assert _send(pool, consumer, first) is seen  # a later slice of the same episode: the same view
    second = pool.take(SHAPE)
    assert second.data_ptr() != first.data_ptr()  # the first is still held by the training process
    window = seen  # a window of the first episode in the shuffle buffer
    _send(pool, consumer, second)  # the next episode arrived: only the window holds the first now
    del seen
    assert pool.take(SHAPE).data_ptr() not in (first.data_ptr(), second.data_ptr())
    del window
    gc.collect()
    assert pool.take(SHAPE).data_ptr() == first.data_ptr()  # released: recycled
    assert len(pool) == 3 and pool.fresh == 0


def test_frames_never_sent_are_reused_and_a_stale_release_never_frees_a_slot() -> None:
    table = released_table(1, slots=1)
    pool = FramePool(table[0], touched_shared_frames)
    abandoned = pool.take(SHAPE)  # decoding failed before any window left the worker
    retry = pool.take(SHAPE)
    assert retry.data_ptr() == abandoned.data_ptr()
    PooledFrames(table).frames(0, pool.ref(retry))  # sent: busy until released
    table[0, 0] = 12345  # a release left by an earlier pool of this worker
    fresh = pool.take(SHAPE)
    assert fresh.data_ptr() != retry.data_ptr() and pool.fresh == 1  # pool full: a fresh segment, never the busy slot
    assert pool.ref(fresh) is None  # sent as a tensor


def test_a_free_slot_too_small_is_replaced_by_a_larger_one() -> None:
    pool = FramePool(released_table(1, slots=1)[0], touched_shared_frames)
    small = pool.take(SHAPE)
    large = pool.take((60, 8, 8, 3))
    assert large.shape == (60, 8, 8, 3) and len(pool) == 1 and pool.fresh == 0
    assert pool.ref(small) is None and pool.ref(large) is not None


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six episodes of different lengths whose frames all differ (frame j of episode i shows 100 i + j):
    a slot overwritten while windows still use it changes their pixels."""
    root = tmp_path_factory.mktemp("pool")
    with EpisodeShardWriter(root, max_count=6) as writer:
        for i in range(6):
            n, video = 40 + 5 * i, io.BytesIO()
            write_mp4(video, (frame_with_index(100 * i + j) for j in range(n)), FPS)
            writer.write(f"ep{i}", video.getvalue(), curved_trajectory(n, FPS, 1.0 + 0.1 * i), {"fps": FPS})
    return str(writer.shard_paths[0])


def _frames_by_window(batches) -> dict:
    return {(key, round(float(batch["t"][i]), 4)): batch["frames"][i] for batch in batches for i, key in enumerate(batch["key"])}


@pytest.mark.parametrize("shuffle_buffer", [4, 400])
def test_persistent_workers_recycle_slots_without_changing_a_pixel(shard: str, shuffle_buffer: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs through two persistent workers equal the in-process loader frame for frame, from
    fewer slots than episodes; episodes arrive in several slices (a slot released after its first
    slice would be overwritten while the later ones are still on their way)."""
    monkeypatch.setattr(video_decode, "DECORD_CHUNK", 8)  # the workers are forked with these
    monkeypatch.setattr(pipeline, "RECORD_MIN_WINDOWS", 3)
    reference = _frames_by_window(NavWindowLoader([shard], CONFIG, SIZE, batch_size=8, shuffle_buffer=0))
    loader = NavWindowLoader([shard], CONFIG, SIZE, batch_size=8, shuffle_buffer=shuffle_buffer, num_workers=2, persistent_workers=True)
    assert loader.pooled_frames is not None
    for epoch in range(2):
        loader.set_epoch(epoch)
        got = _frames_by_window(loader)
        assert got.keys() == reference.keys() and len(got) > 60
        for key, frames in got.items():
            assert torch.equal(frames, reference[key]), key
    slots = len(loader.pooled_frames._slots)
    assert 2 <= slots < 12  # 12 episodes decoded in two epochs


def test_workers_that_are_not_persistent_decode_into_fresh_memory(shard: str) -> None:
    loader = NavWindowLoader([shard], CONFIG, SIZE, batch_size=8, shuffle_buffer=16, num_workers=2)
    assert loader.pooled_frames is None
    assert len(_frames_by_window(loader)) > 60
