"""Summarise episode shards: episodes, hours, frames, valid fraction, skips, speed and turn-rate.

Shards are read with the same member-whitelisted tar reader and trajectory parser as training
(:mod:`datamodules.pipeline`), and each video is checked against its poses with training's own rule
(:func:`datamodules.episode_checks.video_problem`: enough frames, frame times within the window
tolerance), so what is counted here as usable is what training will use; corrupt samples are
counted by reason, never fatal. Frame times come from the mp4's packet timestamps, without
decoding pixels.

With ``--out`` it writes ``stats.json``, ``speed_hist.png`` and ``turn_rate_hist.png`` there. The
last printed line is the statistics as one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import av
import numpy as np

from datamodules.episode import META_MEMBER, VIDEO_MEMBER, Trajectory
from datamodules.episode_checks import video_problem
from datamodules.pipeline import SkipCounter, expand_shards, parse_episode, read_tar_episodes
from datamodules.windows import WindowConfig
from s2e.geometry import wrap_angle

SECONDS_PER_HOUR = 3600.0


def shard_urls(pattern: str) -> list[str]:
    """Glob patterns (``out/shard-*.tar``) or WebDataset brace patterns / ``::`` lists."""
    if any(ch in pattern for ch in "*?["):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no shard matches {pattern}")
        return paths
    return expand_shards(pattern)


def video_frame_times(mp4: bytes) -> Optional[np.ndarray]:
    """Presentation times (s) of the first video stream's frames, in order, from packet timestamps; None if unreadable."""
    try:
        with av.open(io.BytesIO(mp4), mode="r") as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            pts = [packet.pts for packet in container.demux(stream) if packet.size and packet.pts is not None]
            time_base = float(stream.time_base)
    except (av.FFmpegError, ValueError, OSError, EOFError):
        return None
    return np.sort(np.asarray(pts, np.float64)) * time_base if pts else None


class DatasetStats:
    """Accumulates per-episode statistics; :meth:`result` gives the JSON-ready summary."""

    def __init__(self) -> None:
        self.episodes = 0
        self.frames = 0
        self.valid_frames = 0
        self.seconds = 0.0
        self.valid_seconds = 0.0
        self.embodiments: Counter[str] = Counter()
        self.speeds: list[np.ndarray] = []
        self.turn_rates: list[np.ndarray] = []

    def add(self, traj: Trajectory, meta: dict[str, Any]) -> None:
        valid = traj.valid if traj.valid is not None else np.ones(len(traj), bool)
        dt = np.diff(traj.t)
        frame_dt = float(np.median(dt))
        self.episodes += 1
        self.frames += len(traj)
        self.valid_frames += int(valid.sum())
        self.seconds += len(traj) * frame_dt
        self.valid_seconds += int(valid.sum()) * frame_dt
        self.embodiments[str(meta.get("embodiment", "unknown"))] += 1
        both = valid[1:] & valid[:-1]
        step = np.linalg.norm(np.diff(traj.xy, axis=0), axis=-1)
        self.speeds.append((step / dt)[both])
        self.turn_rates.append(np.degrees(wrap_angle(np.diff(traj.yaw)) / dt)[both])

    def all_speeds(self) -> np.ndarray:
        """m/s between consecutive valid frames, all episodes."""
        return np.concatenate(self.speeds) if self.speeds else np.zeros(0)

    def all_turn_rates(self) -> np.ndarray:
        """deg/s (+ = left) between consecutive valid frames, all episodes."""
        return np.concatenate(self.turn_rates) if self.turn_rates else np.zeros(0)

    def result(self, skipped: dict[str, int]) -> dict[str, Any]:
        speed, turn = self.all_speeds(), self.all_turn_rates()

        def pct(values: np.ndarray, q: float) -> Optional[float]:
            return float(np.percentile(values, q)) if values.size else None

        return {
            "episodes": self.episodes,
            "hours": self.seconds / SECONDS_PER_HOUR,
            "valid_hours": self.valid_seconds / SECONDS_PER_HOUR,
            "frames": self.frames,
            "valid_fraction": self.valid_frames / self.frames if self.frames else 0.0,
            "skipped": dict(sorted(skipped.items())),
            "embodiments": dict(sorted(self.embodiments.items())),
            "speed_mps": {"median": pct(speed, 50), "p95": pct(speed, 95), "max": float(speed.max()) if speed.size else None},
            "abs_turn_rate_dps": {"median": pct(np.abs(turn), 50), "p95": pct(np.abs(turn), 95)},
        }


def collect(urls: list[str], tolerance: float) -> tuple[DatasetStats, dict[str, int]]:
    """Read every episode; returns the statistics and the skip counts by reason.

    ``tolerance`` is training's frame tolerance (``WindowConfig.tolerance``): an episode whose frame
    times drift further from its poses is skipped by training, so it is not counted here either.
    """
    counter = SkipCounter()
    stats = DatasetStats()
    for raw in read_tar_episodes(urls, counter):
        traj = parse_episode(raw, counter)
        if traj is None:
            continue
        where = f"{raw['__url__']}:{raw['__key__']}"
        times = video_frame_times(raw[VIDEO_MEMBER])
        if times is None:
            counter.add("undecodable_video", where)
            continue
        problem = video_problem(times, traj, tolerance)
        if problem is not None:
            counter.add(problem[0], f"{where}: {problem[1]}")
            continue
        stats.add(traj, json.loads(raw[META_MEMBER]))
    return stats, dict(counter.total)


def save_histogram(values: np.ndarray, path: Path, xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=50)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frame pairs")
    ax.set_title(f"{title} (n={values.size})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="glob (out/shard-*.tar), brace pattern or '::'-joined list")
    parser.add_argument("--out", type=Path, help="folder for stats.json and the histogram PNGs")
    parser.add_argument(
        "--frame-tolerance",
        type=float,
        default=WindowConfig().tolerance,
        help="seconds frame times may drift from pose times before training skips an episode "
        "(the training config's frame_tolerance_s; default: a quarter of the default frame_dt)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print (and write) the statistics; exit status 2 when no shard matches."""
    args = build_parser().parse_args(argv)
    try:
        urls = shard_urls(args.shards)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats, skipped = collect(urls, args.frame_tolerance)
    result = {"shards": len(urls), **stats.result(skipped)}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        save_histogram(stats.all_speeds(), args.out / "speed_hist.png", "speed (m/s)", "speed between valid frames")
        save_histogram(stats.all_turn_rates(), args.out / "turn_rate_hist.png", "turn rate (deg/s, + = left)", "turn rate between valid frames")
        (args.out / "stats.json").write_text(json.dumps(result, indent=2))
    print(
        f"{result['episodes']} episodes, {result['hours']:.4f} h ({result['valid_fraction']:.1%} valid), "
        f"{result['frames']} frames, skipped: {result['skipped'] or 'none'}"
    )
    print(json.dumps(result))
    return 0
