"""Fit AGDM anchors (K-Means over normalized future trajectories) on episode shards.

    python tools/compute_anchors.py --shards 'data/train-{000000..000031}.tar' --num-anchors 20 --out data/anchors.npz

The trajectories come from the training windowing itself (datamodules.windows.cut_windows, no
augmentation), so an anchor set describes exactly the targets the model is trained on. Videos are
not decoded: by the shard contract frame ``i`` is shown at ``traj.t[i]``, so the poses alone decide
which windows exist. Writes the anchors ``.npz`` and ``anchors.png`` next to it; the last printed
line is one JSON object (counts, skips, paths).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datamodules.pipeline import SkipCounter, expand_shards, parse_episode, read_tar_episodes  # noqa: E402
from datamodules.windows import WindowConfig, cut_windows  # noqa: E402
from s2e.anchors import Anchors, fit_anchors  # noqa: E402
from s2e.timing import TimingSpec  # noqa: E402


class NoTrainingWindowError(ValueError):
    """The shards hold no episode long enough for one training window: there is nothing to fit."""


def gather_trajectories(shards: list[str], config: WindowConfig, seed: int = 0) -> tuple[np.ndarray, int, dict[str, int]]:
    """Normalized future trajectories [N, T, 2] of every window, the episode count and the skip counts.

    Raises :class:`NoTrainingWindowError` (with the skip counts, which say why) when no window exists.
    """
    counter = SkipCounter()
    rng = np.random.default_rng(seed)
    trajectories: list[np.ndarray] = []
    episodes = 0
    for raw in read_tar_episodes(shards, counter):
        traj = parse_episode(raw, counter)
        if traj is None:
            continue
        frames = np.zeros((len(traj), 1, 1, 3), np.uint8)  # cut_windows only indexes frames; nothing decoded
        windows = cut_windows(frames, traj.t, traj, config, rng, key=raw["__key__"])
        if not windows:
            counter.add("too_short", raw["__key__"])
            continue
        episodes += 1
        trajectories.extend(w.waypoints for w in windows)
    if not trajectories:
        raise NoTrainingWindowError(f"no training window in {len(shards)} shard(s); skips: {dict(counter.total)}")
    return np.stack(trajectories), episodes, dict(counter.total)


def plot_anchors(anchors: Anchors, sample: np.ndarray, path: Path) -> None:
    """Anchor mean trajectories (width ~ cluster size) over a grey sample of the training targets."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for traj in sample:
        ax.plot(traj[:, 1], traj[:, 0], color="0.85", lw=0.5, zorder=1)
    widths = 0.8 + 3.0 * anchors.counts / max(int(anchors.counts.max()), 1)
    colours = plt.cm.viridis(np.linspace(0, 1, anchors.num_anchors))
    for traj, width, colour in zip(anchors.trajectories, widths, colours):
        path_xy = np.concatenate([[[0.0, 0.0]], traj])
        ax.plot(path_xy[:, 1], path_xy[:, 0], color=colour, lw=width, zorder=2)
        ax.scatter(traj[-1, 1], traj[-1, 0], color=colour, s=12, zorder=3)
    ax.set_xlabel("lateral (normalized, +left)")
    ax.set_ylabel("forward (normalized)")
    ax.invert_xaxis()  # +y (left) drawn on the left, as seen from the robot
    ax.set_aspect("equal")
    ax.set_title(f"{anchors.num_anchors} anchors from {int(anchors.counts.sum())} trajectories")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, nargs="+", help="shard paths or brace patterns")
    parser.add_argument("--num-anchors", type=int, default=20)
    parser.add_argument("--out", required=True, type=Path, help="anchors .npz to write")
    parser.add_argument("--window-stride", type=int, default=1)
    parser.add_argument("--max-trajectories", type=int, default=200_000, help="random subsample for K-Means")
    parser.add_argument("--seed", type=int, default=0)
    defaults = TimingSpec()
    for name in ("context_frames", "frame_dt", "num_waypoints", "waypoint_dt", "control_dt"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help="TimingSpec field")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Fit and write the anchors and their plot; prints and returns the summary."""
    args = build_parser().parse_args(argv)

    timing = TimingSpec(
        context_frames=args.context_frames,
        frame_dt=args.frame_dt,
        num_waypoints=args.num_waypoints,
        waypoint_dt=args.waypoint_dt,
        control_dt=args.control_dt,
    )
    config = WindowConfig(timing=timing, window_stride=args.window_stride)
    trajectories, episodes, skips = gather_trajectories(expand_shards(args.shards), config, args.seed)
    rng = np.random.default_rng(args.seed)
    if len(trajectories) > args.max_trajectories:
        trajectories = trajectories[rng.choice(len(trajectories), args.max_trajectories, replace=False)]
    anchors = fit_anchors(trajectories, args.num_anchors, timing, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    anchors.save(args.out)
    plot_path = args.out.parent / "anchors.png"
    plot_anchors(anchors, trajectories[rng.choice(len(trajectories), min(len(trajectories), 500), replace=False)], plot_path)
    summary = {
        "anchors": str(args.out),
        "plot": str(plot_path),
        "num_anchors": anchors.num_anchors,
        "trajectories": int(len(trajectories)),
        "episodes": episodes,
        "skipped": skips,
        "timing": timing.to_dict(),
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`; shards without a training window end it with their message (exit status 1)."""
    try:
        run(argv)
    except NoTrainingWindowError as err:
        raise SystemExit(str(err)) from None
