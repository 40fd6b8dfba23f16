"""Window cutting: context frames, waypoints and goal checked against closed-form arc geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import curved_trajectory
from datamodules.windows import AugmentConfig, WindowConfig, collate_windows, cut_windows
from s2e.timing import TimingSpec

FPS = 10.0
SPEED, TURN = 1.2, 0.15
N = 80  # 8 s of poses


def _frames(n: int) -> np.ndarray:
    """Frame i is filled with i, so gathered indices can be read back from the pixels."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 6, 3)).copy()


def _arc_point(t: np.ndarray) -> np.ndarray:
    """Closed form of conftest.curved_trajectory: position at time t on the arc."""
    yaw = 0.3 + TURN * t
    return np.stack([SPEED / TURN * (np.sin(yaw) - np.sin(0.3)), -SPEED / TURN * (np.cos(yaw) - np.cos(0.3))], -1)


def _in_frame_of(points: np.ndarray, t_now: float) -> np.ndarray:
    yaw = 0.3 + TURN * t_now
    d = points - _arc_point(np.array(t_now))
    return np.stack([np.cos(yaw) * d[..., 0] + np.sin(yaw) * d[..., 1], -np.sin(yaw) * d[..., 0] + np.cos(yaw) * d[..., 1]], -1)


def _cut(config: WindowConfig, traj=None, times=None, seed: int = 0):
    traj = traj if traj is not None else curved_trajectory(N, FPS, SPEED, TURN)
    times = times if times is not None else np.arange(N) / FPS
    return cut_windows(_frames(N), times, traj, config, np.random.default_rng(seed), key="ep")


def test_context_frames_waypoints_and_goal_match_the_arc() -> None:
    windows = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0)))
    # first now needs 0.8 s of history, last needs 3 s of future: frames 8 .. 49
    assert [round(w.t * FPS) for w in windows] == list(range(8, 50))
    for w in windows:
        sample = w.materialize()
        now = round(w.t * FPS)
        assert sample["frames"].shape == (5, 3, 4, 6) and sample["frames"].dtype == torch.uint8
        assert sample["frames"][:, 0, 0, 0].tolist() == [now - 8, now - 6, now - 4, now - 2, now]
        expected = _in_frame_of(_arc_point(w.t + 0.3 * np.arange(1, 11)), w.t)
        steps = np.linalg.norm(np.diff(np.concatenate([[[0, 0]], expected]), axis=0), axis=1)
        np.testing.assert_allclose(float(sample["scale"]), steps.mean(), rtol=1e-5)
        np.testing.assert_allclose(sample["waypoints"].numpy() * steps.mean(), expected, atol=2e-3)
        goal = _in_frame_of(_arc_point(np.array(w.t + 2.0)), w.t)
        dist = np.hypot(*goal)
        np.testing.assert_allclose(sample["goal"].numpy(), [dist, goal[0] / dist, goal[1] / dist], atol=2e-3)
        assert bool(sample["goal_mask"]) and sample["key"] == "ep"
    # turning left (CCW): the future bends to +y in the robot frame
    assert windows[0].waypoints[-1, 1] > 0


def test_stride_and_goal_horizon_limit_the_windows() -> None:
    strided = _cut(WindowConfig(window_stride=5, goal_horizon_s=(2.0, 2.0)))
    assert [round(w.t * FPS) for w in strided] == list(range(10, 50, 5))
    # a goal at least 5 s ahead needs 5 s of future
    far = _cut(WindowConfig(goal_horizon_s=(5.0, 6.0)))
    assert max(round(w.t * FPS) for w in far) == 79 - 50


def test_goal_horizon_in_metres() -> None:
    windows = _cut(WindowConfig(goal_horizon_m=(1.0, 2.0)))
    dist = np.array([w.goal[0] for w in windows])
    chord = lambda s: 2 / (TURN / SPEED) * np.sin(TURN / SPEED * s / 2)  # noqa: E731  straight-line distance for arc length s
    assert (dist >= chord(1.0) - 1e-3).all() and (dist <= 2.0 + 1e-3).all()
    assert dist.max() - dist.min() > 0.5  # drawn across the range, not a constant


