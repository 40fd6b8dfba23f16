"""Cut training windows (k context frames -> future waypoints + goal) from one decoded episode.

One episode is decoded once and yields many windows, so window cutting is vectorized over all
"now" frames of the episode and the pixel work (gather, flip, colour jitter) is deferred to
:func:`collate_windows`, which the pipeline calls only when windows leave the shuffle buffer: the
buffer then holds small index records that share the episode's decoded frames instead of k
copied frames each, and every output frame is copied exactly once, into its batch.

Time bases: frame ``i`` of the decoded video shows the pose at ``traj.t[0] + video_time[i]``
(the shard contract says ``traj.t`` are the frame presentation times; aligning on the first frame
absorbs containers whose timestamps do not start at 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from datamodules.episode import Trajectory
from s2e.geometry import goal_encoding, interpolate_poses, mirror_lateral, to_robot_frame, trajectory_scale
from s2e.timing import TimingSpec


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric and mirror augmentation (all off by default; validation never augments).

    Attributes:
        hflip: probability of a horizontal flip; the trajectory and goal are mirrored with it.
        brightness, contrast, saturation: jitter strengths s: a factor is drawn from [1-s, 1+s] and
            applied to all k frames of a window alike, so the clip stays temporally consistent.
    """

    hflip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} jitter must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class WindowConfig:
    """How windows are cut from an episode.

    Attributes:
        timing: the TimingSpec (context frames at ``frame_dt``, waypoints at ``waypoint_dt``).
        window_stride: frames between consecutive "now" frames (1 = every frame).
        goal_horizon_s: (min, max) seconds ahead of now from which the goal time is drawn.
        goal_horizon_m: (min, max) metres of travelled path ahead of now; replaces goal_horizon_s.
        goal_dropout: probability that a window's goal is dropped (goal zeros, goal_mask False).
        frame_tolerance_s: largest allowed gap between a context frame's target time and the nearest
            decoded frame; None means a quarter of ``frame_dt``.
        augment: augmentation applied when the window is materialized.
    """

    timing: TimingSpec = field(default_factory=TimingSpec)
    window_stride: int = 1
    goal_horizon_s: tuple[float, float] = (2.0, 10.0)
    goal_horizon_m: Optional[tuple[float, float]] = None
    goal_dropout: float = 0.0
    frame_tolerance_s: Optional[float] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.window_stride < 1:
            raise ValueError(f"window_stride must be >= 1 frame, got {self.window_stride}")
        for name in ("goal_horizon_s", "goal_horizon_m"):
            value = getattr(self, name)
            if value is not None and not (len(value) == 2 and 0 < value[0] <= value[1]):
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max, got {value}")
        if not 0.0 <= self.goal_dropout <= 1.0:
            raise ValueError(f"goal_dropout is a probability in [0, 1], got {self.goal_dropout}")
        if self.frame_tolerance_s is not None and self.frame_tolerance_s < 0:
            raise ValueError(f"frame_tolerance_s must be >= 0, got {self.frame_tolerance_s}")

    @property
    def tolerance(self) -> float:
        return self.frame_tolerance_s if self.frame_tolerance_s is not None else 0.25 * self.timing.frame_dt


