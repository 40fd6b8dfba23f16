"""Cut training windows (k context frames -> future waypoints + goal) from one decoded episode.

One episode is decoded once and yields many windows, so window cutting is vectorized over all
"now" frames of the episode and returns one :class:`EpisodeWindows`: the decoded frames once, plus
one row per window of small arrays (context frame indices, waypoints, goal, augmentation draws).
A :class:`Window` is just (episode, row). Pixels are gathered only by :func:`collate_windows`, when
windows leave the shuffle buffer: the buffer holds index records that share their episode's
frames, and every output frame is copied exactly once, into its batch.

This split is what makes streaming cheap across processes: a DataLoader worker ships each decoded
episode once (in shared memory) and the k-fold larger windows are gathered in the consumer, instead
of k copies of every frame crossing the process boundary.

Time bases: frame ``i`` of the decoded video shows the pose at ``traj.t[0] + video_time[i]``
(the shard contract says ``traj.t`` are the frame presentation times; aligning on the first frame
absorbs containers whose timestamps do not start at 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional, Sequence

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
        goal_at_end: probability that a window's goal is the end of its valid run (the route's end
            in a recorded episode) instead of a point drawn within the horizon, provided the end is
            at least the horizon's minimum ahead. Deployment goals are route ends 10-30 m away; a
            goal a few seconds ahead on the demonstrated path already encodes the demonstrator's
            detour, so the policy never needs its camera to find one (issue 14).
        extend_end_s: seconds a window's future may reach past the recording's last pose, the path
            continued straight at its final speed and heading. Recordings that end on arrival (the
            simulator's demonstrations) then also teach the final approach: without it the last
            3 s before every goal are never a "now", and a policy drives past goals instead of
            through them. (Parking the future at the last pose instead made the normalised
            futures of those windows degenerate, and a policy trained on them ignored goal and
            camera alike.) Gaps in the poses never count as an end.
        goal_dropout: probability that a window's goal is dropped (goal zeros, goal_mask False).
        frame_tolerance_s: largest allowed gap between a context frame's target time and the nearest
            decoded frame; None means a quarter of ``frame_dt``.
        augment: augmentation applied when the window is materialized.
    """

    timing: TimingSpec = field(default_factory=TimingSpec)
    window_stride: int = 1
    goal_horizon_s: tuple[float, float] = (2.0, 10.0)
    goal_horizon_m: Optional[tuple[float, float]] = None
    goal_at_end: float = 0.0
    extend_end_s: float = 0.0
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
        for name in ("goal_dropout", "goal_at_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.extend_end_s < 0:
            raise ValueError(f"extend_end_s must be >= 0, got {self.extend_end_s}")
        if self.frame_tolerance_s is not None and self.frame_tolerance_s < 0:
            raise ValueError(f"frame_tolerance_s must be >= 0, got {self.frame_tolerance_s}")

    @property
    def tolerance(self) -> float:
        return self.frame_tolerance_s if self.frame_tolerance_s is not None else 0.25 * self.timing.frame_dt


@dataclass
class EpisodeWindows:
    """All windows cut from one episode: its decoded frames once, plus one row per window.

    ``waypoints``/``goal`` are already in the robot frame of each window's now; ``flip`` and
    ``jitter`` are the augmentation draws, applied when the frames are gathered into a batch.
    """

    frames: torch.Tensor  # the decoded episode [T, H, W, 3] uint8 (shared memory when sent by a worker)
    frame_indices: np.ndarray  # [n, k] int64, oldest first
    waypoints: np.ndarray  # [n, num_waypoints, 2] float32, normalized
    scale: np.ndarray  # [n] float32
    goal: np.ndarray  # [n, 3] float32 (distance m, cos, sin)
    goal_mask: np.ndarray  # [n] bool
    t: np.ndarray  # [n] float64, time of now
    flip: np.ndarray  # [n] bool
    jitter: Optional[np.ndarray]  # [n, 3] float32 brightness, contrast, saturation factors; None: no jitter
    key: str

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def __getitem__(self, row: int) -> "Window":
        if not -len(self) <= row < len(self):
            raise IndexError(f"window {row} of an episode with {len(self)} windows")
        return Window(self, row % len(self))

    def __iter__(self) -> Iterator["Window"]:
        return (Window(self, row) for row in range(len(self)))

    def head(self, n: int) -> "EpisodeWindows":
        """The first ``n`` windows (a worker's last episode of an epoch, cut to its quota)."""
        return self.rows(0, n)

    def rows(self, start: int, stop: int) -> "EpisodeWindows":
        """Windows ``start`` to ``stop`` (exclusive), sharing the episode's frames."""
        rows = slice(start, stop)
        return EpisodeWindows(
            frames=self.frames,
            frame_indices=self.frame_indices[rows],
            waypoints=self.waypoints[rows],
            scale=self.scale[rows],
            goal=self.goal[rows],
            goal_mask=self.goal_mask[rows],
            t=self.t[rows],
            flip=self.flip[rows],
            jitter=self.jitter[rows] if self.jitter is not None else None,
            key=self.key,
        )


class Window(NamedTuple):
    """One training window: a row of an :class:`EpisodeWindows` (what the shuffle buffer holds)."""

    episode: EpisodeWindows
    row: int

    @property
    def t(self) -> float:
        return float(self.episode.t[self.row])

    @property
    def waypoints(self) -> np.ndarray:
        return self.episode.waypoints[self.row]

    @property
    def goal(self) -> np.ndarray:
        return self.episode.goal[self.row]

    @property
    def goal_mask(self) -> bool:
        return bool(self.episode.goal_mask[self.row])

    @property
    def jitter(self) -> Optional[np.ndarray]:
        return self.episode.jitter[self.row] if self.episode.jitter is not None else None

    def materialize(self) -> dict[str, Any]:
        """This window alone as a training sample (README "Conventions": frames, goal, normalized waypoints and scale)."""
        batch = collate_windows([self])
        return {name: value[0] for name, value in batch.items()}


def collate_windows(windows: Sequence[Window]) -> dict[str, Any]:
    """A batch (README "Conventions": frames, goal, normalized waypoints and scale) gathered straight from the episodes' frames.

    ``frames`` is uint8 [B, k, 3, H, W] whose memory is channels-last ([B, k, H, W, 3], the decoder's
    layout): every context frame is one contiguous copy from its episode into the batch. A
    channels-first copy would transpose every pixel of k copies of every frame, which costs as much
    as a tenth of the decoding; convolutions take channels-last input natively, ``reshape`` and
    ``.to(device)`` keep it, and ``.contiguous()`` gives classic NCHW memory where that is needed.
    ``key`` stays a list of strings and ``t`` a float64 tensor.

    The copy is :func:`datamodules.augment.gather_frames`: one call per batch that mirrors a
    flipped window's frames and applies its colour jitter while it copies them (a compiled kernel;
    numpy where none can be built). The small per-window arrays are gathered as one row of a
    per-episode table per window (:func:`_window_table`): gathered field by field, they cost more
    than the pixels of a small window.
    """
    from datamodules.augment import episode_grey_means, gather_frames  # augment builds on this module

    where: dict[int, int] = {}
    episodes: list[EpisodeWindows] = []
    sources: list[int] = []
    for episode, _ in windows:
        j = where.get(id(episode))
        if j is None:
            j = where[id(episode)] = len(episodes)
            episodes.append(episode)
        sources.append(j)
    source = np.array(sources, np.int64)
    rows = np.fromiter((row for _, row in windows), np.int64, len(windows))
    tables = [_window_table(e) for e in episodes]
    if len(episodes) == 1:
        table = tables[0][rows]
    else:  # one fancy index per episode, not one row view per window
        table = np.empty((len(windows), tables[0].shape[1]))
        for j, episode_table in enumerate(tables):
            mine = source == j
            table[mine] = episode_table[rows[mine]]
    first = episodes[0]
    n, k, num_waypoints = len(windows), first.frame_indices.shape[1], first.waypoints.shape[1]
    goal_at = k + 2 * num_waypoints  # then goal (3), scale, goal mask, t, flip, jitter (3)
    jittered = [e.jitter is not None for e in episodes]
    hwc = torch.empty((n, k, *first.frames.shape[1:]), dtype=torch.uint8)
    gather_frames(
        hwc,
        [e.frames for e in episodes],
        source,
        table[:, :k],
        table[:, goal_at + 6],
        table[:, goal_at + 7 :] if any(jittered) else None,
        [episode_grey_means(e) if has else None for e, has in zip(episodes, jittered)],
    )
    return {
        "frames": hwc.permute(0, 1, 4, 2, 3),
        "goal": torch.from_numpy(table[:, goal_at : goal_at + 3].astype(np.float32)),
        "waypoints": torch.from_numpy(table[:, k:goal_at].astype(np.float32).reshape(n, num_waypoints, 2)),
        "scale": torch.from_numpy(table[:, goal_at + 3].astype(np.float32)),
        "goal_mask": torch.from_numpy(table[:, goal_at + 4] != 0),
        "key": [e.key for e, _ in windows],
        "t": torch.from_numpy(table[:, goal_at + 5].copy()),
    }


def _window_table(episode: EpisodeWindows) -> np.ndarray:
    """float64 [n, k + 2*W + 10]: each window's frame indices, waypoints, goal, scale, goal mask, t,
    flip and jitter factors (NaN: none) as one row, so a batch gathers them with one index per episode.

    The waypoints and goal of a flipped window are stored mirrored (the mirrored image needs the
    mirrored future and goal). Built on first use and kept on the object (every value is exact in
    float64); the per-window arrays of an :class:`EpisodeWindows` are not changed once batched.
    """
    table = getattr(episode, "_window_table", None)
    if table is None:
        n = len(episode)
        waypoints, goal = episode.waypoints.copy(), episode.goal.copy()
        waypoints[episode.flip] = mirror_lateral(waypoints[episode.flip])
        goal[episode.flip, 2] = -goal[episode.flip, 2]
        jitter = episode.jitter if episode.jitter is not None else np.full((n, 3), np.nan)
        table = np.concatenate(
            [
                episode.frame_indices,
                waypoints.reshape(n, -1),
                goal,
                episode.scale[:, None],
                episode.goal_mask[:, None],
                episode.t[:, None],
                episode.flip[:, None],
                jitter,
            ],
            axis=1,
            dtype=np.float64,
        )
        episode._window_table = table
    return table


#: ITU-R 601 luma weights: the grey that contrast and saturation blend towards (as torchvision).
LUMA = (0.299, 0.587, 0.114)


def colour_jitter(clip: np.ndarray, brightness: float, contrast: float, saturation: float) -> None:
    """torchvision-style brightness, contrast, saturation jitter, in place on one window's uint8 [k, H, W, 3].

    The definition of the training jitter (the compiled gather of :mod:`datamodules.augment` runs
    the same map, in fixed point for the shipped strengths, within one level of this; this numpy
    version is its reference and its fallback). The same
    factors for all k frames keep the clip consistent. The three steps (x*b; blend with the frame's
    mean grey by c; blend with the pixel's grey by s) are linear, so they are applied as one affine
    map ``y = b*c*s*x + b*c*(1-s)*grey(x) + (1-c)*mean(grey(x*b))``, clamped once at the end as the
    step-by-step version is: two float passes instead of six.
    """
    b, c, s = np.float32(brightness), np.float32(contrast), np.float32(saturation)
    x = clip.astype(np.float32)
    grey = x[..., 0] * np.float32(LUMA[0]) + x[..., 1] * np.float32(LUMA[1]) + x[..., 2] * np.float32(LUMA[2])
    mean = grey.mean(axis=(1, 2), keepdims=True) * b  # [k, 1, 1] mean grey after brightness, per frame
    offset = grey * (b * c * (1 - s)) + mean * (1 - c)  # [k, H, W]
    x *= b * c * s
    x += offset[..., None]
    np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    clip[...] = x


def cut_windows(
    frames: np.ndarray | torch.Tensor,
    frame_times: np.ndarray,
    traj: Trajectory,
    config: WindowConfig,
    rng: np.random.Generator,
    key: str = "",
) -> Optional[EpisodeWindows]:
    """All windows of one episode that satisfy the timing, validity and goal constraints.

    ``frames`` are the decoded uint8 [T, H, W, 3] frames (kept, not copied), ``frame_times`` their [T] presentation
    times in seconds (see the module docstring for how they meet ``traj.t``).

    A "now" frame is used when its k context frames exist (nearest decoded frame within the
    tolerance of each target time; no target before the first frame: the tolerance absorbs frame
    grids that do not fall on ``frame_dt``, it never extrapolates), its waypoints end before the
    last pose, a goal can be drawn within the horizon, and every pose from the oldest context frame to the
    later of the last waypoint and the goal is ``valid``. Returns None when no window fits.
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
    extend = np.where(horizon_end >= traj.t[-1], config.extend_end_s, 0.0)  # only the recording's true end
    ok &= wp_times[:, -1] <= horizon_end + extend + 1e-9
    if traj.demonstrated is not None:  # the future must be the demonstrator's (Trajectory.demonstrated)
        undemonstrated_before = np.concatenate([[0], np.cumsum(~traj.demonstrated)])
        last_wp = np.clip(np.searchsorted(traj.t, wp_times[:, -1], side="left"), 0, len(traj) - 1)
        ok &= undemonstrated_before[last_wp + 1] - undemonstrated_before[hi_now] == 0

    goal_time = _draw_goal_times(traj, t_now, horizon_end, config, rng)
    ok &= np.isfinite(goal_time)
    if not ok.any():
        return None

    now_idx, t_now, ctx, wp_times, goal_time = now_idx[ok], t_now[ok], ctx[ok], wp_times[ok], goal_time[ok]
    origin_xy, origin_yaw = interpolate_poses(t_now, traj.t, traj.xy, traj.yaw)
    wp_world, _ = interpolate_poses(wp_times.ravel(), *_continued_past_end(traj, config.extend_end_s))
    wp_robot = to_robot_frame(wp_world.reshape(len(t_now), timing.num_waypoints, 2), origin_xy, origin_yaw)
    scale = trajectory_scale(wp_robot)
    goal_world, _ = interpolate_poses(goal_time, traj.t, traj.xy, traj.yaw)
    goal = goal_encoding(to_robot_frame(goal_world[:, None, :], origin_xy, origin_yaw)[:, 0])
    goal_mask = rng.random(len(t_now)) >= config.goal_dropout
    goal = np.where(goal_mask[:, None], goal, 0.0)

    aug = config.augment
    flips = rng.random(len(t_now)) < aug.hflip
    jitters = rng.uniform(-1.0, 1.0, (len(t_now), 3)) * np.array([aug.brightness, aug.contrast, aug.saturation]) + 1.0
    return EpisodeWindows(
        frames=torch.as_tensor(frames),
        frame_indices=ctx.astype(np.int64),
        waypoints=(wp_robot / scale[:, None, None]).astype(np.float32),
        scale=scale.astype(np.float32),
        goal=goal.astype(np.float32),
        goal_mask=goal_mask,
        t=t_now,
        flip=flips,
        jitter=jitters.astype(np.float32) if aug.brightness or aug.contrast or aug.saturation else None,
        key=key,
    )


def _continued_past_end(traj: Trajectory, seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, xy, yaw) with poses appended for ``seconds`` past the last one: straight along the last
    heading at the speed of the last half second (see ``WindowConfig.extend_end_s``)."""
    if seconds <= 0 or len(traj.t) < 2:
        return traj.t, traj.xy, traj.yaw
    first = int(np.searchsorted(traj.t, traj.t[-1] - 0.5))
    first = min(first, len(traj.t) - 2)
    span = traj.t[-1] - traj.t[first]
    speed = float(np.linalg.norm(traj.xy[-1] - traj.xy[first]) / span) if span > 0 else 0.0
    step = float(np.median(np.diff(traj.t)))
    extra_t = traj.t[-1] + step * np.arange(1, int(np.ceil(seconds / step)) + 1)
    heading = np.array([np.cos(traj.yaw[-1]), np.sin(traj.yaw[-1])])
    extra_xy = traj.xy[-1] + (extra_t - traj.t[-1])[:, None] * speed * heading
    return (np.concatenate([traj.t, extra_t]), np.concatenate([traj.xy, extra_xy]), np.concatenate([traj.yaw, np.full(len(extra_t), traj.yaw[-1])]))


def _nearest_index(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of sorted ``times`` for every target (any shape)."""
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(targets.shape, int)
    left = np.maximum(right - 1, 0)
    return np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)


def _valid_run_end(t: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """For every pose, the time of the last pose of its run of valid poses (-inf for invalid poses)."""
    invalid = np.append(np.flatnonzero(~valid), len(t))
    next_invalid = invalid[np.searchsorted(invalid, np.arange(len(t)), side="right")]  # first invalid pose after each pose
    return np.where(valid, t[np.maximum(next_invalid - 1, 0)], -np.inf)


def _draw_goal_times(traj: Trajectory, t_now: np.ndarray, horizon_end: np.ndarray, config: WindowConfig, rng: np.random.Generator) -> np.ndarray:
    """A goal time per window: the run's end with probability ``goal_at_end`` (when it lies beyond the
    horizon's minimum), otherwise uniform within the horizon (seconds or travelled metres); NaN when none fits."""
    u = rng.random(len(t_now))
    at_end = rng.random(len(t_now)) < config.goal_at_end
    if config.goal_horizon_m is None:
        lo = t_now + config.goal_horizon_s[0]
        hi = np.minimum(t_now + config.goal_horizon_s[1], horizon_end)
        # the end fits exactly when the horizon is non-empty (hi >= lo), so one condition covers both
        return np.where(hi >= lo, np.where(at_end, horizon_end, lo + u * (hi - lo)), np.nan)
    steps = np.linalg.norm(np.diff(traj.xy, axis=0), axis=1)
    steps = np.where(np.isfinite(steps), steps, 0.0)
    arc = np.concatenate([[0.0], np.cumsum(steps)])  # travelled metres at each pose
    s_now = np.interp(t_now, traj.t, arc)
    s_end = np.where(np.isfinite(horizon_end), np.interp(np.where(np.isfinite(horizon_end), horizon_end, traj.t[0]), traj.t, arc), -np.inf)
    lo = s_now + config.goal_horizon_m[0]
    hi = np.minimum(s_now + config.goal_horizon_m[1], s_end)
    s_goal = np.where(at_end, s_end, lo + u * np.maximum(hi - lo, 0.0))
    # first pose time whose arc length reaches s_goal, refined linearly within the step
    j = np.clip(np.searchsorted(arc, s_goal, side="left"), 1, len(arc) - 1)
    span = np.maximum(arc[j] - arc[j - 1], 1e-12)
    t_goal = traj.t[j - 1] + (s_goal - arc[j - 1]) / span * (traj.t[j] - traj.t[j - 1])
    t_goal = np.minimum(np.clip(t_goal, t_now, None), np.where(np.isfinite(horizon_end), horizon_end, np.inf))
    return np.where(hi >= lo, t_goal, np.nan)  # as in seconds: the end fits iff the horizon is non-empty