def test_goal_at_end_puts_the_goal_on_the_episode_end() -> None:
    """Deployment-like goals: the route end, however far, for the chosen share of windows; the rest
    are drawn along the path. Without it every goal lies within the horizon."""
    end = _arc_point(np.array((N - 1) / FPS))
    windows = _cut(WindowConfig(goal_horizon_m=(1.0, 30.0), goal_at_end=0.5), seed=3)
    at_end = []
    for w in windows:
        expected = _in_frame_of(end, w.t)
        at_end.append(abs(w.goal[0] - np.hypot(*expected)) < 1e-3)
        if at_end[-1]:
            np.testing.assert_allclose(w.goal[1:], expected / np.hypot(*expected), atol=1e-3)
    share = np.mean(at_end)
    assert 0.3 < share < 0.7, share  # about half, drawn per window
    always = _cut(WindowConfig(goal_horizon_m=(1.0, 30.0), goal_at_end=1.0))
    assert all(abs(w.goal[0] - np.hypot(*_in_frame_of(end, w.t))) < 1e-3 for w in always)
    never = _cut(WindowConfig(goal_horizon_m=(1.0, 2.0), goal_at_end=0.0))
    assert max(w.goal[0] for w in never) <= 2.0 + 1e-3
    with pytest.raises(ValueError, match="goal_at_end"):
        WindowConfig(goal_at_end=1.5)


def test_goal_at_end_in_seconds_mode_reaches_past_the_horizon() -> None:
    windows = _cut(WindowConfig(goal_horizon_s=(1.0, 2.0), goal_at_end=1.0))
    end = _arc_point(np.array((N - 1) / FPS))
    for w in windows:
        expected = _in_frame_of(end, w.t)
        np.testing.assert_allclose(w.goal[0], np.hypot(*expected), atol=1e-3)


def test_extend_end_teaches_the_final_approach_and_never_bridges_a_gap() -> None:
    """With ``extend_end_s`` the last seconds of a recording become windows whose future goes on
    straight at the final speed; without it no window starts in the last 3 s. A gap is not an end."""
    plain = _cut(WindowConfig(goal_horizon_s=(0.1, 0.2)))
    extended = _cut(WindowConfig(goal_horizon_s=(0.1, 0.2), extend_end_s=3.0))
    assert max(round(w.t * FPS) for w in plain) == 49
    assert max(round(w.t * FPS) for w in extended) == 78  # the goal still needs 0.1 s of path ahead
    last = extended[len(extended) - 1]
    metres = last.waypoints * last.episode.scale[last.row]
    yaw = 0.3 + TURN * (N - 1) / FPS  # heading at the last pose, kept past the end
    heading_in_now = yaw - (0.3 + TURN * last.t)
    steps = np.diff(metres, axis=0)[2:]  # beyond the end: straight, at the arc's speed
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), SPEED * 0.3, rtol=0.03)
    np.testing.assert_allclose(np.arctan2(steps[:, 1], steps[:, 0]), heading_in_now, atol=0.02)
    traj = curved_trajectory(N, FPS, SPEED, TURN)
    traj.valid = np.ones(N, bool)
    traj.valid[60:] = False  # the tracker lost the pose: not where the recording ended
    gapped = _cut(WindowConfig(goal_horizon_s=(0.1, 0.2), extend_end_s=3.0), traj=traj)
    assert max(round(w.t * FPS) for w in gapped) == 29
    with pytest.raises(ValueError, match="extend_end_s"):
        WindowConfig(extend_end_s=-1.0)


