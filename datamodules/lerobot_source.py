"""Recordings from a LeRobot dataset on disk (format v2.0 / v2.1 / v3.0), one episode = one clip.

The ``lerobot`` package itself is not used: its releases for Python 3.11 pin torch < 2.11 and pull
CUDA wheels, so the published on-disk format is read directly with ``pyarrow`` (parquet, imported
only when a dataset is read) and PyAV (mp4, including the AV1 that LeRobot encodes by default and
decord cannot decode):

- ``meta/info.json``: ``codebase_version``, ``fps``, ``features`` (video keys have dtype
  ``video``; vector columns may list element ``names``), and the ``data_path`` / ``video_path``
  templates;
- v2.x: ``meta/episodes.jsonl`` lists episodes; each has its own parquet and mp4 per camera,
  formatted with ``episode_chunk = episode_index // chunks_size``;
- v3.0: ``meta/episodes/chunk-*/file-*.parquet`` lists episodes with the ``data/chunk_index``,
  ``data/file_index``, ``videos/<key>/chunk_index``, ``file_index`` and ``from_timestamp`` of the
  files that hold them; a data file and a video file hold several episodes each, the episode's
  frames starting at ``from_timestamp`` in the video.

Frame ``i`` of an episode is the video frame nearest ``from_timestamp + timestamp[i]`` (within a
quarter frame; LeRobot's own reader allows 0.1 ms). The frames are re-encoded once to H.264 with
those timestamps. Poses come from columns named on the command line (``x, y, yaw`` of an odometry
or state vector), or are dead-reckoned from forward speed and yaw rate when a robot only logs
velocities (:func:`integrate_unicycle`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import av
import numpy as np

from datamodules.episode import Trajectory
from datamodules.ingest import ClipListing, IngestOptions, LoadedClip
from datamodules.ingest_video import ClipSkipped, encode_timed_frames
from s2e.geometry import wrap_angle

VERSIONS = ("v2.0", "v2.1", "v3.0")
#: A row's frame is the video frame nearest its time, at most this many frame intervals away.
FRAME_TOLERANCE = 0.25
_TEMPLATE_FIELDS = {"episode_chunk", "episode_index", "video_key", "chunk_index", "file_index"}
_FIELD_RE = re.compile(r"^(?P<column>[^\[\]]+?)(?:\[(?P<element>[^\[\]]+)\])?$")


class LeRobotFormatError(ValueError):
    """A dataset that does not follow the LeRobot layout, or a camera / pose field it does not have."""


def pyarrow_modules() -> tuple[Any, Any]:
    """``(pyarrow.compute, pyarrow.parquet)``, or an ImportError saying what to install."""
    try:
        import pyarrow.compute as compute
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise ImportError("reading LeRobot datasets needs pyarrow: pip install pyarrow") from exc
    return compute, parquet


@dataclass(frozen=True)
class FieldRef:
    """A per-frame number: a scalar ``column``, or element ``element`` (index or name) of a vector column."""

    column: str
    element: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "FieldRef":
        match = _FIELD_RE.match(text.strip())
        if match is None:
            raise LeRobotFormatError(f"field {text!r}: write a column name, or column[index] / column[name]")
        return cls(match.group("column"), match.group("element"))

    def __str__(self) -> str:
        return self.column if self.element is None else f"{self.column}[{self.element}]"


@dataclass(frozen=True)
class PoseFields:
    """Where an episode's poses come from: ``pose`` = (x, y, yaw) fields, or ``velocity`` = (v, omega)."""

    pose: Optional[tuple[FieldRef, FieldRef, FieldRef]] = None
    velocity: Optional[tuple[FieldRef, FieldRef]] = None

    @classmethod
    def parse(cls, pose: Optional[str], velocity: Optional[str]) -> "PoseFields":
        """From ``"x,y,yaw"`` or ``"v,omega"`` field lists; exactly one must be given."""
        if (pose is None) == (velocity is None):
            raise LeRobotFormatError("give exactly one of --pose-fields X,Y,YAW and --velocity-fields V,OMEGA")
        text, count = (pose, 3) if pose is not None else (velocity, 2)
        fields = tuple(FieldRef.parse(part) for part in text.split(","))
        if len(fields) != count:
            raise LeRobotFormatError(f"expected {count} comma-separated fields, got {text!r}")
        return cls(pose=fields) if pose is not None else cls(velocity=fields)  # type: ignore[arg-type]

    @property
    def fields(self) -> tuple[FieldRef, ...]:
        return self.pose if self.pose is not None else self.velocity  # type: ignore[return-value]