@dataclass
class Window:
    """One training window, pixels not yet gathered (see module docstring).

    ``waypoints``/``goal`` are already in the robot frame of now; ``flip`` and ``jitter`` are the
    augmentation draws, applied when the frames are written.
    """

    frames: torch.Tensor  # the whole decoded episode [T, H, W, 3] uint8, shared between windows
    frame_indices: np.ndarray  # [k] oldest first
    waypoints: np.ndarray  # [num_waypoints, 2] normalized
    scale: float
    goal: np.ndarray  # [3] (distance m, cos, sin)
    goal_mask: bool
    key: str
    t: float
    flip: bool = False
    jitter: Optional[tuple[float, float, float]] = None  # brightness, contrast, saturation factors

    def write_frames(self, out: torch.Tensor) -> None:
        """Gather the k context frames into ``out`` [k, 3, H, W] (a slot of a batch tensor), augmented.

        One transposing copy per frame, straight from the decoded HWC episode into the batch:
        converting whole episodes to CHW first would cost more than it saves (a decoded frame is
        used by about k / window_stride windows, and not at all beyond the last window).
        """
        for slot, index in zip(out, self.frame_indices.tolist()):
            slot.copy_(self.frames[index].permute(2, 0, 1))
        if self.flip:
            out.copy_(out.flip(-1))
        if self.jitter is not None:
            out.copy_(_colour_jitter(out, *self.jitter))

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(waypoints, goal) with the flip applied: the mirrored image needs the mirrored future."""
        if not self.flip:
            return self.waypoints, self.goal
        return mirror_lateral(self.waypoints), self.goal * np.array([1.0, 1.0, -1.0], np.float32)

    def materialize(self) -> dict[str, Any]:
        """This window alone as a training sample (DESIGN.md "Training sample")."""
        batch = collate_windows([self])
        return {name: value[0] for name, value in batch.items()}


def collate_windows(windows: Sequence[Window], shared_memory: bool = False) -> dict[str, Any]:
    """A batch (DESIGN.md "Training sample") gathered straight from the episodes' frames.

    Every frame is copied exactly once, into the batch tensor; with ``shared_memory`` (inside a
    DataLoader worker) that tensor is allocated in shared memory as torch's own collate does, so
    handing it to the main process copies nothing more. ``key`` stays a list of strings and ``t``
    a float64 tensor.
    """
    first = windows[0]
    height, width = first.frames.shape[1:3]
    shape = (len(windows), len(first.frame_indices), 3, height, width)
    if shared_memory:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
        frames = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    else:
        frames = torch.empty(shape, dtype=torch.uint8)
    targets = [w.targets() for w in windows]
    for slot, window in zip(frames, windows):
        window.write_frames(slot)
    return {
        "frames": frames,
        "goal": torch.from_numpy(np.stack([g for _, g in targets]).astype(np.float32)),
        "waypoints": torch.from_numpy(np.stack([wp for wp, _ in targets]).astype(np.float32)),
        "scale": torch.tensor([w.scale for w in windows], dtype=torch.float32),
        "goal_mask": torch.tensor([w.goal_mask for w in windows], dtype=torch.bool),
        "key": [w.key for w in windows],
        "t": torch.tensor([w.t for w in windows], dtype=torch.float64),
    }


def _colour_jitter(frames: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """torchvision-style jitter on uint8 [k, 3, H, W], same factors for every frame."""
    x = frames.float()
    x = x * brightness
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - grey.mean(dim=(1, 2, 3), keepdim=True)) * contrast + grey.mean(dim=(1, 2, 3), keepdim=True)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - grey) * saturation + grey
    return x.clamp_(0, 255).round_().to(torch.uint8)


def cut_windows(
    frames: np.ndarray,
    frame_times: np.ndarray,
    traj: Trajectory,
    config: WindowConfig,
    rng: np.random.Generator,
    key: str = "",
) -> list[Window]:
    """All windows of one episode that satisfy the timing, validity and goal constraints.

    ``frames`` are the decoded uint8 [T, H, W, 3] frames, ``frame_times`` their [T] presentation
    times in seconds (see the module docstring for how they meet ``traj.t``).

    A "now" frame is used when its k context frames exist (nearest decoded frame within the
    tolerance of each target time; no target before the first frame: the tolerance absorbs frame
    grids that do not fall on ``frame_dt``, it never extrapolates), its waypoints end before the
    last pose, a goal can be drawn within the horizon, and every pose from the oldest context frame to the
    later of the last waypoint and the goal is ``valid``. Returns [] when no window fits.
    """
    timing = config.timing
    n = min(len(frames), len(frame_times))
    times = traj.t[0] + (np.asarray(frame_times[:n], np.float64) - float(frame_times[0]))
    now_idx = np.arange(0, n, config.window_stride)
    t_now = times[now_idx]

    # context frames: nearest decoded frame to each target time
    targets = t_now[:, None] + timing.context_offsets()[None, :]
    ctx = _nearest_index(times, targets)
    ok = (np.abs(times[ctx] - targets) <= config.tolerance + 1e-9).all(1) & (targets[:, 0] >= times[0] - 1e-6)

    # validity runs: for each pose, the time of the last pose before the next invalid one
    valid = traj.valid if traj.valid is not None else np.ones(len(traj), bool)
    run_end = _valid_run_end(traj.t, valid)
    lo = np.clip(np.searchsorted(traj.t, targets[:, 0], side="right") - 1, 0, len(traj) - 1)
    invalid_before = np.concatenate([[0], np.cumsum(~valid)])
    hi_now = np.clip(np.searchsorted(traj.t, t_now, side="left"), 0, len(traj) - 1)
    ok &= invalid_before[hi_now + 1] - invalid_before[lo] == 0  # context span to now all valid
    horizon_end = np.where(ok, run_end[hi_now], -np.inf)
    wp_times = t_now[:, None] + timing.waypoint_offsets()[None, :]
    ok &= wp_times[:, -1] <= horizon_end + 1e-9

    goal_time = _draw_goal_times(traj, t_now, horizon_end, config, rng)
    ok &= np.isfinite(goal_time)
    if not ok.any():
        return []

    now_idx, t_now, ctx, wp_times, goal_time = now_idx[ok], t_now[ok], ctx[ok], wp_times[ok], goal_time[ok]
    origin_xy, origin_yaw = interpolate_poses(t_now, traj.t, traj.xy, traj.yaw)
    wp_world, _ = interpolate_poses(wp_times.ravel(), traj.t, traj.xy, traj.yaw)
    wp_robot = to_robot_frame(wp_world.reshape(len(t_now), timing.num_waypoints, 2), origin_xy, origin_yaw)
    scale = trajectory_scale(wp_robot)
    goal_world, _ = interpolate_poses(goal_time, traj.t, traj.xy, traj.yaw)
    goal = goal_encoding(to_robot_frame(goal_world[:, None, :], origin_xy, origin_yaw)[:, 0])
    goal_mask = rng.random(len(t_now)) >= config.goal_dropout
    goal = np.where(goal_mask[:, None], goal, 0.0)

    frames_t = torch.from_numpy(np.asarray(frames))  # shares memory with the decoded episode
    aug = config.augment
    flips = rng.random(len(t_now)) < aug.hflip
    jitters = rng.uniform(-1.0, 1.0, (len(t_now), 3)) * np.array([aug.brightness, aug.contrast, aug.saturation]) + 1.0
    return [
        Window(
            frames=frames_t,
            frame_indices=ctx[i],
            waypoints=(wp_robot[i] / scale[i]).astype(np.float32),
            scale=float(scale[i]),
            goal=goal[i].astype(np.float32),
            goal_mask=bool(goal_mask[i]),
            key=key,
            t=float(t_now[i]),
            flip=bool(flips[i]),
            jitter=tuple(jitters[i].tolist()) if aug.brightness or aug.contrast or aug.saturation else None,
        )
        for i in range(len(t_now))
    ]


def _nearest_index(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of sorted ``times`` for every target (any shape)."""
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(targets.shape, int)
    left = np.maximum(right - 1, 0)
    return np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)


