"""ROS bags -> shards: real ROS 1, ROS 2 sqlite3 and MCAP bags written here with rosbags' own writers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import frame_with_index, read_frame_index
from datamodules.episode import Trajectory
from datamodules.episode_checks import video_problem
from datamodules.ingest import IngestOptions, ingest_clips
from datamodules.rosbag_source import BagTopics, find_bags
from datamodules.video_decode import decode_video
from s2e.geometry import wrap_angle

rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag1 import Writer as Ros1Writer  # noqa: E402
from rosbags.rosbag2 import StoragePlugin  # noqa: E402
from rosbags.rosbag2 import Writer as Ros2Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = 1_700_000_000  # seconds: stamps as a robot clock gives them
TYPES = {"ros1": get_typestore(Stores.ROS1_NOETIC), "ros2": get_typestore(Stores.LATEST)}
OPTIONS = IngestOptions(pose_format="rosbag", up="z", forward="+x", min_seconds=0.5, max_gap=0.5)


def pose_fn(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known planar motion of the robot (t in seconds since BASE)."""
    return np.stack([1.0 * t, 0.2 * t**2], -1), wrap_angle(0.3 * t)


class Msgs:
    """Message constructors for one ROS version's typestore."""

    def __init__(self, version: str) -> None:
        self.version, self.ts = version, TYPES[version]

    def header(self, stamp: float) -> Any:
        sec, nanosec = int(stamp), int(round((stamp - int(stamp)) * 1e9))
        time = self.ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        extra = {"seq": 0} if self.version == "ros1" else {}
        return self.ts.types["std_msgs/msg/Header"](stamp=time, frame_id="base", **extra)

    def jpeg(self, stamp: float, rgb: np.ndarray) -> Any:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
        return self.ts.types["sensor_msgs/msg/CompressedImage"](header=self.header(stamp), format="jpeg", data=np.frombuffer(buf.getvalue(), np.uint8))

    def raw(self, stamp: float, rgb: np.ndarray, encoding: str = "bgr8") -> Any:
        data = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
        h, w = rgb.shape[:2]
        return self.ts.types["sensor_msgs/msg/Image"](
            header=self.header(stamp), height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3, data=np.ascontiguousarray(data).reshape(-1)
        )

    def pose(self, xy: np.ndarray, yaw: float) -> Any:
        point = self.ts.types["geometry_msgs/msg/Point"](x=float(xy[0]), y=float(xy[1]), z=0.4)
        quat = self.ts.types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=float(np.sin(yaw / 2)), w=float(np.cos(yaw / 2)))
        return self.ts.types["geometry_msgs/msg/Pose"](position=point, orientation=quat)

    def odometry(self, stamp: float, xy: np.ndarray, yaw: float) -> Any:
        vec = self.ts.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
        twist = self.ts.types["geometry_msgs/msg/TwistWithCovariance"](
            twist=self.ts.types["geometry_msgs/msg/Twist"](linear=vec, angular=vec), covariance=np.zeros(36)
        )
        pose = self.ts.types["geometry_msgs/msg/PoseWithCovariance"](pose=self.pose(xy, yaw), covariance=np.zeros(36))
        return self.ts.types["nav_msgs/msg/Odometry"](header=self.header(stamp), child_frame_id="base", pose=pose, twist=twist)

    def pose_stamped(self, stamp: float, xy: np.ndarray, yaw: float) -> Any:
        return self.ts.types["geometry_msgs/msg/PoseStamped"](header=self.header(stamp), pose=self.pose(xy, yaw))


def write_bag(path: Path, version: str, messages: list[tuple[str, float, Any]], storage: str = "sqlite3") -> Path:
    """Write (topic, receive time s, message) in the given order with rosbags' ROS 1 or ROS 2 writer."""
    ts = TYPES[version]
    path.parent.mkdir(parents=True, exist_ok=True)
    if version == "ros1":
        writer = Ros1Writer(path)
    else:
        writer = Ros2Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    with writer:
        connections: dict[str, Any] = {}
        for topic, receive, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
            raw = ts.serialize_ros1(msg, msg.__msgtype__) if version == "ros1" else ts.serialize_cdr(msg, msg.__msgtype__)
            writer.write(connections[topic], int(round(receive * 1e9)), raw)
    return path


