"""Replay a video through an exported policy as the robot would run it, and draw the plan.

    python tools/run_policy.py --policy artifacts/export/small --video clip.mp4 --goal 8 2 \\
        --out artifacts/run_policy/clip.mp4 --commands artifacts/run_policy/clip.csv

Frames are decoded one by one with their timestamps; at every control tick (control_dt apart from
the first frame) the newest frame at or before the tick goes to :class:`s2e.deploy.PolicyRuntime`,
exactly as on a robot (stale or missing frames stop the robot). The goal is fixed in the robot
frame (a video carries no odometry to move it). The output mp4 (one frame per tick) shows a
top-down inset with every mode (opacity = probability), the best plan and the command. The last
line printed is one JSON object with the tick count, the commands' ranges and the fault counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, Optional

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from s2e.deploy import PolicyRuntime, RuntimeOutput  # noqa: E402
from s2e.video_io import write_mp4  # noqa: E402


def read_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from the first frame, HxWx3 uint8 RGB) in presentation order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start: Optional[float] = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            start = t if start is None else start
            yield t - start, frame.to_ndarray(format="rgb24")


def control_ticks(frames: Iterator[tuple[float, np.ndarray]], control_dt: float) -> Iterator[tuple[float, float, np.ndarray]]:
    """(tick time, frame time, frame): the newest frame at or before each tick, ticks control_dt apart."""
    pending = next(frames, None)
    current: Optional[tuple[float, np.ndarray]] = None
    tick = 0
    while pending is not None:
        now = tick * control_dt
        while pending is not None and pending[0] <= now + 1e-9:
            current, pending = pending, next(frames, None)
        if current is not None:
            yield now, current[0], current[1]
        tick += 1


def draw_plan(frame: np.ndarray, out: RuntimeOutput, horizon_m: float, goal: Optional[list[float]]) -> np.ndarray:
    """The frame with a top-down inset (robot at the bottom centre, +x up, +y left) of the plan and
    the goal (red, clipped to the inset's edge when farther)."""
    image = Image.fromarray(frame)
    size = max(64, min(image.width, image.height) // 2)
    inset = Image.new("RGBA", (size, size), (0, 0, 0, 150))
    draw = ImageDraw.Draw(inset)
    metres = size / (2.0 * horizon_m)

    def to_px(xy: np.ndarray) -> list[tuple[float, float]]:
        return [(size / 2 - y * metres, size - 4 - x * metres) for x, y in np.concatenate([np.zeros((1, 2)), xy])]

    if out.modes is not None and out.mode_probs is not None:
        for mode, prob in zip(out.modes, out.mode_probs):
            draw.line(to_px(mode), fill=(80, 160, 255, int(40 + 215 * float(prob))), width=1)
    if out.best_trajectory is not None:
        draw.line(to_px(out.best_trajectory), fill=(255, 200, 0, 255), width=2)
    draw.ellipse((size / 2 - 3, size - 7, size / 2 + 3, size - 1), fill=(255, 255, 255, 255))
    if goal is not None:
        gx, gy = to_px(np.asarray([goal], dtype=np.float64))[1]
        gx, gy = min(max(gx, 3.0), size - 3.0), min(max(gy, 3.0), size - 3.0)
        draw.ellipse((gx - 3, gy - 3, gx + 3, gy + 3), fill=(255, 60, 60, 255))
    image.paste(inset, (image.width - size, 0), inset)
    ImageDraw.Draw(image).text((4, 4), f"{out.status} v={out.v:.2f} w={out.omega:+.2f}", fill=(255, 255, 0))
    return np.asarray(image.convert("RGB"))


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--policy", required=True, type=Path, help="export folder (python -m s2e export)")
    parser.add_argument("--video", required=True, type=Path, help="forward-camera video (any FFmpeg-readable file)")
    parser.add_argument("--goal", nargs=2, type=float, metavar=("X", "Y"), help="goal metres in the robot frame (+x forward, +y left); omit for no goal")
    parser.add_argument("--out", type=Path, help="inspection mp4 (default: artifacts/run_policy/<video stem>.mp4)")
    parser.add_argument("--commands", type=Path, help="CSV of (t, v, omega, status) per control tick")
    parser.add_argument("--max-frame-age", type=float, help="seconds before a frame counts as stale (default: control_dt)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not args.video.is_file():
        parser.error(f"video not found: {args.video}")
    runtime = PolicyRuntime(args.policy, max_frame_age=args.max_frame_age, threads=args.threads)
    timing = runtime.timing
    horizon_m = max(2.0, runtime.meta["controller"]["max_speed"] * timing.horizon)
    out_path = args.out or _ROOT / "artifacts" / "run_policy" / f"{args.video.stem}.mp4"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[RuntimeOutput] = []

    def drawn() -> Iterator[np.ndarray]:
        for now, frame_time, frame in control_ticks(read_frames(args.video), timing.control_dt):
            result = runtime.step(now, frame, frame_time, args.goal)
            rows.append(result)
            yield draw_plan(frame, result, horizon_m, args.goal)

    written = write_mp4(out_path, drawn(), fps=1.0 / timing.control_dt)
    if args.commands:
        args.commands.parent.mkdir(parents=True, exist_ok=True)
        with open(args.commands, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t", "v", "omega", "status"])
            writer.writerows([f"{r.time:.3f}", f"{r.v:.4f}", f"{r.omega:.4f}", r.status] for r in rows)
    moving = [r for r in rows if r.moving]
    summary = {
        "ticks": len(rows),
        "moving_ticks": len(moving),
        "control_dt": timing.control_dt,
        "v_range": [min((r.v for r in moving), default=0.0), max((r.v for r in moving), default=0.0)],
        "omega_range": [min((r.omega for r in moving), default=0.0), max((r.omega for r in moving), default=0.0)],
        "faults": dict(runtime.faults),
        "video_frames_written": written,
        "out": str(out_path),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
