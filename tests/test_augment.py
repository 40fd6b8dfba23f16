"""Flips and colour jitter: the compiled gather against a float reference, and the three placements (loader, workers, batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import datamodules.augment as augment
from conftest import curved_trajectory, encode_indexed_video
from datamodules.augment import (
    _jitter_tensor,
    _load_kernel,
    apply_colour_jitter,
    batch_colour_jitter,
    defer_colour_jitter,
    gather_frames,
    gather_kernel,
    jittered_clips,
)
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
    return cut_windows(
        frames, np.arange(n) / FPS, curved_trajectory(n, FPS), WindowConfig(goal_horizon_s=(2.0, 3.0), augment=augment), np.random.default_rng(seed), key="ep"
    )


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
    _assert_rounding_apart(out.numpy(), reference.numpy())  # float32 on the device, fixed point in the CPU kernel
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


def test_all_placements_give_the_same_windows(shard: str) -> None:
    plain = _by_window(_loader(shard, AugmentConfig(hflip=0.5), "loader"))  # same draws: jitter strengths only scale them
    in_loader = _by_window(_loader(shard, JITTER, "loader"))
    in_workers = _by_window(_loader(shard, JITTER, "workers"))
    on_batch = _by_window(_loader(shard, JITTER, "batch"), jitter_on_batch=True)
    assert plain.keys() == in_loader.keys() == in_workers.keys() == on_batch.keys() and len(plain) > 20
    changed = 0
    for key, (frames, waypoints, goal) in in_loader.items():
        assert torch.equal(frames, in_workers[key][0]) and torch.equal(frames, on_batch[key][0])  # one kernel, wherever it runs
        assert torch.equal(waypoints, plain[key][1]) and torch.equal(goal, plain[key][2])  # flips as without jitter
        changed += not torch.equal(frames, plain[key][0])
    assert changed == len(plain)
    records = list(_loader(shard, JITTER, "workers").episodes)  # the workers send finished clips
    assert all(r.windows is None or r.windows.jitter is None for r in records)
    records = list(_loader(shard, JITTER, "loader").episodes)  # the loader gets the episodes and the draws
    assert any(r.windows is not None and r.windows.jitter is not None for r in records)


def test_two_workers_send_the_jittered_clips_through_shared_memory(shard: str) -> None:
    alone = _by_window(_loader(shard, JITTER, "batch", workers=2), jitter_on_batch=True)
    workers = _by_window(_loader(shard, JITTER, "workers", workers=2))
    loader = _by_window(_loader(shard, JITTER, "loader", workers=2))
    assert workers.keys() == alone.keys() == loader.keys()
    assert all(torch.equal(workers[k][0], alone[k][0]) and torch.equal(loader[k][0], alone[k][0]) for k in alone)


def test_datamodule_places_the_jitter_by_where_batches_live_and_applies_it_after_transfer(shard: str) -> None:
    def first_batch(**kwargs):
        dm = NavVideoDataModule(
            train_shards=shard,
            image_size=SIZE,
            batch_size=4,
            num_workers=0,
            samples_per_epoch=8,
            shuffle_buffer=0,
            goal_horizon_s=(1.0, 2.0),
            brightness=0.4,
            contrast=0.4,
            saturation=0.4,
            **kwargs,
        )
        dm.setup("fit")
        return dm, dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)

    dm, batch = first_batch()  # no trainer, so the batches live on the CPU: jittered by the loader's gather
    assert "colour_jitter" not in batch and dm.train_loader.stream.colour_jitter == "loader"
    jittered = batch["frames"]
    dm, batch = first_batch(colour_jitter_on="device")
    assert batch["colour_jitter"].shape == (4, 3)
    raw = batch["frames"].clone()
    batch = dm.on_after_batch_transfer(batch, 0)
    assert "colour_jitter" not in batch and not torch.equal(batch["frames"], raw)
    assert torch.equal(batch["frames"], jittered)
    with pytest.raises(ValueError, match="colour_jitter_on"):
        NavVideoDataModule(train_shards=shard, colour_jitter_on="gpu")


# ------------------------------------------------------------------------------ the compiled gather


def _assert_rounding_apart(a: np.ndarray, b: np.ndarray) -> None:
    """Two roundings of the same jitter over many windows: no pixel more than one level apart, few
    apart at all, no bias (a wrong rounding rule, such as truncation, differs in about half the
    pixels, all one way). Within one window the fixed-point map's differences share a sign: its
    coefficients are rounded once per window, as if a factor were drawn 1/8192 off."""
    diff = a.astype(np.float64) - np.asarray(b, np.float64)
    assert np.abs(diff).max() <= 1
    assert (diff != 0).mean() < 0.08 and abs(diff.mean()) < 0.01, ((diff != 0).mean(), diff.mean())


def _reference_jitter(clip: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    """The jitter step by step in float64, as torchvision defines it (brightness, contrast towards the
    frame's mean grey, saturation towards each pixel's grey), clamped and rounded once at the end."""
    luma = np.array([0.299, 0.587, 0.114])
    x = clip.astype(np.float64) * b
    mean = (x @ luma).mean(axis=(1, 2))[:, None, None, None]
    x = (x - mean) * c + mean
    grey = (x @ luma)[..., None]
    return np.clip((x - grey) * s + grey, 0, 255).round()


def _coloured_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random pixels whose channels have different means (equal means would hide a channel mix-up)."""
    x = rng.integers(0, 256, shape) * np.array([0.4, 1.0, 0.7]) + np.array([0, 0, 70])
    return np.clip(x, 0, 255).astype(np.uint8)


