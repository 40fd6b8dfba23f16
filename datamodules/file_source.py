"""Recordings as files: a video per recording plus a pose file (TUM / CSV), or GNM frame folders.

Pairing is by name relative to the two folders (subfolders included): ``day1/walk.mp4`` pairs
with ``day1/walk.csv``, or with ``day1/walk.mp4.csv`` -- the pose file named after the video's full
name, which is how two videos that share a stem (``walk.mov``, ``walk.mp4``) each get their own
poses. A pose file that could belong to more than one video, or a video claimed by two pose files,
is an error naming them all before anything is written: guessing would silently give one
recording another's poses or drop it. Only regular files are read; a FIFO or device named
``*.mp4`` would block the reader forever, so it is skipped and counted (``not_regular_file``).
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from datamodules.ingest import ClipListing, IngestOptions, LoadedClip
from datamodules.ingest_video import ClipSkipped, load_frame_folder, load_video_file
from datamodules.pose_formats import GNM_POSE_FILE, GroundFrame, PoseFormatError, read_poses

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
POSE_SUFFIXES = {"tum": (".txt", ".tum"), "csv": (".csv",)}


class AmbiguousClipsError(ValueError):
    """Videos and pose files whose pairing by name is not unique."""


@dataclass(frozen=True)
class FileClip:
    """One recording: ``video`` is a video file, or a frame folder for GNM; ``poses`` the pose source."""

    name: str
    video: Path
    poses: Path

    @property
    def source(self) -> str:
        return str(self.video)

    def load(self, options: IngestOptions) -> LoadedClip:
        if options.pose_format == "gnm":
            video = load_frame_folder(self.video, float(options.fps), options.crf)
        else:
            video = load_video_file(self.video, options.crf)
        try:
            poses = read_poses(self.poses, options.pose_format, frame=GroundFrame(options.up, options.forward), fps=options.fps)
        except (PoseFormatError, OSError, UnicodeDecodeError) as exc:
            raise ClipSkipped("bad_pose_file", str(exc), video.seconds) from exc
        return LoadedClip(video, poses, options.pose_time)


def regular_file_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a readable regular file (following symlinks), None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"{path}: not a regular file (FIFO, socket, device or folder)"


def _files(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Entries under ``root`` (recursively) whose name ends in one of ``suffixes``, folders excluded."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and not path.is_dir():
            yield path


def find_clips(videos: Path, poses: Optional[Path], pose_format: str) -> ClipListing:
    """Pair recordings by relative name (see the module docstring).

    Raises AmbiguousClipsError listing every pose file or video whose pairing is not unique.
    """
    videos = Path(videos)
    if pose_format == "gnm":
        folders = sorted(p for p in videos.iterdir() if p.is_dir())
        listing = ClipListing([FileClip(f.name, f, f) for f in folders if (f / GNM_POSE_FILE).is_file()])
        listing.skipped = [{"clip": f.name, "reason": "no_poses", "detail": str(f)} for f in folders if not (f / GNM_POSE_FILE).is_file()]
        return listing
    if poses is None:
        raise ValueError(f"--poses is required for the {pose_format} format")
    poses = Path(poses)
    listing = ClipListing([])
    video_files: dict[str, Path] = {}  # relative name with suffix -> path
    by_stem: dict[str, list[str]] = defaultdict(list)
    for path in _files(videos, VIDEO_SUFFIXES):
        name = path.relative_to(videos).as_posix()
        problem = regular_file_problem(path)
        if problem:
            listing.skipped.append({"clip": name, "reason": "not_regular_file", "detail": problem})
            continue
        video_files[name] = path
        by_stem[name[: -len(path.suffix)]].append(name)
    claims: dict[str, list[Path]] = defaultdict(list)  # video name -> pose files
    ambiguous = []
    for path in _files(poses, POSE_SUFFIXES[pose_format]):
        name = path.relative_to(poses).as_posix()
        problem = regular_file_problem(path)
        if problem:
            listing.skipped.append({"clip": name, "reason": "not_regular_file", "detail": problem})
            continue
        target = name[: -len(path.suffix)]
        if target in video_files:
            claims[target].append(path)
        elif len(by_stem.get(target, [])) == 1:
            claims[by_stem[target][0]].append(path)
        elif target in by_stem:
            options = " or ".join(f"{v} (name it {v}{path.suffix})" for v in by_stem[target])
            ambiguous.append(f"pose file {name} could belong to {options}")
        else:
            listing.skipped.append({"clip": target, "reason": "no_video", "detail": str(path)})
    for video, pose_files in sorted(claims.items()):
        if len(pose_files) > 1:
            ambiguous.append(f"video {video} has several pose files: {', '.join(str(p.relative_to(poses)) for p in pose_files)}")
    if ambiguous:
        raise AmbiguousClipsError("recordings cannot be paired by name: " + "; ".join(ambiguous))
    clips = []
    for name, path in sorted(video_files.items()):
        stem = name[: -len(path.suffix)]
        clip_name = stem if len(by_stem[stem]) == 1 else name  # walk.mov and walk.mp4 keep their suffixes
        if name in claims:
            clips.append(FileClip(clip_name, path, claims[name][0]))
        else:
            listing.skipped.append({"clip": clip_name, "reason": "no_poses", "detail": str(path)})
    listing.clips = clips
    return listing
