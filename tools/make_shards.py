#!/usr/bin/env python
"""Turn a folder of recordings (videos + pose files, or GNM frame folders) into episode shards.

Prints one progress line per clip, then the summary table (hours kept, clips skipped and hours
dropped, by reason), writes ``summary.json`` into the output folder, and prints that summary's
totals as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.ingest import IngestOptions, ingest  # noqa: E402
from datamodules.pose_formats import POSE_FORMATS  # noqa: E402


def parse_intrinsics(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--intrinsics takes fx,fy,cx,cy (4 numbers), got {text!r}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Pose formats: tum = 'timestamp tx ty tz qx qy qz qw' lines (3-D poses, projected with --up/--forward); "
            "csv = header with t,x,y,yaw; gnm = visualnav-transformer folders (0.jpg, 1.jpg, ... + traj_data.pkl). "
            "The gnm traj_data.pkl pickle is read with a restricted unpickler that only admits numpy arrays "
            "and plain containers; anything else in it is refused, never executed."
        ),
    )
    parser.add_argument("--videos", required=True, type=Path, help="folder of videos (gnm: folder of trajectory folders)")
    parser.add_argument("--poses", type=Path, help="folder of pose files paired with videos by file stem (not used for gnm)")
    parser.add_argument("--pose-format", required=True, choices=POSE_FORMATS)
    parser.add_argument("--out", required=True, type=Path, help="output folder for shard-*.tar and summary.json")
    parser.add_argument("--pose-time", choices=("relative", "absolute"), default="relative",
                        help="relative: the first pose is video time 0; absolute: pose times are video seconds")
    parser.add_argument("--max-gap", type=float, default=0.5, help="seconds between poses beyond which frames are invalid")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip / valid run kept, seconds")
    parser.add_argument("--fps", type=float, help="frame rate of gnm folders (required for gnm)")
    parser.add_argument("--up", default="-y", help="world up axis of tum poses: -y (camera SLAM, default) or z (ENU/odometry)")
    parser.add_argument("--forward", default="+z", help="body forward axis of tum poses: +z (camera, default) or +x (robot base)")
    parser.add_argument("--embodiment", default="unknown", help="platform name stored in the metadata")
    parser.add_argument("--scene", help="scene name for all clips (default: the clip's stem)")
    parser.add_argument("--license", help="license of the recordings, stored in the metadata")
    parser.add_argument("--intrinsics", type=parse_intrinsics, help="camera intrinsics fx,fy,cx,cy in pixels")
    parser.add_argument("--crf", type=int, default=23, help="H.264 quality for videos that must be re-encoded")
    parser.add_argument("--max-episode-seconds", type=float,
                        help="cut longer clips into episodes of at most this length at keyframes (stream copy); "
                             "the training reader decodes an episode whole, so use e.g. 300 for hour-long walks")
    parser.add_argument("--shard-max-count", type=int, default=1000, help="episodes per shard")
    parser.add_argument("--shard-max-mb", type=float, default=1000.0, help="megabytes per shard")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pose_format != "gnm" and args.poses is None:
        print(f"error: --poses is required for --pose-format {args.pose_format}", file=sys.stderr)
        return 2
    try:
        options = IngestOptions(
            pose_format=args.pose_format, pose_time=args.pose_time, max_gap=args.max_gap, min_seconds=args.min_seconds,
            fps=args.fps, up=args.up, forward=args.forward, embodiment=args.embodiment, scene=args.scene,
            license=args.license, intrinsics=args.intrinsics, crf=args.crf,
            max_episode_seconds=args.max_episode_seconds,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.videos.is_dir():
        print(f"error: --videos {args.videos} is not a folder", file=sys.stderr)
        return 2
    existing = sorted(args.out.glob("shard-*.tar")) if args.out.is_dir() else []
    if existing:  # writing over them would mix two datasets or silently lose the old one
        print(f"error: --out {args.out} already holds shards ({existing[0].name}, ...); choose an empty folder", file=sys.stderr)
        return 2
    summary = ingest(args.videos, args.poses, args.out, options, shard_max_count=args.shard_max_count,
                     shard_max_mb=args.shard_max_mb, progress=print)
    result = summary.to_dict()
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(summary.table())
    totals = {k: result[k] for k in ("clips_kept", "clips_skipped", "episodes", "hours_kept", "hours_dropped", "skipped_by_reason")}
    print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
