"""Replay a video through an exported policy as the robot would run it, and draw the plan.

    python tools/run_policy.py --policy artifacts/export/small --video clip.mp4 --goal 8 2 \\
        --out artifacts/run_policy/clip.mp4 --commands artifacts/run_policy/clip.csv [--backend onnx]

Frames are decoded one by one with their timestamps; at every control tick (control_dt apart from
the first frame) the newest frame at or before the tick goes to :class:`s2e.deploy.PolicyRuntime`,
exactly as on a robot (stale or missing frames stop the robot; within --arrival-radius of the goal
it stops too). The goal is fixed in the robot frame (a video carries no odometry to move it). The
output mp4 (one frame per tick) shows a top-down inset with every mode (opacity = probability), the
best plan and the command. The last line printed is one JSON object with the tick count, the
commands' ranges and the fault counts.

A video's rotation metadata (the display matrix phones write instead of turning the pixels) is
applied to every frame, so the policy sees the scene upright as a player shows it. Outputs never
overwrite the input video, and an existing file only with --overwrite. With ``--backend onnx`` the
tool runs on onnxruntime and never imports torch.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

from s2e.deploy import BACKENDS, DEFAULT_ARRIVAL_RADIUS, PolicyRuntime, RuntimeOutput
from s2e.scripts import REPO_ROOT
from s2e.video_io import write_mp4


class VideoError(ValueError):
    """The input video cannot be replayed (no video stream, no decodable frame, an odd rotation)."""


def upright(frame: av.VideoFrame) -> np.ndarray:
    """HxWx3 uint8 RGB as a player shows it: the frame's display-matrix rotation (counter-clockwise
    degrees, a multiple of 90) applied."""
    image = frame.to_ndarray(format="rgb24")
    rotation = int(round(frame.rotation or 0))
    if rotation % 90:
        raise VideoError(f"the video asks for a display rotation of {rotation} degrees; only multiples of 90 are supported")
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation % 360 else image


def read_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from the first frame, HxWx3 uint8 RGB, rotation applied) in presentation order."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream (audio only?): nothing to replay")
        stream = container.streams.video[0]
        start: Optional[float] = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            start = t if start is None else start
            yield t - start, upright(frame)


def first_frame_checked(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """:func:`read_frames`, with its errors and a video without any decodable frame raised before the
    first output file is opened."""
    try:
        frames = read_frames(path)
        first = next(frames, None)
    except av.FFmpegError as err:
        raise VideoError(f"{path} cannot be decoded: {err}") from None
    if first is None:
        raise VideoError(f"{path} has a video stream but no decodable frame: nothing to replay")
    return itertools.chain([first], frames)


def check_outputs(video: Path, outputs: Sequence[Optional[Path]], overwrite: bool) -> Optional[str]:
    """Why the outputs cannot be written (one of them is the input video, two are the same file, or
    one exists and ``overwrite`` is off), or None."""
    given = [p for p in outputs if p is not None]
    for path in given:
        if path.exists() and path.samefile(video):
            return f"output {path} is the input video: choose another output path (the input is never overwritten)"
    if len({p.resolve() for p in given}) != len(given):
        return f"two outputs name the same file: {[str(p) for p in given]}"
    for path in given:
        if path.exists() and not overwrite:
            return f"output {path} exists: pass --overwrite to replace it"
    return None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--policy", required=True, type=Path, help="export folder (python -m s2e export)")
    parser.add_argument("--video", required=True, type=Path, help="forward-camera video (any FFmpeg-readable file)")
    parser.add_argument("--goal", nargs=2, type=float, metavar=("X", "Y"), help="goal metres in the robot frame (+x forward, +y left); omit for no goal")
    parser.add_argument("--out", type=Path, help="inspection mp4 (default: artifacts/run_policy/<video stem>.mp4)")
    parser.add_argument("--commands", type=Path, help="CSV of (t, v, omega, status) per control tick")
    parser.add_argument("--max-frame-age", type=float, help="seconds before a frame counts as stale (default: control_dt)")
    parser.add_argument(
        "--arrival-radius", type=float, default=DEFAULT_ARRIVAL_RADIUS, help="metres from the goal within which the robot stops (default: NavBench's)"
    )
    parser.add_argument(
        "--backend", choices=["auto", *BACKENDS], default="auto", help="auto: TorchScript if the export has it and torch is installed, else ONNX"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the backend")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (never the input video)")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    """Replay the video, write the mp4 (and CSV); prints and returns the summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not args.video.is_file():
        parser.error(f"video not found: {args.video}")
    out_path = args.out or REPO_ROOT / "artifacts" / "run_policy" / f"{args.video.stem}.mp4"
    refused = check_outputs(args.video, [out_path, args.commands], args.overwrite)
    if refused:
        parser.error(refused)
    try:
        frames = first_frame_checked(args.video)
        runtime = PolicyRuntime(args.policy, max_frame_age=args.max_frame_age, threads=args.threads, backend=args.backend, arrival_radius=args.arrival_radius)
    except (OSError, ValueError, ImportError) as err:  # an unreadable video or export, a missing extra: usage errors
        parser.error(str(err))
    timing = runtime.timing
    horizon_m = max(2.0, runtime.meta["controller"]["max_speed"] * timing.horizon)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[RuntimeOutput] = []

    def drawn() -> Iterator[np.ndarray]:
        for now, frame_time, frame in control_ticks(frames, timing.control_dt):
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
        "arrived_ticks": sum(r.status == "arrived" for r in rows),
        "backend": runtime.backend,
        "video_frames_written": written,
        "out": str(out_path),
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
