"""Turn users' recordings (video + pose file pairs, or GNM frame folders) into episode shards.

The library behind ``tools/make_shards.py``. Each clip goes through:

1. pairing: video and pose file share a file stem (GNM: one folder holds both);
2. video: frame presentation times read with PyAV from decoded frames' pts (so B-frames and
   30000/1001 rates give the true times), relative to the first frame, exactly as the streaming
   reader computes them. H.264 mp4 files are stored byte-for-byte; any other codec/container, and
   GNM frame folders, are encoded with :func:`s2e.video_io.write_mp4`;
3. time alignment: ``relative`` (first pose = video time 0) or ``absolute`` (pose times are video
   seconds already);
4. problem detection on the poses: non-finite values, non-increasing/duplicate times, gaps longer
   than ``max_gap``, frames outside the pose time range. Frames inside a problem span get
   ``valid=False`` (the reader never cuts a window touching them) instead of being cut out of the
   video, so the video and trajectory stay one-to-one; valid runs shorter than ``min_seconds`` are
   marked invalid too, and a clip without any usable run is skipped;
5. interpolation of the good poses to the frame times with :func:`s2e.geometry.interpolate_poses`;
6. optionally (``max_episode_seconds``) cutting long clips into keyframe-aligned chunks by stream
   copy (:mod:`datamodules.mp4_chunks`), because the reader decodes an episode whole.

Nothing here is fatal for one bad clip: every skip and every dropped second is counted by reason
in :class:`IngestSummary`.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import av
import numpy as np
from PIL import Image

from datamodules.episode import BadTrajectoryError, Trajectory
from datamodules.mp4_chunks import split_mp4
from datamodules.pose_formats import GNM_POSE_FILE, GroundFrame, PoseFormatError, read_poses
from datamodules.shard_writer import EpisodeShardWriter
from s2e.geometry import interpolate_poses
from s2e.video_io import write_mp4

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
POSE_SUFFIXES = {"tum": (".txt", ".tum"), "csv": (".csv",)}
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
SECONDS_PER_HOUR = 3600.0
#: Frames this close outside the pose time range still count as covered (pose and frame times are
#: the same instants written through different float/rational roundings).
TIME_TOLERANCE = 1e-3

#: Why frames are marked invalid inside a kept clip (hours dropped are reported per reason).
FRAME_DROP_REASONS = ("nonfinite_pose", "time_order", "gap", "outside_pose_range", "short_run")


class ClipSkipped(Exception):
    """A clip that yields no episode; ``reason`` is the summary key, ``seconds`` what was lost."""

    def __init__(self, reason: str, detail: str, seconds: float = 0.0) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.seconds = reason, detail, seconds


@dataclass(frozen=True)
class IngestOptions:
    """Everything that decides how a clip becomes an episode (written into every episode's metadata)."""

    pose_format: str
    pose_time: str = "relative"
    max_gap: float = 0.5
    min_seconds: float = 2.0
    fps: Optional[float] = None
    up: str = "-y"
    forward: str = "+z"
    embodiment: str = "unknown"
    scene: Optional[str] = None
    license: Optional[str] = None
    intrinsics: Optional[tuple[float, float, float, float]] = None
    crf: int = 23
    max_episode_seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if self.pose_time not in ("relative", "absolute"):
            raise ValueError(f"pose_time must be 'relative' or 'absolute', got {self.pose_time!r}")
        if not self.max_gap > 0 or self.min_seconds < 0:
            raise ValueError("max_gap must be > 0 and min_seconds >= 0")
        if self.max_episode_seconds is not None and not self.max_episode_seconds > 0:
            raise ValueError(f"max_episode_seconds must be > 0, got {self.max_episode_seconds}")
        if self.pose_format == "gnm" and not (self.fps and self.fps > 0):
            raise ValueError("the gnm format has no timestamps: --fps is required")
        GroundFrame(self.up, self.forward).basis()  # raises on a malformed axis

    def ingest_parameters(self) -> dict[str, Any]:
        keys = ("pose_time", "max_gap", "min_seconds", "fps", "up", "forward", "crf", "max_episode_seconds")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Clip:
    """One recording: ``video`` is a video file, or a frame folder for GNM; ``poses`` the pose source."""

    name: str
    video: Optional[Path]
    poses: Optional[Path]


@dataclass
class IngestSummary:
    """What happened to every clip: kept episodes (several per clip when split), skipped clips, hours by reason."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    hours_dropped: dict[str, float] = field(default_factory=dict)

    @property
    def hours_kept(self) -> float:
        return sum(k["valid_hours"] for k in self.kept)

    @property
    def clips_kept(self) -> int:
        return len({k["clip"] for k in self.kept})

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s["reason"]] = counts.get(s["reason"], 0) + 1
        return counts

    def drop(self, reason: str, seconds: float) -> None:
        if seconds > 0:
            self.hours_dropped[reason] = self.hours_dropped.get(reason, 0.0) + seconds / SECONDS_PER_HOUR

    def to_dict(self) -> dict[str, Any]:
        return {
            "clips_kept": self.clips_kept,
            "clips_skipped": len(self.skipped),
            "episodes": len(self.kept),
            "hours_kept": self.hours_kept,
            "hours_dropped": dict(sorted(self.hours_dropped.items())),
            "skipped_by_reason": self.skipped_by_reason(),
            "kept": self.kept,
            "skipped": self.skipped,
        }

    def table(self) -> str:
        """A human-readable summary for the terminal."""
        lines = [
            f"clips kept: {self.clips_kept} ({len(self.kept)} episodes)   clips skipped: {len(self.skipped)}   "
            f"hours kept: {self.hours_kept:.4f}"
        ]
        for reason, count in sorted(self.skipped_by_reason().items()):
            lines.append(f"  skipped clips  {reason:<20} {count:>6}")
        for reason, hours in sorted(self.hours_dropped.items()):
            lines.append(f"  hours dropped  {reason:<20} {hours:>10.4f}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- pairing


def find_clips(videos: Path, poses: Optional[Path], pose_format: str) -> tuple[list[Clip], list[Clip]]:
    """Pair recordings by file stem; returns (paired clips, clips missing their video or poses)."""
    videos = Path(videos)
    if pose_format == "gnm":
        folders = sorted(p for p in videos.iterdir() if p.is_dir())
        paired = [Clip(f.name, f, f) for f in folders if (f / GNM_POSE_FILE).is_file()]
        unpaired = [Clip(f.name, f, None) for f in folders if not (f / GNM_POSE_FILE).is_file()]
        return paired, unpaired
    if poses is None:
        raise ValueError(f"--poses is required for the {pose_format} format")
    video_files = {p.stem: p for p in sorted(videos.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES}
    pose_files = {p.stem: p for p in sorted(Path(poses).iterdir()) if p.suffix.lower() in POSE_SUFFIXES[pose_format]}
    paired = [Clip(stem, video_files[stem], pose_files[stem]) for stem in sorted(video_files.keys() & pose_files.keys())]
    unpaired = [Clip(s, video_files.get(s), pose_files.get(s)) for s in sorted(video_files.keys() ^ pose_files.keys())]
    return paired, unpaired


# ------------------------------------------------------------------------------------------ video


@dataclass
class EpisodeVideo:
    """The mp4 stored in the shard and its frame times.

    ``source_times`` are the frame times of the recording on its own clock (what ``--pose-time
    absolute`` poses refer to); they equal ``times`` + ``source_start`` except after re-encoding a
    variable-frame-rate source, whose frames are stored at a constant rate.
    """

    mp4: bytes
    times: np.ndarray
    source_times: np.ndarray
    source_start: float
    fps: float
    copied: bool


@dataclass(frozen=True)
class FrameClock:
    """Presentation times of a video's frames, as the streaming reader computes them."""

    times: np.ndarray  # seconds relative to the first frame
    start: float  # the first frame's time on the container's own clock
    rate: Fraction
    codec: str
    container: str


def frame_times(source: bytes) -> FrameClock:
    """Decode every frame of ``source`` and read its presentation time.

    Times come from each frame's pts, sorted (decode order differs from presentation order with
    B-frames). Raises ClipSkipped ("undecodable") on anything FFmpeg cannot read.
    """
    handle = io.BytesIO(source)
    times: list[float] = []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.video:
                raise ClipSkipped("undecodable", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
            codec, fmt = stream.codec_context.name, container.format.name
            for index, frame in enumerate(container.decode(stream)):
                times.append(float(frame.time) if frame.time is not None else (index / float(rate) if rate else np.nan))
    except ClipSkipped:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise ClipSkipped("undecodable", str(exc)) from exc
    if len(times) < 2:
        raise ClipSkipped("undecodable", f"{len(times)} decodable frame(s)")
    t = np.sort(np.asarray(times, np.float64))
    if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ClipSkipped("bad_video_time", "frame timestamps missing or repeated")
    if not rate:
        rate = Fraction(1.0 / float(np.median(np.diff(t)))).limit_denominator(1001)
    return FrameClock(t - t[0], float(t[0]), rate, codec, fmt)


def load_video_file(path: Path, crf: int) -> EpisodeVideo:
    """Copy an H.264 mp4 byte-for-byte; re-encode anything else to H.264 mp4.

    Re-encoding decodes the source a second time and streams its frames into the encoder, so no
    clip is ever held as decoded frames in memory.
    """
    data = path.read_bytes()
    clock = frame_times(data)
    if clock.codec == "h264" and "mp4" in clock.container.split(",") and path.suffix.lower() in (".mp4", ".m4v"):
        return EpisodeVideo(data, clock.times, clock.times, clock.start, float(clock.rate), copied=True)
    buf = io.BytesIO()

    def frames() -> Iterator[np.ndarray]:
        with av.open(io.BytesIO(data), mode="r") as container:
            for frame in container.decode(container.streams.video[0]):
                yield even_crop(frame.to_ndarray(format="rgb24"))

    try:
        write_mp4(buf, frames(), clock.rate, crf=crf)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ClipSkipped("undecodable", f"re-encoding failed: {exc}") from exc
    stored = frame_times(buf.getvalue())
    if len(stored.times) != len(clock.times):
        raise ClipSkipped("undecodable", f"re-encoded {len(stored.times)} frames of {len(clock.times)}")
    return EpisodeVideo(buf.getvalue(), stored.times, clock.times, clock.start, float(clock.rate), copied=False)


def load_frame_folder(folder: Path, fps: float, crf: int) -> EpisodeVideo:
    """Encode a GNM folder of numbered frames (``0.jpg, 1.jpg, ...``) at ``fps``; frame ``i`` is at ``i / fps``."""
    numbered = {}
    for p in folder.iterdir():
        if p.suffix.lower() in FRAME_SUFFIXES and p.stem.isdigit():
            numbered[int(p.stem)] = p
    if len(numbered) < 2:
        raise ClipSkipped("undecodable", f"{folder}: fewer than 2 numbered frames")
    indices = sorted(numbered)
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))[:5]
        raise ClipSkipped("bad_frames", f"{folder}: frame numbering not contiguous from 0 (missing {missing}...)")

    def frames() -> Iterator[np.ndarray]:
        for i in indices:
            with Image.open(numbered[i]) as image:
                yield even_crop(np.asarray(image.convert("RGB")))

    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    try:
        write_mp4(buf, frames(), rate, crf=crf)
    except (OSError, ValueError, av.FFmpegError) as exc:  # PIL raises OSError for truncated/corrupt images
        raise ClipSkipped("undecodable", f"{folder}: {exc}") from exc
    stored = frame_times(buf.getvalue())
    return EpisodeVideo(buf.getvalue(), stored.times, np.asarray(indices, np.float64) / fps, 0.0, float(rate), copied=False)