def test_invalid_poses_are_never_inside_a_window() -> None:
    traj = curved_trajectory(N, FPS, SPEED, TURN)
    traj.valid = np.ones(N, bool)
    traj.valid[40] = False
    traj.xy[40] = np.nan  # what a lost tracker looks like
    windows = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0)), traj=traj)
    assert windows
    for w in windows:
        now = round(w.t * FPS)
        assert not (now - 8 <= 40 <= now + 30), now
        assert np.isfinite(w.waypoints).all() and np.isfinite(w.goal).all()


def test_only_demonstrated_futures_are_labels_and_learner_states_are_context() -> None:
    traj = curved_trajectory(N, FPS, SPEED, TURN)
    traj.demonstrated = np.ones(N, bool)
    traj.demonstrated[20:30] = False  # a learner drove from poses 20..29; the expert took over at 30
    windows = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0)), traj=traj)
    nows = [round(w.t * FPS) for w in windows]
    # a future (now .. now + 3 s) never starts at or runs through a learner-driven pose: the first
    # windows (now 8..19) would reach into it, so the first now is the takeover itself ...
    assert nows == list(range(30, 50)), nows
    # ... and that window sees the learner's states (poses 22..28) as its context
    assert windows[0].materialize()["frames"][:, 0, 0, 0].tolist() == [22, 24, 26, 28, 30]
    # the mask travels in the shard member
    from datamodules.episode import Trajectory

    back = Trajectory.from_npz_bytes(traj.to_npz_bytes())
    assert back.demonstrated is not None and back.demonstrated.tolist() == traj.demonstrated.tolist()


def test_missing_frames_beyond_tolerance_are_not_used() -> None:
    keep = np.r_[0:30, 34:N]  # frames 30..33 dropped by the camera
    times = keep / FPS
    frames = _frames(N)[keep]
    windows = cut_windows(frames, times, curved_trajectory(N, FPS, SPEED, TURN), WindowConfig(goal_horizon_s=(2.0, 2.0)), np.random.default_rng(0))
    for w in windows:
        gathered = w.materialize()["frames"][:, 0, 0, 0].numpy()
        expected = round(w.t * FPS) + np.array([-8, -6, -4, -2, 0])
        np.testing.assert_array_equal(gathered, expected)  # never a neighbour standing in for a lost frame
    assert len(windows) < 42


def test_too_short_episode_gives_no_window() -> None:
    traj = curved_trajectory(30, FPS, SPEED, TURN)  # 2.9 s < 0.8 s context + 3 s future
    assert cut_windows(_frames(30), np.arange(30) / FPS, traj, WindowConfig(), np.random.default_rng(0)) is None


def test_goal_dropout_zeroes_the_goal() -> None:
    dropped = _cut(WindowConfig(goal_dropout=1.0))
    assert all(not w.goal_mask and not w.goal.any() for w in dropped)
    half = _cut(WindowConfig(goal_dropout=0.5))
    masks = np.array([w.goal_mask for w in half])
    assert 0 < masks.sum() < len(masks)


def test_horizontal_flip_mirrors_image_trajectory_and_goal() -> None:
    config = WindowConfig(goal_horizon_s=(2.0, 2.0))
    plain = _cut(config)[0]
    flipped_window = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0), augment=AugmentConfig(hflip=1.0)))[0]
    frames = torch.arange(plain.episode.frames.numel()).reshape(plain.episode.frames.shape) % 251
    plain.episode.frames = flipped_window.episode.frames = frames.to(torch.uint8)  # left/right distinguishable pixels
    a, b = plain.materialize(), flipped_window.materialize()
    assert torch.equal(b["frames"], a["frames"].flip(-1))
    torch.testing.assert_close(b["waypoints"], a["waypoints"] * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(b["goal"], a["goal"] * torch.tensor([1.0, 1.0, -1.0]))


def test_colour_jitter_changes_pixels_alike_across_the_clip() -> None:
    config = WindowConfig(augment=AugmentConfig(brightness=0.5))
    window = _cut(config, seed=3)[0]
    window.episode.frames = torch.full_like(window.episode.frames, 100)
    out = window.materialize()["frames"]
    assert out.dtype == torch.uint8
    assert len(out.unique()) == 1 and int(out.flatten()[0]) == round(100 * window.jitter[0])


def test_other_timings_are_honoured() -> None:
    timing = TimingSpec(context_frames=3, frame_dt=0.5, num_waypoints=4, waypoint_dt=0.5)
    windows = _cut(WindowConfig(timing=timing, goal_horizon_s=(2.0, 2.0)))
    sample = windows[0].materialize()
    assert round(windows[0].t * FPS) == 10 and sample["waypoints"].shape == (4, 2)
    assert sample["frames"][:, 0, 0, 0].tolist() == [0, 5, 10]


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="window_stride"):
        WindowConfig(window_stride=0)
    with pytest.raises(ValueError, match="goal_horizon_s"):
        WindowConfig(goal_horizon_s=(3.0, 1.0))
    with pytest.raises(ValueError, match="hflip"):
        AugmentConfig(hflip=2.0)


