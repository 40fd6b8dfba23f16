"""Recordings from ROS bags: ROS 1 ``.bag``, ROS 2 sqlite3 (``.db3``) and MCAP, one bag = one clip.

Read with the pure-Python ``rosbags`` library (``pip install rosbags``), imported only when bags
are read. One pass over a bag's image and pose topics, in recorded order:

- images (``sensor_msgs/Image`` in rgb8 / bgr8 / rgba8 / bgra8 / mono8, or
  ``sensor_msgs/CompressedImage`` JPEG / PNG) stream into the H.264 encoder once, each frame
  stamped with its time (:func:`datamodules.ingest_video.encode_timed_frames`), so dropped camera
  messages stay visible as holes in the video;
- poses (``nav_msgs/Odometry``, ``geometry_msgs/PoseStamped`` or ``PoseWithCovarianceStamped``)
  are projected to the ground plane (``--up z --forward +x`` for REP-103 odometry) and then
  aligned to the frames on the same clock exactly like pose files: gaps longer than ``max_gap``
  and out-of-order stamps make the frames they cover invalid.

Times are the messages' header stamps (``time="header"``), or the time the recorder received them
(``"receive"``) for publishers that leave stamps at zero. An image whose stamp is not later than
the previous image's cannot be placed in a video and is dropped; like every message that cannot
be used, it is counted per bag by reason (see :data:`MESSAGE_SKIP_REASONS`). Whole bags are
skipped with a reason when a topic is missing (the detail lists the topics the bag has), carries
an unknown message type, or the bag cannot be read (truncated: repair it first).
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from datamodules.episode import Trajectory
from datamodules.file_source import regular_file_problem
from datamodules.ingest import ClipListing, IngestOptions, LoadedClip
from datamodules.ingest_video import ClipSkipped, encode_timed_frames
from datamodules.pose_formats import GroundFrame

BAG_SUFFIXES = (".bag", ".db3", ".mcap")
BAG_TIMES = ("header", "receive")
IMAGE_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")
#: sensor_msgs/Image encodings read: channels, and the channel order that gives RGB.
RAW_ENCODINGS = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]), "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0]), "mono8": (1, [0, 0, 0])}
MESSAGE_SKIP_REASONS = (
    "undeserializable",  # the message bytes do not decode as their declared type
    "zero_stamp",  # header stamp unset (0): use --bag-time receive for such publishers
    "image_time_order",  # image stamp not later than the previous image's
    "unsupported_encoding",  # raw encodings other than RAW_ENCODINGS (bayer, 16-bit, depth), compressedDepth
    "undecodable_image",  # JPEG/PNG that does not decode, or raw data shorter than height x step
    "image_size_changed",  # frame size differs from the bag's first image
)
REINDEX_HINT = (
    " (a bag cut short when recording stopped must be repaired first: `rosbag reindex` for ROS 1, `ros2 bag reindex` for sqlite3, `mcap recover` for MCAP)"
)


class FrameSkipped(Exception):
    """One image message that gives no frame; ``reason`` is one of :data:`MESSAGE_SKIP_REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BagTopics:
    """Which topics hold the camera and the poses, and which clock stamps them."""

    image: str
    pose: str
    time: str = "header"

    def __post_init__(self) -> None:
        if self.time not in BAG_TIMES:
            raise ValueError(f"bag time must be one of {BAG_TIMES}, got {self.time!r}")


def rosbags_reader() -> tuple[Any, Any]:
    """``(AnyReader, fallback typestore)``, or an ImportError saying what to install."""
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise ImportError("reading ROS bags needs the rosbags package: pip install rosbags") from exc
    return AnyReader, get_typestore(Stores.LATEST)


def image_rgb(message: Any) -> np.ndarray:
    """An HxWx3 uint8 RGB frame from a sensor_msgs Image or CompressedImage, or FrameSkipped."""
    if message.__msgtype__ == "sensor_msgs/msg/CompressedImage":
        if "compresseddepth" in message.format.lower():
            raise FrameSkipped("unsupported_encoding")
        try:
            with Image.open(io.BytesIO(bytes(message.data))) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise FrameSkipped("undecodable_image") from exc
    layout = RAW_ENCODINGS.get(message.encoding.lower())
    if layout is None:
        raise FrameSkipped("unsupported_encoding")
    channels, order = layout
    height, width, step = int(message.height), int(message.width), int(message.step)
    data = np.asarray(message.data, np.uint8)
    if width == 0 or step < width * channels or data.size < height * step:
        raise FrameSkipped("undecodable_image")
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    return np.ascontiguousarray(rows.reshape(height, width, channels)[:, :, order])


@dataclass
class PoseLog:
    """Pose messages as they arrive (stamp, position, orientation), projected to the ground at the end."""

    t: list[float] = field(default_factory=list)
    position: list[tuple[float, float, float]] = field(default_factory=list)
    orientation: list[tuple[float, float, float, float]] = field(default_factory=list)

    def add(self, stamp: float, message: Any) -> None:
        pose = message.pose if message.__msgtype__ == "geometry_msgs/msg/PoseStamped" else message.pose.pose
        self.t.append(stamp)
        self.position.append((pose.position.x, pose.position.y, pose.position.z))
        self.orientation.append((pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w))

    def trajectory(self, frame: GroundFrame) -> Trajectory:
        xy, yaw = frame.project(np.asarray(self.position, np.float64), np.asarray(self.orientation, np.float64))
        return Trajectory(t=np.asarray(self.t, np.float64), xy=xy, yaw=yaw)


def topics_found(reader: Any) -> str:
    """``/a (type, N msgs), ...``: what a bag holds, for errors about missing topics."""
    listed = [f"{name} ({info.msgtype}, {info.msgcount} msgs)" for name, info in sorted(reader.topics.items())]
    return ", ".join(listed) or "no topics"


def bag_messages(reader: Any, connections: list[Any], counts: Counter[str]) -> Iterator[tuple[str, int, Any]]:
    """(topic, receive time in ns, message) in recorded order; undecodable messages are counted and skipped.

    Any failure of the reader itself (a damaged or truncated file surfaces as many exception types
    from rosbags and its storage back-ends) ends the bag as ClipSkipped("unreadable_bag").
    """
    stream = reader.messages(connections=connections)
    while True:
        try:
            item = next(stream, None)
        except Exception as exc:  # noqa: BLE001 - see the docstring; only the reader's own call is guarded
            raise ClipSkipped("unreadable_bag", f"{type(exc).__name__}: {exc}{REINDEX_HINT}") from exc
        if item is None:
            return
        connection, receive_ns, raw = item
        try:
            message = reader.deserialize(raw, connection.msgtype)
        except Exception:  # noqa: BLE001 - rosbags raises its own and struct/Unicode errors on bad bytes
            counts["undeserializable"] += 1
            continue
        yield connection.topic, receive_ns, message


@dataclass(frozen=True)
class RosBag:
    """One bag (a ``.bag`` / ``.db3`` / ``.mcap`` file or a ROS 2 bag folder) as an ingest clip."""

    name: str
    path: Path
    topics: BagTopics

    @property
    def source(self) -> str:
        return str(self.path)

    def load(self, options: IngestOptions) -> LoadedClip:
        any_reader, typestore = rosbags_reader()
        try:
            reader = any_reader([self.path], default_typestore=typestore)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags' many error types for damaged files
            raise ClipSkipped("unreadable_bag", f"{type(exc).__name__}: {exc}{REINDEX_HINT}") from exc
        try:
            return self._read(reader, options)
        finally:
            with contextlib.suppress(Exception):  # closing a damaged bag may fail again; the skip says why
                reader.close()

    def _connections(self, reader: Any, topic: str, types: tuple[str, ...]) -> list[Any]:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ClipSkipped("missing_topic", f"{topic} is not in the bag; it has {topics_found(reader)}")
        unknown = sorted({c.msgtype for c in connections} - set(types))
        if unknown:
            raise ClipSkipped("unknown_message_type", f"{topic} carries {', '.join(unknown)}; readable types: {', '.join(types)}")
        return connections

    def _stamp(self, message: Any, receive_ns: int) -> float | None:
        if self.topics.time == "receive":
            return receive_ns * 1e-9
        stamp = message.header.stamp
        return stamp.sec + stamp.nanosec * 1e-9 if (stamp.sec or stamp.nanosec) else None

    def _frames(self, messages: Iterator[tuple[str, int, Any]], poses: PoseLog, counts: Counter[str]) -> Iterator[tuple[float, np.ndarray]]:
        """The bag's usable (time, RGB) frames; pose messages met on the way go to ``poses``."""
        shape, last = None, -np.inf
        for topic, receive_ns, message in messages:
            stamp = self._stamp(message, receive_ns)
            if stamp is None:
                counts["zero_stamp"] += 1
            elif topic == self.topics.pose:
                poses.add(stamp, message)
            elif stamp <= last:
                counts["image_time_order"] += 1
            else:
                try:
                    rgb = image_rgb(message)
                except FrameSkipped as skip:
                    counts[skip.reason] += 1
                    continue
                if shape is not None and rgb.shape != shape:
                    counts["image_size_changed"] += 1
                    continue
                shape, last = rgb.shape, stamp
                yield stamp, rgb

    def _read(self, reader: Any, options: IngestOptions) -> LoadedClip:
        images = self._connections(reader, self.topics.image, IMAGE_TYPES)
        pose_connections = self._connections(reader, self.topics.pose, POSE_TYPES)
        seconds = reader.duration * 1e-9
        nominal_fps = float(np.clip(reader.topics[self.topics.image].msgcount / seconds, 1.0, 240.0)) if seconds > 0 else 30.0
        counts: Counter[str] = Counter()
        poses = PoseLog()
        try:
            video = encode_timed_frames(self._frames(bag_messages(reader, images + pose_connections, counts), poses, counts), nominal_fps, options.crf)
        except ClipSkipped as skip:
            if skip.reason == "no_frames":
                raise ClipSkipped("no_frames", f"{skip.detail} on {self.topics.image}; messages skipped: {dict(counts) or 'none'}") from skip
            raise
        if len(poses.t) < 2:
            raise ClipSkipped("no_poses", f"{len(poses.t)} usable message(s) on {self.topics.pose}; messages skipped: {dict(counts) or 'none'}", video.seconds)
        traj = poses.trajectory(GroundFrame(options.up, options.forward))
        return LoadedClip(video, traj, "absolute", dict(sorted(counts.items())))


def _bag_paths(folder: Path) -> Iterator[Path]:
    """Bags under ``folder``: ROS 2 bag folders (with metadata.yaml) whole, and bag files elsewhere."""
    if (folder / "metadata.yaml").is_file():
        yield folder
        return
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            yield from _bag_paths(entry)
        elif entry.suffix.lower() in BAG_SUFFIXES:
            yield entry


def find_bags(root: Path, topics: BagTopics) -> ClipListing:
    """Every bag under ``root`` (or ``root`` itself when it is a bag) as a clip named by its relative path.

    Names drop a file's suffix unless two bags would share the name (``run.bag`` and ``run.mcap``).
    """
    rosbags_reader()  # fail before any work when rosbags is missing
    root = Path(root)
    paths = [root] if root.is_file() or (root / "metadata.yaml").is_file() else list(_bag_paths(root))
    listing = ClipListing([])
    names = [p.relative_to(root).as_posix() if p != root else p.name for p in paths]
    stems = [n[: -len(p.suffix)] if p.suffix and not p.is_dir() else n for n, p in zip(names, paths)]
    clips = []
    for path, name, stem in zip(paths, names, stems):
        clip_name = stem if stems.count(stem) == 1 else name
        problem = regular_file_problem(path) if not path.is_dir() else None
        if problem:
            listing.skipped.append({"clip": clip_name, "reason": "not_regular_file", "detail": problem})
        else:
            clips.append(RosBag(clip_name, path, topics))
    listing.clips = clips
    return listing