def drive(msgs: Msgs, seconds: float, image: str = "jpeg", pose: str = "odometry", frames: list[np.ndarray] | None = None) -> list[tuple[str, float, Any]]:
    """10 Hz camera (frame i shows its index) and 20 Hz poses over ``seconds``, each received 5 ms after its stamp.

    Poses are stamped 30 ms before the frames (-0.03, 0.02, 0.07, ...), so every frame lies strictly
    between two poses and a problem with one pose shows on the frame next to it.
    """
    messages = []
    for i in range(int(round(seconds * 10))):
        t = 0.1 * i
        rgb = frames[i] if frames is not None else frame_with_index(i)
        messages.append(("/cam", BASE + t + 0.005, getattr(msgs, image)(BASE + t, rgb)))
    for j in range(int(round(seconds * 20)) + 2):
        t = 0.05 * j - 0.03
        xy, yaw = pose_fn(np.array([t]))
        messages.append(("/odom", BASE + t + 0.005, getattr(msgs, pose)(BASE + t, xy[0], float(yaw[0]))))
    return sorted(messages, key=lambda m: m[1])


def shard_episode(out: Path) -> tuple[Trajectory, bytes]:
    with tarfile.open(next(out.glob("shard-*.tar"))) as tar:
        members = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar}
    return Trajectory.from_npz_bytes(members["traj.npz"]), members["mp4"]


def test_ros1_bag_with_dropped_odometry_and_out_of_order_stamps(tmp_path):
    msgs = Msgs("ros1")
    messages = drive(msgs, 4.0)
    # dropped odometry: nothing stamped between 2.0 s and 2.8 s (poses at 1.97 and 2.82: a gap > --max-gap 0.5)
    messages = [m for m in messages if not (m[0] == "/odom" and 2.0 < m[1] - BASE - 0.005 < 2.8)]
    # an odometry message stamped 0.9 s, received right after the one stamped 1.07 s (out of order)
    xy, yaw = pose_fn(np.array([0.9]))
    messages.append(("/odom", BASE + 1.076, msgs.odometry(BASE + 0.9, xy[0], float(yaw[0]))))
    # a camera frame stamped 0.55 s arriving after the 0.8 s frame: it cannot be placed in the video
    messages.append(("/cam", BASE + 0.81, msgs.jpeg(BASE + 0.55, frame_with_index(99))))
    # camera frame 25 never arrived: a hole in the video
    messages = [m for m in messages if not (m[0] == "/cam" and abs(m[1] - (BASE + 2.505)) < 1e-6)]
    write_bag(tmp_path / "bags" / "walk.bag", "ros1", sorted(messages, key=lambda m: m[1]))

    summary = ingest_clips(find_bags(tmp_path / "bags", BagTopics("/cam", "/odom")), tmp_path / "out", OPTIONS)
    assert summary.skipped == [] and [k["key"] for k in summary.kept] == ["walk"]
    assert summary.kept[0]["message_skips"] == {"image_time_order": 1}
    traj, mp4 = shard_episode(tmp_path / "out")
    expected = [i for i in range(40) if i != 25]
    decoded = decode_video(mp4, (96, 128), backend="pyav")
    assert [read_frame_index(f) for f in decoded.frames] == expected  # encoded once, in stamp order, frame 99 dropped
    np.testing.assert_allclose(traj.t, 0.1 * np.asarray(expected), atol=2e-5)  # the hole at 2.5 s stays a hole
    assert video_problem(decode_video(mp4, (48, 64), backend="decord").times, traj, 1e-3) is None  # training's reader agrees
    t = np.round(traj.t, 2)
    gap = (t >= 2.0) & (t <= 2.8)
    order = t == 1.1  # between the usable poses around the out-of-order one (1.07 and 1.12)
    np.testing.assert_array_equal(~traj.valid, gap | order)
    want_xy, want_yaw = pose_fn(traj.t)
    np.testing.assert_allclose(traj.xy[traj.valid], want_xy[traj.valid], atol=2e-3)  # linear interpolation of a parabola at 20 Hz
    np.testing.assert_allclose(wrap_angle(traj.yaw - want_yaw)[traj.valid], 0.0, atol=1e-6)
    assert summary.hours_dropped == pytest.approx({"gap": 8 * 0.1 / 3600, "time_order": 0.1 / 3600})


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_ros2_bag_with_raw_bgr_images_and_pose_stamped(tmp_path, storage):
    msgs = Msgs("ros2")
    frames = [frame_with_index(i) for i in range(20)]
    for frame in frames:
        frame[60:, :24] = (255, 0, 0)  # a red patch: survives only if bgr8 is swapped to RGB
    bag = write_bag(tmp_path / "run2", "ros2", drive(msgs, 2.0, image="raw", pose="pose_stamped", frames=frames), storage)
    listing = find_bags(tmp_path, BagTopics("/cam", "/odom"))
    assert [(c.name, c.path) for c in listing.clips] == [("run2", bag)]  # the bag folder, not its storage file
    summary = ingest_clips(listing, tmp_path / "out", OPTIONS)
    assert summary.skipped == [] and summary.messages_skipped == {}
    traj, mp4 = shard_episode(tmp_path / "out")
    decoded = decode_video(mp4, (96, 128), backend="pyav")
    assert [read_frame_index(f) for f in decoded.frames] == list(range(20))
    patch = decoded.frames[0][70:, 4:18].reshape(-1, 3).mean(0)
    assert patch[0] > 200 and patch[2] < 60
    assert traj.valid.all()
    np.testing.assert_allclose(traj.xy, pose_fn(traj.t)[0], atol=2e-3)


