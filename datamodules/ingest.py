"""Turn users' recordings into episode shards: the part every source shares.

The library behind ``tools/make_shards.py``. A source lists recordings as a :class:`ClipListing`
of :class:`ClipSource` objects -- video + pose file pairs and GNM folders
(:mod:`datamodules.file_source`), ROS bags (:mod:`datamodules.rosbag_source`), LeRobot episodes
(:mod:`datamodules.lerobot_source`) -- and each one loads into a :class:`LoadedClip`: the stored
video with its frame times (:mod:`datamodules.ingest_video`) and the raw poses. From there every
clip goes through the same steps:

1. time alignment: ``relative`` (first pose = first frame) or ``absolute`` (pose times are on the
   recording's own clock: pose files with ``--pose-time absolute``, bag stamps, LeRobot
   timestamps). With ``relative``, a pose span much longer or shorter than the video is warned
   about and counted, because it usually means the wrong pose file or a wrong rate;
2. problem detection on the poses: non-finite values, non-increasing/duplicate times, gaps longer
   than ``max_gap``, frames outside the pose time range. Frames inside a problem span get
   ``valid=False`` (the reader never cuts a window touching them) instead of being cut out of the
   video, so the video and trajectory stay one-to-one; valid runs shorter than ``min_seconds`` are
   marked invalid too, and a clip without any usable run is skipped;
3. interpolation of the good poses to the frame times with :func:`s2e.geometry.interpolate_poses`;
4. optionally (``max_episode_seconds``) cutting long clips into keyframe-aligned chunks by stream
   copy (:mod:`datamodules.mp4_chunks`), because the reader decodes an episode whole;
5. writing, through the ingest journal (:mod:`datamodules.ingest_journal`), so an interrupted run
   can be resumed.

Nothing here is fatal for one bad clip: every clip ends kept or skipped with a reason, and every
dropped second is counted by reason (:mod:`datamodules.ingest_summary`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import av
import numpy as np

from datamodules.episode import BadTrajectoryError, Trajectory
from datamodules.ingest_journal import IngestJournal
from datamodules.ingest_summary import SECONDS_PER_HOUR, ClipOutcome, IngestSummary
from datamodules.ingest_video import ClipSkipped, EpisodeVideo, frame_times
from datamodules.mp4_chunks import split_mp4
from datamodules.pose_formats import GroundFrame
from datamodules.shard_writer import EpisodeShardWriter
from s2e.geometry import interpolate_poses

log = logging.getLogger(__name__)

#: Frames this close outside the pose time range still count as covered (pose and frame times are
#: the same instants written through different float/rational roundings).
TIME_TOLERANCE = 1e-3
#: Why frames are marked invalid inside a kept clip (hours dropped are reported per reason).
FRAME_DROP_REASONS = ("nonfinite_pose", "time_order", "gap", "outside_pose_range", "short_run")
#: ``relative`` pose time: pose and video spans may differ by this fraction of the video ...
SPAN_TOLERANCE = 0.05
#: ... or by this many seconds, whichever is larger, before the clip is warned about.
SPAN_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class IngestOptions:
    """Everything that decides how a clip becomes an episode (written into every episode's metadata).

    ``pose_format`` names the pose source: a file format (``tum``, ``csv``, ``gnm``), ``rosbag``
    or ``lerobot``.
    """

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


@dataclass
class LoadedClip:
    """A recording's stored video and its raw poses, before alignment.

    ``pose_time`` says how ``poses.t`` relates to the video (see :class:`IngestOptions`);
    ``message_skips`` counts, by reason, the log messages a robot-log source could not use.
    """

    video: EpisodeVideo
    poses: Trajectory
    pose_time: str
    message_skips: dict[str, int] = field(default_factory=dict)


class ClipSource(Protocol):
    """One recording a source found: a unique ``name``, a ``source`` for the metadata, and a loader."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    def load(self, options: IngestOptions) -> LoadedClip:
        """The clip's video and poses, or ClipSkipped."""
        ...


@dataclass
class ClipListing:
    """What a source found: loadable clips, and entries skipped before loading ({clip, reason, detail})."""

    clips: Sequence[ClipSource]
    skipped: list[dict[str, str]] = field(default_factory=list)


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


def span_mismatch(poses: Trajectory, video: EpisodeVideo) -> Optional[str]:
    """With relative pose time: a description when the pose and video spans disagree, else None.

    Relative alignment trusts that poses and video start together and run at the same speed; a
    pose file twice as long as its video (a wrong file, poses in milliseconds) is interpolated
    without complaint otherwise.
    """
    t = np.asarray(poses.t, np.float64)
    t = t[np.isfinite(t)]
    if t.size < 2:
        return None
    pose_span, video_span = float(t.max() - t.min()), float(video.source_times[-1] - video.source_times[0])
    if abs(pose_span - video_span) <= max(SPAN_TOLERANCE * video_span, SPAN_TOLERANCE_S):
        return None
    return f"poses span {pose_span:.2f} s, the video {video_span:.2f} s (relative pose time assumes they start together at the same rate)"


@dataclass
class AlignedEpisode:
    """A clip's validity-marked trajectory at its frame times, per-frame problem reasons and warnings."""

    traj: Trajectory
    problem: np.ndarray
    warnings: dict[str, str]


def align_episode(loaded: LoadedClip, options: IngestOptions) -> AlignedEpisode:
    """Steps 1-3 of the module docstring for one loaded clip, or ClipSkipped."""
    video = loaded.video
    duration = video.seconds
    if duration < options.min_seconds:
        raise ClipSkipped("too_short", f"{duration:.2f} s < --min-seconds {options.min_seconds}", duration)
    warnings = {}
    if loaded.pose_time == "relative" and (mismatch := span_mismatch(loaded.poses, video)):
        warnings["pose_span_mismatch"] = mismatch
    query = video.source_times + (video.source_start if loaded.pose_time == "absolute" else 0.0)
    aligned = align_poses(loaded.poses, query, loaded.pose_time, options.max_gap)
    drop_short_runs(aligned.problem, 1.0 / video.fps, options.min_seconds)
    if not (aligned.problem == "").any():
        reasons = sorted(set(aligned.problem))
        raise ClipSkipped("no_usable_run", f"every frame is invalid ({', '.join(reasons)})", duration)
    traj = Trajectory(t=video.times, xy=aligned.xy, yaw=aligned.yaw, valid=aligned.problem == "")
    try:
        traj.validate()
    except BadTrajectoryError as exc:
        raise ClipSkipped("bad_trajectory", str(exc), duration) from exc
    return AlignedEpisode(traj, aligned.problem, warnings)


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


def episode_meta(clip: ClipSource, video: EpisodeVideo, options: IngestOptions) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "fps": video.fps,
        "source": clip.source,
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


def ingest_clip(clip: ClipSource, options: IngestOptions, writer: EpisodeShardWriter, keys: set[str]) -> ClipOutcome:
    """Load, align, split and write one clip; its outcome is kept or skipped, never neither."""
    outcome = ClipOutcome(clip.name)
    try:
        loaded = clip.load(options)
        outcome.message_skips = dict(loaded.message_skips)
        episode = align_episode(loaded, options)
    except ClipSkipped as skip:
        return outcome.skip(skip.reason, skip.detail, skip.seconds)
    video = loaded.video
    outcome.warnings = episode.warnings
    frame_dt = 1.0 / video.fps
    for part in split_episode(clip.name, video, episode.traj, episode.problem, options):
        for reason in FRAME_DROP_REASONS:
            outcome.drop(reason, int((part.problem == reason).sum()) * frame_dt)
        valid = int(part.traj.valid.sum())
        if valid == 0 or len(part.traj) < 2:
            continue  # a chunk with nothing usable: its seconds are counted above by reason
        key = episode_key(clip.name if part.chunk is None else f"{clip.name}-{part.chunk['index']:04d}", keys)
        keys.add(key)
        meta = episode_meta(clip, video, options)
        if part.chunk is not None:
            meta["chunk"] = part.chunk
        writer.write(key, part.mp4, part.traj, meta, same_shard=bool(outcome.kept))
        outcome.kept.append(
            {
                "clip": clip.name,
                "key": key,
                "frames": len(part.traj),
                "valid_fraction": valid / len(part.traj),
                "valid_hours": valid * frame_dt / SECONDS_PER_HOUR,
                "copied": video.copied,
                **({"warnings": outcome.warnings} if outcome.warnings else {}),
                **({"message_skips": outcome.message_skips} if outcome.message_skips else {}),
            }
        )
    if not outcome.kept:  # every chunk lost its valid runs to the --min-seconds rule after cutting
        outcome.skip("no_usable_run", f"no chunk of at most --max-episode-seconds keeps a valid run of --min-seconds {options.min_seconds}")
    return outcome


def ingest_clips(
    listing: ClipListing,
    out_dir: str | Path,
    options: IngestOptions,
    *,
    inputs: Optional[dict[str, Any]] = None,
    resume: bool = False,
    shard_max_count: int = 1000,
    shard_max_mb: float = 1000.0,
    progress: Callable[[str], None] = log.info,
) -> IngestSummary:
    """Write every clip of ``listing`` into shards in ``out_dir``; returns the summary of all clips.

    ``inputs`` describes where the clips came from; with the options and shard limits it names the
    run in the journal, and ``resume`` continues an interrupted run of the same name, skipping the
    clips it finished. A fresh run refuses a folder that already holds shards. The journal is
    deleted again when no episode was written, so a failed run leaves nothing that blocks a rerun.
    """
    out_dir = Path(out_dir)
    identity = {"inputs": inputs or {}, "options": asdict(options), "shard_max_count": shard_max_count, "shard_max_mb": shard_max_mb}
    journal = IngestJournal(out_dir, identity, resume=resume)
    summary = IngestSummary()
    for entry in listing.skipped:
        summary.add(ClipOutcome(entry["clip"]).skip(entry["reason"], entry["detail"]))
    for done in journal.done.values():
        summary.add(ClipOutcome.from_dict(done))
    keys = {k["key"] for done in journal.done.values() for k in done["kept"]}
    todo = [clip for clip in listing.clips if clip.name not in journal.done]
    if len(todo) < len(listing.clips):
        progress(f"resuming: {len(listing.clips) - len(todo)} clip(s) already done, {len(todo)} to go")
    max_size = shard_max_mb * 1e6
    with EpisodeShardWriter(out_dir, max_count=shard_max_count, max_size=max_size, start_index=journal.next_shard, on_finalize=journal.commit) as writer:
        for number, clip in enumerate(todo, 1):
            outcome = ingest_clip(clip, options, writer, keys)
            journal.add(outcome.to_dict())
            summary.add(outcome)
            progress(f"[{number}/{len(todo)}] {clip.name}: {describe(outcome)}")
    journal.close(keep=bool(summary.kept))
    return summary


def describe(outcome: ClipOutcome) -> str:
    """One progress line's worth of a clip's outcome."""
    if outcome.skipped is not None:
        return f"skipped ({outcome.skipped['reason']}: {outcome.skipped['detail']})"
    parts = [f"{k['key']}: {k['frames']} frames, {k['valid_fraction']:.0%} valid" for k in outcome.kept]
    notes = [f"warning {name}: {text}" for name, text in outcome.warnings.items()]
    if outcome.message_skips:
        notes.append(f"messages skipped {outcome.message_skips}")
    return "; ".join(parts + notes)