def _gather(frames: np.ndarray, indices: np.ndarray, flip: np.ndarray, factors) -> np.ndarray:
    out = torch.empty((*indices.shape, *frames.shape[1:]), dtype=torch.uint8)
    gather_frames(out, [torch.from_numpy(frames)], np.zeros(len(indices), np.int64), indices, flip, factors)
    return out.numpy()


@pytest.mark.parametrize("size", [(64, 64), (7, 37), (12, 16), (30, 50), (5, 1), (48, 64)])
@pytest.mark.parametrize("strength", [0.2, 0.6, 0.95])
def test_the_gather_jitters_and_mirrors_like_the_float_reference(size: tuple[int, int], strength: float) -> None:
    """Every row length (SIMD blocks of 16 and 32 pixels plus a plain-C tail), mirrored or not: within
    one grey level. Strengths up to 0.6 run the fixed-point map, 0.95 draws factors that need the
    float one for some windows."""
    rng = np.random.default_rng(size[0] * 100 + size[1])
    frames = _coloured_frames(rng, (20, *size, 3))
    indices = rng.integers(0, 20, (24, 5))
    flip = rng.random(24) < 0.5
    factors = (1 + rng.uniform(-strength, strength, (24, 3))).astype(np.float32)
    out = _gather(frames, indices, flip, factors)
    mirrored = np.zeros_like(out)  # without jitter: exactly the frames, mirrored where drawn
    reference = np.zeros(out.shape)
    for i in range(24):
        expected = frames[indices[i]][:, :, ::-1] if flip[i] else frames[indices[i]]
        reference[i] = _reference_jitter(expected, *factors[i].tolist())
        mirrored[i] = expected
    _assert_rounding_apart(out, reference)
    assert np.array_equal(_gather(frames, indices, flip, None), mirrored)


def test_one_draw_per_window_is_applied_alike_to_all_its_frames() -> None:
    rng = np.random.default_rng(3)
    frames = _coloured_frames(rng, (6, 16, 40, 3))
    indices = np.array([[2, 2, 2, 2, 2], [2, 2, 2, 2, 2], [0, 1, 2, 3, 4]])
    factors = np.array([[1.1, 0.9, 1.15], [0.85, 1.2, 0.8], [1.1, 0.9, 1.15]], np.float32)
    out = _gather(frames, indices, np.zeros(3, bool), factors)
    assert all(np.array_equal(out[0, 0], out[0, f]) for f in range(5))  # one window, one draw: its frames alike
    assert not np.array_equal(out[0, 0], out[1, 0])  # another window, another draw
    assert np.array_equal(out[2, 2], out[0, 0])  # the frame's own mean grey, not the window's
    for f in range(5):
        diff = np.abs(out[2, f].astype(np.float64) - _reference_jitter(frames[f : f + 1], 1.1, 0.9, 1.15)[0])
        assert diff.max() <= 1


def test_windows_draw_the_configured_jitter_ranges() -> None:
    windows = _windows(AugmentConfig(hflip=0.5, brightness=0.2, contrast=0.2, saturation=0.2), seed=5)
    factors = windows.jitter
    assert factors.dtype == np.float32 and factors.shape == (len(windows), 3)
    assert factors.min() >= 0.8 and factors.max() <= 1.2
    assert np.all(np.abs(factors.mean(axis=0) - 1) < 0.06) and np.all(factors.std(axis=0) > 0.08)  # uniform on [0.8, 1.2]: std 0.115


def test_numpy_gives_the_same_batches_where_no_kernel_can_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    windows = _windows(JITTER, seed=6)
    fast = collate_windows(list(windows))
    monkeypatch.setattr(augment, "gather_kernel", lambda: None)
    slow = collate_windows(list(windows))
    for name in ("waypoints", "goal", "scale", "t", "goal_mask"):
        assert torch.equal(fast[name], slow[name]), name
    _assert_rounding_apart(fast["frames"].numpy(), slow["frames"].numpy())  # fixed point vs numpy's float32
    assert torch.equal(
        collate_windows(list(_windows(AugmentConfig(hflip=0.5), seed=6)))["frames"], collate_windows(list(_windows(AugmentConfig(hflip=0.5), seed=6)))["frames"]
    )


@pytest.mark.parametrize("kernel", [True, False])
def test_a_frame_index_outside_its_episode_is_an_error_not_a_stray_read(kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernel:
        monkeypatch.setattr(augment, "gather_kernel", lambda: None)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    out = torch.zeros((1, 2, 8, 8, 3), dtype=torch.uint8)
    for bad in ([0, 4], [-1, 0]):
        with pytest.raises(IndexError):
            gather_frames(out, [torch.from_numpy(frames)], np.zeros(1, np.int64), np.array([bad]), np.zeros(1, bool), None)
    assert int(out.sum()) == 0


def test_the_kernel_is_compiled_once_into_its_cache_and_a_missing_compiler_is_reported(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    if gather_kernel() is None:
        pytest.skip("no C compiler here: the numpy path is what runs")
    monkeypatch.setenv("S2E_KERNEL_CACHE", str(tmp_path))
    fn, info = _load_kernel()
    assert fn is not None and info.startswith("s2e_gather_") and len(list(tmp_path.glob("*.so"))) == 1
    built = next(tmp_path.glob("*.so")).stat().st_mtime_ns
    assert _load_kernel()[0] is not None and next(tmp_path.glob("*.so")).stat().st_mtime_ns == built  # loaded, not rebuilt
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("S2E_KERNEL_CACHE", str(tmp_path / "other"))
    fn, info = _load_kernel()
    assert fn is None and "no-such-cc" in info
    monkeypatch.setenv("S2E_GATHER_KERNEL", "0")
    assert _load_kernel() == (None, "disabled by S2E_GATHER_KERNEL=0")
