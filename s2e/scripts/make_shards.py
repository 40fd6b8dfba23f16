"""Turn recordings into episode shards: videos + pose files, GNM folders, ROS bags or a LeRobot dataset.

Prints one progress line per clip, then the summary table (hours kept, clips skipped and hours
dropped, by reason), writes ``summary.json`` into the output folder (last, after every shard), and
prints that summary's totals as one JSON object on the last line.

Exit status: 0 when episodes were written; 1 when none was (every clip skipped: the reasons are in
the table); 2 for bad arguments, ambiguous inputs or an output folder that holds another run;
130 when interrupted (SIGINT / SIGTERM): finished shards stay, and ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from datamodules.file_source import find_clips
from datamodules.ingest import ClipListing, IngestOptions, ingest_clips
from datamodules.ingest_journal import SUMMARY_NAME, OutputStateError, clear_output, inspect_output
from datamodules.lerobot_source import PoseFields, find_lerobot_episodes
from datamodules.pose_formats import POSE_FORMATS
from datamodules.rosbag_source import BAG_TIMES, BagTopics, find_bags

SOURCES = ("files", "rosbag", "lerobot")
#: Ground-plane axes when --up / --forward are not given: camera SLAM for pose files, REP-103 for bags.
DEFAULT_AXES = {"files": ("-y", "+z"), "rosbag": ("z", "+x"), "lerobot": ("-y", "+z")}


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
    parser.add_argument("--from", dest="source", choices=SOURCES, default="files", help="kind of recordings (default: files)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for shard-*.tar and summary.json")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same inputs and options)")
    resume.add_argument("--overwrite", action="store_true", help="delete an earlier run's shards, journal and summary in --out first")

    files = parser.add_argument_group("--from files")
    files.add_argument("--videos", type=Path, help="folder of videos (gnm: folder of trajectory folders)")
    files.add_argument("--poses", type=Path, help="folder of pose files paired with videos by relative name (not used for gnm)")
    files.add_argument("--pose-format", choices=POSE_FORMATS)
    files.add_argument(
        "--pose-time",
        choices=("relative", "absolute"),
        default="relative",
        help="relative: the first pose is video time 0; absolute: pose times are video seconds",
    )
    files.add_argument("--fps", type=float, help="frame rate of gnm folders (required for gnm)")

    bags = parser.add_argument_group("--from rosbag")
    bags.add_argument("--bags", type=Path, help="a bag, or a folder searched for ROS 1 .bag, ROS 2 bag folders, .mcap and .db3")
    bags.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic")
    bags.add_argument("--odom-topic", help="nav_msgs/Odometry, geometry_msgs/PoseStamped or PoseWithCovarianceStamped topic")
    bags.add_argument("--bag-time", choices=BAG_TIMES, default="header", help="message header stamps, or the recorder's receive times")

    lerobot = parser.add_argument_group("--from lerobot")
    lerobot.add_argument("--dataset", type=Path, help="LeRobot dataset folder (v2.0, v2.1 or v3.0)")
    lerobot.add_argument("--camera", help="video key, e.g. observation.images.front (default: the only one)")
    lerobot.add_argument("--pose-fields", help="X,Y,YAW columns, each 'column', 'column[index]' or 'column[name]'")
    lerobot.add_argument("--velocity-fields", help="V,OMEGA columns (m/s, rad/s) to dead-reckon poses from")

    common = parser.add_argument_group("all sources")
    common.add_argument("--max-gap", type=float, default=0.5, help="seconds between poses beyond which frames are invalid")
    common.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip / valid run kept, seconds")
    common.add_argument("--up", help="world up axis of 3-D poses (files: -y, camera SLAM; rosbag: z, REP-103)")
    common.add_argument("--forward", help="body forward axis of 3-D poses (files: +z, a camera; rosbag: +x, a robot base)")
    common.add_argument("--embodiment", default="unknown", help="platform name stored in the metadata")
    common.add_argument("--scene", help="scene name for all clips (default: the clip's name)")
    common.add_argument("--license", help="license of the recordings, stored in the metadata")
    common.add_argument("--intrinsics", type=parse_intrinsics, help="camera intrinsics fx,fy,cx,cy in pixels")
    common.add_argument("--crf", type=int, default=23, help="H.264 quality for videos that must be (re-)encoded")
    common.add_argument(
        "--max-episode-seconds",
        type=float,
        help="cut longer clips into episodes of at most this length at keyframes (stream copy); "
        "the training reader decodes an episode whole, so use e.g. 300 for hour-long walks",
    )
    common.add_argument("--shard-max-count", type=int, default=1000, help="episodes per shard (one recording never spans two)")
    common.add_argument("--shard-max-mb", type=float, default=1000.0, help="megabytes per shard")
    return parser


class UsageError(Exception):
    """A command line that cannot run; the message is printed and the tool exits with 2."""


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise UsageError(f"--from {args.source} needs {' and '.join(missing)}")


def find_recordings(args: argparse.Namespace) -> tuple[ClipListing, str, dict[str, Any]]:
    """The source's clip listing, the pose-format label and the inputs that name the run."""
    if args.source == "rosbag":
        require(args, "bags", "image_topic", "odom_topic")
        topics = BagTopics(args.image_topic, args.odom_topic, args.bag_time)
        inputs = {"bags": str(args.bags.resolve()), "image_topic": topics.image, "odom_topic": topics.pose, "bag_time": topics.time}
        return find_bags(args.bags, topics), "rosbag", inputs
    if args.source == "lerobot":
        require(args, "dataset")
        fields = PoseFields.parse(args.pose_fields, args.velocity_fields)
        listing = find_lerobot_episodes(args.dataset, args.camera, fields)
        inputs = {"dataset": str(args.dataset.resolve()), "camera": args.camera, "pose_fields": args.pose_fields, "velocity_fields": args.velocity_fields}
        return listing, "lerobot", inputs
    require(args, "videos", "pose_format")
    if args.pose_format != "gnm":
        require(args, "poses")
    if not args.videos.is_dir():
        raise UsageError(f"--videos {args.videos} is not a folder")
    inputs = {"videos": str(args.videos.resolve()), "poses": str(args.poses.resolve()) if args.poses else None}
    return find_clips(args.videos, args.poses, args.pose_format), args.pose_format, inputs