def _valid_run_end(t: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """For every pose, the time of the last pose of its run of valid poses (-inf for invalid poses)."""
    end = np.full(len(t), -np.inf)
    last = -np.inf
    for i in range(len(t) - 1, -1, -1):  # one pass per episode, not per window
        if not valid[i]:
            last = -np.inf
            continue
        if last == -np.inf:
            last = t[i]
        end[i] = last
    return end


def _draw_goal_times(
    traj: Trajectory, t_now: np.ndarray, horizon_end: np.ndarray, config: WindowConfig, rng: np.random.Generator
) -> np.ndarray:
    """A goal time per window, uniform within the horizon (seconds or travelled metres); NaN when none fits."""
    u = rng.random(len(t_now))
    if config.goal_horizon_m is None:
        lo = t_now + config.goal_horizon_s[0]
        hi = np.minimum(t_now + config.goal_horizon_s[1], horizon_end)
        return np.where(hi >= lo, lo + u * (hi - lo), np.nan)
    steps = np.linalg.norm(np.diff(traj.xy, axis=0), axis=1)
    steps = np.where(np.isfinite(steps), steps, 0.0)
    arc = np.concatenate([[0.0], np.cumsum(steps)])  # travelled metres at each pose
    s_now = np.interp(t_now, traj.t, arc)
    s_end = np.interp(np.where(np.isfinite(horizon_end), horizon_end, traj.t[0]), traj.t, arc)
    lo = s_now + config.goal_horizon_m[0]
    hi = np.minimum(s_now + config.goal_horizon_m[1], np.where(np.isfinite(horizon_end), s_end, -np.inf))
    s_goal = lo + u * np.maximum(hi - lo, 0.0)
    # first pose time whose arc length reaches s_goal, refined linearly within the step
    j = np.clip(np.searchsorted(arc, s_goal, side="left"), 1, len(arc) - 1)
    span = np.maximum(arc[j] - arc[j - 1], 1e-12)
    t_goal = traj.t[j - 1] + (s_goal - arc[j - 1]) / span * (traj.t[j] - traj.t[j - 1])
    return np.where(hi >= lo, np.clip(t_goal, t_now, None), np.nan)