def even_crop(frame: np.ndarray) -> np.ndarray:
    """Drop the last row/column of odd-sized frames: H.264 (yuv420p) needs even sizes."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


# ------------------------------------------------------------------------------------------ poses


@dataclass
class AlignedPoses:
    """Poses at the frame times plus, per frame, why it is invalid ("" when valid)."""

    xy: np.ndarray
    yaw: np.ndarray
    problem: np.ndarray  # [T] object array of reason strings


def align_poses(poses: Trajectory, frame_t: np.ndarray, pose_time: str, max_gap: float) -> AlignedPoses:
    """Interpolate the usable poses at ``frame_t`` and mark the frames that no usable pose covers.

    A pose is usable when t, xy and yaw are finite and its time is later than every earlier usable
    pose. Frames strictly between two consecutive usable poses are invalid when a non-usable pose
    lies between them (reason "nonfinite_pose" or "time_order") or when they are more than
    ``max_gap`` seconds apart ("gap"); frames before the first or after the last usable pose are
    "outside_pose_range" (beyond :data:`TIME_TOLERANCE`).
    """
    t = np.asarray(poses.t, np.float64)
    finite = np.isfinite(t) & np.isfinite(poses.xy).all(-1) & np.isfinite(poses.yaw)
    if pose_time == "relative":
        first = t[np.isfinite(t)]
        t = t - (first[0] if first.size else 0.0)
    usable = np.zeros(len(t), bool)
    why_not = np.full(len(t), "", object)
    last = -np.inf
    for i in range(len(t)):
        if not finite[i]:
            why_not[i] = "nonfinite_pose"
        elif t[i] <= last:
            why_not[i] = "time_order"
        else:
            usable[i], last = True, t[i]
    problem = np.full(len(frame_t), "", object)
    good = np.flatnonzero(usable)
    if good.size < 2:
        problem[:] = "nonfinite_pose" if (~finite).any() else "outside_pose_range"
        return AlignedPoses(np.zeros((len(frame_t), 2)), np.zeros(len(frame_t)), problem)
    for a, b in zip(good[:-1], good[1:]):
        between = [r for r in why_not[a + 1 : b] if r]
        reason = between[0] if between else ("gap" if t[b] - t[a] > max_gap else "")
        if reason:
            problem[(frame_t > t[a]) & (frame_t < t[b]) & (problem == "")] = reason
    problem[(frame_t < t[good[0]] - TIME_TOLERANCE) | (frame_t > t[good[-1]] + TIME_TOLERANCE)] = "outside_pose_range"
    xy, yaw = interpolate_poses(frame_t, t[good], poses.xy[good], poses.yaw[good])
    return AlignedPoses(xy, yaw, problem)


def drop_short_runs(problem: np.ndarray, frame_dt: float, min_seconds: float) -> None:
    """Mark runs of valid frames shorter than ``min_seconds`` as "short_run" (in place)."""
    valid = problem == ""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if (stop - start) * frame_dt < min_seconds:
            problem[start:stop] = "short_run"


# -------------------------------------------------------------------------------------- splitting


@dataclass
class EpisodePart:
    """One episode written to the shards: a whole clip, or a keyframe-aligned chunk of it."""

    mp4: bytes
    traj: Trajectory
    problem: np.ndarray
    chunk: Optional[dict[str, Any]] = None


def split_episode(name: str, video: EpisodeVideo, traj: Trajectory, problem: np.ndarray, options: IngestOptions) -> list[EpisodePart]:
    """Cut a long clip into chunks of at most ``max_episode_seconds`` at keyframes (stream copy).

    Each chunk's trajectory is the slice of frames its mp4 shows, re-timed to start at 0, and its
    decoded frame times are checked against that slice; if the remuxed video does not match (an
    unusual stream), the clip is kept whole rather than stored with misaligned poses. Valid runs
    cut by a chunk boundary are re-checked against ``min_seconds``.
    """
    whole = [EpisodePart(video.mp4, traj, problem)]
    if options.max_episode_seconds is None:
        return whole
    try:
        chunks = split_mp4(video.mp4, options.max_episode_seconds)
    except (ValueError, av.FFmpegError) as exc:
        log.warning("cannot split %s at keyframes (%s); keeping it as one episode", name, exc)
        return whole
    if len(chunks) == 1:
        return whole
    parts = []
    for index, chunk in enumerate(chunks):
        try:
            times = frame_times(chunk.mp4).times
        except ClipSkipped:
            return whole
        first = int(np.argmin(np.abs(traj.t - chunk.start)))
        part = slice(first, first + len(times))
        t = traj.t[part] - traj.t[first]
        if len(t) != len(times) or not np.allclose(t, times, atol=TIME_TOLERANCE):
            log.warning("chunk %d of %s does not match its frame times; keeping the clip whole", index, name)
            return whole
        part_problem = problem[part].copy()
        drop_short_runs(part_problem, 1.0 / video.fps, options.min_seconds)
        part_traj = Trajectory(t=times, xy=traj.xy[part], yaw=traj.yaw[part], valid=part_problem == "")
        parts.append(EpisodePart(chunk.mp4, part_traj, part_problem, {"index": index, "of": len(chunks), "start": chunk.start}))
    return parts


# ----------------------------------------------------------------------------------------- driver


def episode_key(name: str, taken: set[str]) -> str:
    """A shard key from a clip name: characters outside [A-Za-z0-9_-] become '_', clashes get a suffix."""
    base = re.sub(r"[^A-Za-z0-9_\-]", "_", name) or "clip"
    key, n = base, 1
    while key in taken:
        key, n = f"{base}_{n}", n + 1
    return key


def build_episode(clip: Clip, options: IngestOptions) -> tuple[EpisodeVideo, Trajectory, np.ndarray]:
    """Video, aligned validity-marked trajectory and per-frame problem reasons for one clip, or ClipSkipped."""
    if clip.video is None or clip.poses is None:
        raise ClipSkipped("no_video" if clip.video is None else "no_poses", clip.name)
    if options.pose_format == "gnm":
        video = load_frame_folder(clip.video, float(options.fps), options.crf)
    else:
        video = load_video_file(clip.video, options.crf)
    frame_dt = 1.0 / video.fps
    duration = len(video.times) * frame_dt
    try:
        poses = read_poses(clip.poses, options.pose_format, frame=GroundFrame(options.up, options.forward), fps=options.fps)
    except (PoseFormatError, OSError, UnicodeDecodeError) as exc:
        raise ClipSkipped("bad_pose_file", str(exc), duration) from exc
    if duration < options.min_seconds:
        raise ClipSkipped("too_short", f"{duration:.2f} s < --min-seconds {options.min_seconds}", duration)
    # relative: the first pose is the first frame; absolute: pose times are on the video's own clock
    query = video.source_times + (video.source_start if options.pose_time == "absolute" else 0.0)
    aligned = align_poses(poses, query, options.pose_time, options.max_gap)
    drop_short_runs(aligned.problem, frame_dt, options.min_seconds)
    if not (aligned.problem == "").any():
        reasons = sorted(set(aligned.problem))
        raise ClipSkipped("no_usable_run", f"every frame is invalid ({', '.join(reasons)})", duration)
    traj = Trajectory(t=video.times, xy=aligned.xy, yaw=aligned.yaw, valid=aligned.problem == "")
    try:
        traj.validate()
    except BadTrajectoryError as exc:
        raise ClipSkipped("bad_trajectory", str(exc), duration) from exc
    return video, traj, aligned.problem


def episode_meta(clip: Clip, video: EpisodeVideo, options: IngestOptions) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "fps": video.fps,
        "source": str(clip.video),
        "embodiment": options.embodiment,
        "scene": options.scene or clip.name,
        "license": options.license,
        "pose_format": options.pose_format,
        "video_copied": video.copied,
        "ingest": options.ingest_parameters(),
    }
    if options.intrinsics is not None:
        meta["intrinsics"] = dict(zip(("fx", "fy", "cx", "cy"), options.intrinsics))
    return meta


def ingest(
    videos: str | Path,
    poses: Optional[str | Path],
    out_dir: str | Path,
    options: IngestOptions,
    *,
    shard_max_count: int = 1000,
    shard_max_mb: float = 1000.0,
    progress: Callable[[str], None] = log.info,
) -> IngestSummary:
    """Ingest every clip under ``videos``/``poses`` into shards in ``out_dir``; returns the summary."""
    clips, unpaired = find_clips(Path(videos), Path(poses) if poses else None, options.pose_format)
    summary = IngestSummary()
    for clip in unpaired:
        reason = "no_poses" if clip.poses is None else "no_video"
        summary.skipped.append({"clip": clip.name, "reason": reason, "detail": str(clip.video or clip.poses)})
    keys: set[str] = set()
    with EpisodeShardWriter(out_dir, max_count=shard_max_count, max_size=shard_max_mb * 1e6) as writer:
        for number, clip in enumerate(clips, 1):
            try:
                video, traj, problem = build_episode(clip, options)
            except ClipSkipped as skip:
                summary.skipped.append({"clip": clip.name, "reason": skip.reason, "detail": skip.detail})
                summary.drop(skip.reason, skip.seconds)
                progress(f"[{number}/{len(clips)}] {clip.name}: skipped ({skip.reason}: {skip.detail})")
                continue
            frame_dt = 1.0 / video.fps
            for part in split_episode(clip.name, video, traj, problem, options):
                for reason in FRAME_DROP_REASONS:
                    summary.drop(reason, int((part.problem == reason).sum()) * frame_dt)
                valid = int(part.traj.valid.sum())
                if valid == 0 or len(part.traj) < 2:
                    continue  # a chunk with nothing usable: its seconds are counted above by reason
                key = episode_key(clip.name if part.chunk is None else f"{clip.name}-{part.chunk['index']:04d}", keys)
                keys.add(key)
                meta = episode_meta(clip, video, options)
                if part.chunk is not None:
                    meta["chunk"] = part.chunk
                writer.write(key, part.mp4, part.traj, meta)
                summary.kept.append(
                    {
                        "clip": clip.name,
                        "key": key,
                        "frames": len(part.traj),
                        "valid_fraction": valid / len(part.traj),
                        "valid_hours": valid * frame_dt / SECONDS_PER_HOUR,
                        "copied": video.copied,
                    }
                )
                progress(f"[{number}/{len(clips)}] {clip.name} -> {key}: {len(part.traj)} frames, {valid / len(part.traj):.0%} valid")
    return summary