def test_batches_mix_episodes_and_flips_with_frames_in_channels_last_memory() -> None:
    plain = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0)))
    flipped = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0), augment=AugmentConfig(hflip=1.0)))
    pixels = torch.arange(plain.frames.numel()).reshape(plain.frames.shape)
    plain.frames = (pixels % 251).to(torch.uint8)  # left/right distinguishable pixels
    flipped.frames = ((pixels + 17) % 241).to(torch.uint8)  # and another episode's
    windows = [plain[3], flipped[0], plain[10]]
    batch = collate_windows(windows)
    frames = batch["frames"]
    assert frames.shape == (3, 5, 3, 4, 6) and frames.dtype == torch.uint8
    assert frames.permute(0, 1, 3, 4, 2).is_contiguous()  # [B, k, H, W, 3] memory: one copy per frame
    for got, window in zip(frames, windows):
        expected = window.episode.frames[torch.from_numpy(window.episode.frame_indices[window.row])].permute(0, 3, 1, 2)
        assert torch.equal(got, expected.flip(-1) if window.episode is flipped else expected)
    alone = [w.materialize() for w in windows]
    for name in ("waypoints", "goal", "scale", "t"):
        assert torch.equal(batch[name], torch.stack([a[name] for a in alone]))
    assert batch["key"] == ["ep", "ep", "ep"]
    torch.testing.assert_close(batch["waypoints"][1], torch.from_numpy(flipped.waypoints[0]) * torch.tensor([1.0, -1.0]))


def test_head_keeps_the_first_windows_and_shares_the_frames() -> None:
    windows = _cut(WindowConfig(goal_horizon_s=(2.0, 2.0), augment=AugmentConfig(brightness=0.3)))
    head = windows.head(5)
    assert len(head) == 5 and head.frames is windows.frames
    assert [w.t for w in head] == [w.t for w in windows][:5]
    np.testing.assert_array_equal(head.jitter, windows.jitter[:5])
    with pytest.raises(IndexError):
        head[5]


def test_colour_jitter_is_the_step_by_step_torchvision_definition() -> None:
    """Brightness, then contrast towards the frame's mean grey, then saturation towards each pixel's grey."""
    config = WindowConfig(augment=AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4))
    windows = _cut(config, seed=4)
    windows.frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, windows.frames.shape, dtype=np.uint8))
    batch = collate_windows(list(windows)[:6])
    for got, window in zip(batch["frames"], list(windows)[:6]):
        b, c, s = window.jitter.tolist()
        x = window.episode.frames.numpy()[window.episode.frame_indices[window.row]].astype(np.float64) * b
        grey = x @ np.array([0.299, 0.587, 0.114])
        x = (x - grey.mean(axis=(1, 2))[:, None, None, None]) * c + grey.mean(axis=(1, 2))[:, None, None, None]
        grey = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
        expected = np.clip((x - grey) * s + grey, 0, 255).round()
        diff = np.abs(got.permute(0, 2, 3, 1).numpy().astype(np.float64) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.08  # rounding only (the gather's fixed point: tests/test_augment.py)