def integrate_unicycle(t: np.ndarray, v: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dead-reckon planar poses from forward speed ``v`` (m/s) and yaw rate ``omega`` (rad/s) at times ``t``.

    Each row's velocities hold until the next row and the step is integrated exactly along the
    arc (exact for piecewise-constant commands). The path starts at the origin heading +x; only its
    shape matters, since training targets are robot-frame waypoints. A step with a non-finite
    velocity or time is unknown: the pose after it is NaN, so the frames around it become invalid
    and no window spans it, and integration continues from there.
    """
    t, v, omega = (np.asarray(a, np.float64) for a in (t, v, omega))
    dt = np.diff(t)
    known = np.isfinite(v[:-1]) & np.isfinite(omega[:-1]) & np.isfinite(dt)
    turn = np.where(known, omega[:-1] * dt, 0.0)
    arc = np.where(known, v[:-1] * dt, 0.0)
    yaw = np.concatenate([[0.0], np.cumsum(turn)])
    heading = yaw[:-1] + turn / 2
    chord = arc * np.sinc(turn / (2 * np.pi))  # sin(turn/2) / (turn/2): the arc's chord
    xy = np.concatenate([np.zeros((1, 2)), np.cumsum(np.stack([chord * np.cos(heading), chord * np.sin(heading)], -1), 0)])
    xy[1:][~known] = np.nan
    yaw = wrap_angle(yaw)
    yaw[1:][~known] = np.nan
    return xy, yaw


def match_frames(frames: Iterator[tuple[float, Any]], targets: np.ndarray, tolerance: float) -> Iterator[tuple[int, Any]]:
    """``(target index, frame)`` for each target whose nearest frame is within ``tolerance``.

    ``frames`` are (time, frame) in presentation order and ``targets`` increase strictly; each frame
    is used at most once. Streams: frames are never held beyond the one being compared.
    """
    current = next(frames, None)
    for index, target in enumerate(targets):
        while current is not None and current[0] < target - tolerance:
            current = next(frames, None)
        if current is None:
            return
        if current[0] > target + tolerance:
            continue  # no frame near this target
        following = next(frames, None)
        while following is not None and abs(following[0] - target) < abs(current[0] - target):
            current, following = following, next(frames, None)
        yield index, current[1]
        current = following


def decoded_frames(path: Path, start: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) of ``path`` from the keyframe at or before ``start`` seconds on (frames not converted yet)."""
    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is not None:
                yield float(frame.time), frame


def format_path(root: Path, template: str, **values: Any) -> Path:
    """``root / template.format(**values)`` for a path template from info.json, which may only name known fields."""
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is not None and (name not in _TEMPLATE_FIELDS or conversion):
            raise LeRobotFormatError(f"path template {template!r} uses an unknown field {{{name}}}")
    return root / template.format(**values)


@functools.lru_cache(maxsize=2)
def read_columns(path: Path, modified_ns: int, columns: tuple[str, ...]) -> Any:
    """The named columns of a parquet file; cached (by path and modification time), because a v3 file
    holds many consecutive episodes."""
    _, parquet = pyarrow_modules()
    return parquet.read_table(path, columns=list(columns))


class LeRobotDataset:
    """A dataset's layout, camera and pose fields, checked once; :meth:`listing` gives its episodes.

    Raises LeRobotFormatError naming what is missing: info.json, a supported version, the camera
    (listing the dataset's video keys) or a pose field (listing its numeric features).
    """

    def __init__(self, root: Path, camera: Optional[str], poses: PoseFields) -> None:
        self.root = Path(root)
        try:
            self.info = json.loads((self.root / "meta" / "info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LeRobotFormatError(f"{self.root} is not a LeRobot dataset: meta/info.json unreadable ({exc})") from exc
        self.version = str(self.info.get("codebase_version"))
        if self.version not in VERSIONS:
            raise LeRobotFormatError(f"{self.root}: codebase_version {self.version!r} is not one of {VERSIONS}")
        self.fps = float(self.info["fps"])
        features: dict[str, Any] = self.info.get("features", {})
        cameras = sorted(k for k, f in features.items() if f.get("dtype") == "video")
        if camera is None and len(cameras) == 1:
            camera = cameras[0]
        if camera not in cameras or not self.info.get("video_path"):
            images = sorted(k for k, f in features.items() if f.get("dtype") == "image")
            raise LeRobotFormatError(
                f"{self.root}: choose the camera with --camera; video keys: {', '.join(cameras) or 'none'}"
                + (f" (image keys {', '.join(images)} are stored as images, which are not read)" if images else "")
            )
        self.camera = camera
        self.poses = poses
        self.elements = [self._element(features, ref) for ref in poses.fields]

    def _element(self, features: dict[str, Any], ref: FieldRef) -> Optional[int]:
        """The vector index ``ref`` names, None for a scalar column."""
        numeric = sorted(k for k, f in features.items() if f.get("dtype") not in ("video", "image", "string"))
        feature = features.get(ref.column)
        if feature is None or ref.column not in numeric:
            raise LeRobotFormatError(f"{self.root}: no numeric feature {ref.column!r}; numeric features: {', '.join(numeric)}")
        size = int(np.prod(feature.get("shape", [1])))
        names = feature.get("names")
        if isinstance(names, dict) and len(names) == 1:
            names = next(iter(names.values()))
        names = [str(n) for n in names] if isinstance(names, list) else []
        if ref.element is None:
            if size != 1:
                raise LeRobotFormatError(
                    f"{ref.column} has {size} elements: name one as {ref.column}[index]" + (f" or {ref.column}[{names[0]}]" if names else "")
                )
            return None
        if ref.element.isdigit() and int(ref.element) < size:
            return int(ref.element)
        if ref.element in names:
            return names.index(ref.element)
        raise LeRobotFormatError(f"{ref}: {ref.column} has {size} elements" + (f" named {', '.join(names)}" if names else " (no names)"))

    def listing(self) -> ClipListing:
        """Every episode as a clip (v2.x from episodes.jsonl, v3.0 from the episodes parquet files)."""
        episodes = self._episodes_v2() if self.version.startswith("v2") else self._episodes_v3()
        return ClipListing(episodes)

    def _episodes_v2(self) -> list["LeRobotEpisode"]:
        try:
            lines = (self.root / "meta" / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
            indices = sorted(int(json.loads(line)["episode_index"]) for line in lines if line.strip())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LeRobotFormatError(f"{self.root}: meta/episodes.jsonl unreadable ({exc})") from exc
        chunk = int(self.info.get("chunks_size", 1000))
        episodes = []
        for index in indices:
            where = {"episode_chunk": index // chunk, "episode_index": index}
            data = format_path(self.root, self.info["data_path"], **where)
            video = format_path(self.root, self.info["video_path"], video_key=self.camera, **where)
            episodes.append(LeRobotEpisode(f"episode_{index:06d}", index, data, video, 0.0, self))
        return episodes

    def _episodes_v3(self) -> list["LeRobotEpisode"]:
        prefix = f"videos/{self.camera}/"
        columns = ("episode_index", "data/chunk_index", "data/file_index", prefix + "chunk_index", prefix + "file_index", prefix + "from_timestamp")
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise LeRobotFormatError(f"{self.root}: no meta/episodes/*/*.parquet")
        _, parquet = pyarrow_modules()
        rows: list[dict[str, Any]] = []
        for path in files:
            try:
                rows.extend(parquet.read_table(path, columns=list(columns)).to_pylist())
            except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise LeRobotFormatError(f"{path}: cannot read {list(columns)} ({exc})") from exc
        episodes = []
        for row in sorted(rows, key=lambda r: r["episode_index"]):
            index = int(row["episode_index"])
            data = format_path(self.root, self.info["data_path"], chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
            video = format_path(
                self.root, self.info["video_path"], video_key=self.camera, chunk_index=row[prefix + "chunk_index"], file_index=row[prefix + "file_index"]
            )
            episodes.append(LeRobotEpisode(f"episode_{index:06d}", index, data, video, float(row[prefix + "from_timestamp"]), self))
        return episodes

    def episode_rows(self, data: Path, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(timestamps [N] in frame order, one [N] array per pose field) of episode ``index``; ClipSkipped when unreadable."""
        compute, _ = pyarrow_modules()
        columns = tuple(dict.fromkeys(("episode_index", "frame_index", "timestamp", *(ref.column for ref in self.poses.fields))))
        try:
            table = read_columns(data, data.stat().st_mtime_ns, columns)
            rows = table.filter(compute.equal(table["episode_index"], index))
        except (OSError, ValueError, KeyError) as exc:
            raise ClipSkipped("unreadable_data", f"{data}: {exc}") from exc
        if rows.num_rows < 2:
            raise ClipSkipped("unreadable_data", f"{data}: {rows.num_rows} row(s) for episode {index}")
        order = np.argsort(rows["frame_index"].to_numpy(), kind="stable")
        values = []
        for ref, element in zip(self.poses.fields, self.elements):
            column = rows[ref.column] if element is None else compute.list_element(rows[ref.column], element)
            values.append(np.asarray(column.to_numpy(zero_copy_only=False), np.float64)[order])
        return np.asarray(rows["timestamp"].to_numpy(), np.float64)[order], values


@dataclass(frozen=True)
class LeRobotEpisode:
    """One episode of a :class:`LeRobotDataset` as an ingest clip."""

    name: str
    index: int
    data: Path
    video: Path
    video_start: float  # the episode's first frame in the (possibly shared) video file
    dataset: LeRobotDataset

    @property
    def source(self) -> str:
        return f"{self.dataset.root} episode {self.index}"

    def load(self, options: IngestOptions) -> LoadedClip:
        t, values = self.dataset.episode_rows(self.data, self.index)
        if self.dataset.poses.pose is not None:
            xy, yaw = np.stack(values[:2], -1), values[2]
        else:
            xy, yaw = integrate_unicycle(t, values[0], values[1])
        if not self.video.is_file():
            raise ClipSkipped("no_video", f"{self.video} is missing")
        rows = increasing_rows(t)
        if rows.size < 2:
            raise ClipSkipped("unreadable_data", f"{self.data}: fewer than 2 rows of episode {self.index} with increasing timestamps")
        tolerance = FRAME_TOLERANCE / self.dataset.fps
        matched: list[int] = []

        def timed(frames: Iterator[tuple[float, av.VideoFrame]]) -> Iterator[tuple[float, np.ndarray]]:
            for i, frame in match_frames(frames, self.video_start + t[rows], tolerance):
                matched.append(i)
                yield t[rows[i]], frame.to_ndarray(format="rgb24")

        try:
            with contextlib.closing(decoded_frames(self.video, self.video_start + t[rows[0]] - tolerance)) as frames:
                video = encode_timed_frames(timed(frames), self.dataset.fps, options.crf)
        except (av.FFmpegError, OSError) as exc:
            raise ClipSkipped("undecodable", f"{self.video}: {exc}") from exc
        skips = {"row_time_order": len(t) - len(rows), "frame_missing": len(rows) - len(matched)}
        # all rows stay poses: align_poses marks the frames around disordered or missing ones
        return LoadedClip(video, Trajectory(t=t, xy=xy, yaw=yaw), "absolute", {k: n for k, n in skips.items() if n})


def increasing_rows(t: np.ndarray) -> np.ndarray:
    """Indices of the rows whose time is finite and later than every earlier row's (the ones a video can show)."""
    latest = np.maximum.accumulate(np.where(np.isfinite(t), t, -np.inf))
    later = np.concatenate([[True], t[1:] > latest[:-1]])
    return np.flatnonzero(np.isfinite(t) & later)


def find_lerobot_episodes(root: Path, camera: Optional[str], poses: PoseFields) -> ClipListing:
    """All episodes of the LeRobot dataset at ``root``; LeRobotFormatError when the dataset cannot be read."""
    pyarrow_modules()  # fail before any work when pyarrow is missing
    return LeRobotDataset(root, camera, poses).listing()