def interrupt(signum: int, frame: object) -> NoReturn:
    """SIGTERM handler: unwind like Ctrl-C, so the open shard is deleted instead of left half-written."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def write_summary(out: Path, result: dict[str, Any]) -> None:
    """summary.json, atomically: it is the last thing a run writes, and it must never be half there."""
    tmp = out / (SUMMARY_NAME + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / SUMMARY_NAME)


def main(argv: list[str] | None = None) -> int:
    """Ingest the recordings; the exit status is the one the module docstring lists."""
    args = build_parser().parse_args(argv)
    up, forward = DEFAULT_AXES[args.source]
    try:
        state = inspect_output(args.out)
        if not state.empty and not (args.resume or args.overwrite):
            hint = "continue it with --resume, or start over with --overwrite" if state.journal else "choose an empty folder, or replace it with --overwrite"
            raise UsageError(f"--out {args.out} holds an earlier run ({state.describe()}): {hint}")
        listing, pose_format, inputs = find_recordings(args)
        options = IngestOptions(
            pose_format=pose_format,
            pose_time=args.pose_time,
            max_gap=args.max_gap,
            min_seconds=args.min_seconds,
            fps=args.fps,
            up=args.up or up,
            forward=args.forward or forward,
            embodiment=args.embodiment,
            scene=args.scene,
            license=args.license,
            intrinsics=args.intrinsics,
            crf=args.crf,
            max_episode_seconds=args.max_episode_seconds,
        )
    except (UsageError, ValueError, ImportError, OSError) as exc:  # AmbiguousClipsError and LeRobotFormatError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.overwrite:
        clear_output(state)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        summary = ingest_clips(
            listing, args.out, options, inputs=inputs, resume=args.resume, shard_max_count=args.shard_max_count, shard_max_mb=args.shard_max_mb, progress=print
        )
    except OutputStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'SIGINT'}): the finished shards in {args.out} stay; rerun with --resume to continue", file=sys.stderr)
        return 130
    result = summary.to_dict()
    write_summary(args.out, result)
    print(summary.table())
    keys = ("clips", "clips_kept", "clips_skipped", "episodes", "hours_kept", "hours_dropped", "skipped_by_reason", "warnings", "messages_skipped")
    print(json.dumps({k: result[k] for k in keys}))
    if not summary.kept:
        print(f"error: no episode was written ({result['clips']} clip(s), all skipped; reasons above)", file=sys.stderr)
        return 1
    return 0