def test_bad_bags_are_counted_skips_with_reasons_and_the_good_one_is_kept(tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    ros1, ros2 = Msgs("ros1"), Msgs("ros2")
    write_bag(bags / "good.bag", "ros1", drive(ros1, 1.5))
    write_bag(bags / "no_odom", "ros2", [m for m in drive(ros2, 1.5) if m[0] == "/cam"], "mcap")
    strings = [("/odom", BASE + 0.1 * i, ros2.ts.types["std_msgs/msg/String"](data="hello")) for i in range(3)]
    write_bag(bags / "wrong_type", "ros2", [m for m in drive(ros2, 1.5) if m[0] == "/cam"] + strings)
    for name, version, storage in (("cut.bag", "ros1", ""), ("cut", "ros2", "mcap")):
        path = write_bag(tmp_path / name, version, drive(Msgs(version), 1.5), storage or "sqlite3")
        data_file = path if path.is_file() else next(path.glob("*.mcap"))
        target = bags / (name if path.is_file() else "cut.mcap")  # a bare .mcap file, cut in the middle
        target.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    os.mkfifo(bags / "pipe.bag")
    result = subprocess.run(
        [
            sys.executable,
            "tools/make_shards.py",
            "--from",
            "rosbag",
            "--bags",
            str(bags),
            "--image-topic",
            "/cam",
            "--odom-topic",
            "/odom",
            "--out",
            str(tmp_path / "out"),
            "--min-seconds",
            "0.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [k["key"] for k in summary["kept"]] == ["good"]
    reasons = {s["clip"]: (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert {clip: reason for clip, (reason, _) in reasons.items()} == {
        "cut.bag": "unreadable_bag",
        "cut.mcap": "unreadable_bag",
        "no_odom": "missing_topic",
        "pipe": "not_regular_file",
        "wrong_type": "unknown_message_type",
    }
    assert "/odom is not in the bag; it has /cam (sensor_msgs/msg/CompressedImage, 15 msgs)" in reasons["no_odom"][1]
    assert "std_msgs/msg/String" in reasons["wrong_type"][1] and "reindex" in reasons["cut.bag"][1]
    assert "not in the bag" in result.stdout  # the progress line shows the topics found as it goes


def test_zero_header_stamps_need_receive_time(tmp_path):
    msgs = Msgs("ros2")
    unstamped = []
    for topic, receive, msg in drive(msgs, 1.5):
        msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
        unstamped.append((topic, receive, msg))
    write_bag(tmp_path / "bags" / "run", "ros2", unstamped)
    header = ingest_clips(find_bags(tmp_path / "bags", BagTopics("/cam", "/odom")), tmp_path / "out1", OPTIONS)
    assert header.skipped_by_reason() == {"no_frames": 1} and "zero_stamp" in header.skipped[0]["detail"]
    receive = ingest_clips(find_bags(tmp_path / "bags", BagTopics("/cam", "/odom", time="receive")), tmp_path / "out2", OPTIONS)
    assert receive.clips_kept == 1 and receive.kept[0]["valid_fraction"] == 1.0
