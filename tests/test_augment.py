"""Colour jitter placement: in the workers or on the batch's device, the same windows either way, never in the consumer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import curved_trajectory, encode_indexed_video
from datamodules.augment import _jitter_tensor, apply_colour_jitter, batch_colour_jitter, defer_colour_jitter, jittered_clips
from datamodules.nav_video import NavVideoDataModule
from datamodules.pipeline import NavWindowLoader
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import AugmentConfig, WindowConfig, collate_windows, cut_windows

FPS = 10.0
JITTER = AugmentConfig(hflip=0.5, brightness=0.4, contrast=0.4, saturation=0.4)
SIZE = (32, 48)


def _windows(augment: AugmentConfig, seed: int = 0):
    """An episode of random pixels (left/right distinguishable), cut with the given augmentation."""
    n = 80
    frames = np.random.default_rng(seed).integers(0, 256, (n, 12, 16, 3), dtype=np.uint8)
    return cut_windows(frames, np.arange(n) / FPS, curved_trajectory(n, FPS), WindowConfig(goal_horizon_s=(2.0, 3.0), augment=augment),
                       np.random.default_rng(seed), key="ep")


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("jitter")
    with EpisodeShardWriter(root, max_count=2) as writer:
        for i in range(2):
            writer.write(f"ep{i}", encode_indexed_video(60, FPS), curved_trajectory(60, FPS, 1.0 + 0.3 * i), {"fps": FPS})
    return str(writer.shard_paths[0])


def _loader(shard: str, augment: AugmentConfig, placement: str, workers: int = 0) -> NavWindowLoader:
    config = WindowConfig(goal_horizon_s=(1.0, 2.0), augment=augment)
    return NavWindowLoader([shard], config, SIZE, batch_size=8, shuffle_buffer=16, seed=4, num_workers=workers, colour_jitter=placement)


def _by_window(batches, jitter_on_batch: bool = False) -> dict:
    out = {}
    for batch in batches:
        frames = apply_colour_jitter(batch["frames"], batch["colour_jitter"]) if jitter_on_batch else batch["frames"]
        for i, key in enumerate(batch["key"]):
            out[(key, round(float(batch["t"][i]), 4))] = (frames[i], batch["waypoints"][i], batch["goal"][i])
    return out


def test_device_jitter_is_the_collate_definition_and_keeps_channels_last_memory() -> None:
    windows = _windows(JITTER)
    reference = collate_windows(list(windows))["frames"]  # jittered by collate's numpy kernel
    deferred = list(defer_colour_jitter(windows))
    plain = collate_windows(deferred)
    factors = batch_colour_jitter(deferred)
    assert factors.shape == (len(windows), 3) and torch.equal(factors, torch.from_numpy(windows.jitter))
    assert torch.equal(apply_colour_jitter(plain["frames"], factors), reference)  # on the CPU: collation's kernel
    out = _jitter_tensor(plain["frames"], factors)  # what an accelerator runs, here on CPU tensors
    assert out.dtype == torch.uint8 and out.permute(0, 1, 3, 4, 2).is_contiguous()
    diff = (out.int() - reference.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float32 rounding only
    assert (plain["frames"] != reference).float().mean() > 0.5  # the deferred batch was not jittered yet


def test_worker_clips_are_what_the_consumer_would_have_gathered_mirrored_and_jittered() -> None:
    windows = _windows(JITTER, seed=1)
    assert 0 < windows.flip.sum() < len(windows)
    reference = collate_windows(list(windows))
    chunks = list(jittered_clips(windows, chunk=7))  # chunk boundaries inside the episode
    assert [len(c) for c in chunks] == [7] * (len(windows) // 7) + ([len(windows) % 7] if len(windows) % 7 else [])
    assert all(c.jitter is None for c in chunks)
    batch = collate_windows([w for c in chunks for w in c])  # what the consumer does with them: copy and mirror
    for name in ("frames", "waypoints", "goal", "scale", "t"):
        assert torch.equal(batch[name], reference[name]), name
    assert batch_colour_jitter([w for c in chunks for w in c]) is None


def test_both_placements_give_the_same_windows_and_the_consumer_receives_no_jitter_to_apply(shard: str) -> None:
    plain = _by_window(_loader(shard, AugmentConfig(hflip=0.5), "workers"))  # same draws: jitter strengths only scale them
    in_workers = _by_window(_loader(shard, JITTER, "workers"))
    on_batch = _by_window(_loader(shard, JITTER, "batch"), jitter_on_batch=True)
    assert plain.keys() == in_workers.keys() == on_batch.keys() and len(plain) > 20
    changed = 0
    for key, (frames, waypoints, goal) in in_workers.items():
        assert torch.equal(frames, on_batch[key][0])  # the same kernel, in the worker or on the batch
        assert torch.equal(waypoints, plain[key][1]) and torch.equal(goal, plain[key][2])  # flips as without jitter
        changed += not torch.equal(frames, plain[key][0])
    assert changed == len(plain)
    records = list(_loader(shard, JITTER, "workers").episodes)
    assert all(r.windows is None or r.windows.jitter is None for r in records)


def test_two_workers_send_the_jittered_clips_through_shared_memory(shard: str) -> None:
    alone = _by_window(_loader(shard, JITTER, "batch", workers=2), jitter_on_batch=True)
    workers = _by_window(_loader(shard, JITTER, "workers", workers=2))
    assert workers.keys() == alone.keys()
    assert all(torch.equal(workers[k][0], alone[k][0]) for k in alone)


def test_datamodule_places_the_jitter_by_where_batches_live_and_applies_it_after_transfer(shard: str) -> None:
    def first_batch(**kwargs):
        dm = NavVideoDataModule(train_shards=shard, image_size=SIZE, batch_size=4, num_workers=0, samples_per_epoch=8,
                                shuffle_buffer=0, goal_horizon_s=(1.0, 2.0), brightness=0.4, contrast=0.4, saturation=0.4, **kwargs)
        dm.setup("fit")
        return dm, dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)

    dm, batch = first_batch()  # no trainer, so the batches live on the CPU: jittered in the workers
    assert "colour_jitter" not in batch
    jittered = batch["frames"]
    dm, batch = first_batch(colour_jitter_on="device")
    assert batch["colour_jitter"].shape == (4, 3)
    raw = batch["frames"].clone()
    batch = dm.on_after_batch_transfer(batch, 0)
    assert "colour_jitter" not in batch and not torch.equal(batch["frames"], raw)
    assert torch.equal(batch["frames"], jittered)
    with pytest.raises(ValueError, match="colour_jitter_on"):
        NavVideoDataModule(train_shards=shard, colour_jitter_on="gpu")
