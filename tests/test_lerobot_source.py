"""LeRobot datasets -> shards, on fixtures written here in the published v2.1 and v3.0 layouts
(pyarrow parquet, AV1 mp4 encoded with PyAV as LeRobot does)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import frame_with_index, read_frame_index
from datamodules.episode import Trajectory
from datamodules.ingest import IngestOptions, ingest_clips
from datamodules.lerobot_source import LeRobotFormatError, PoseFields, find_lerobot_episodes, integrate_unicycle
from datamodules.video_decode import decode_video
from s2e.geometry import wrap_angle

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
FPS = 10
CAMERA = "observation.images.front"
OPTIONS = IngestOptions(pose_format="lerobot", min_seconds=0.5)
FEATURES = {
    CAMERA: {"dtype": "video", "shape": [96, 128, 3], "names": ["height", "width", "channels"], "info": {"video.fps": float(FPS), "video.codec": "av1"}},
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "theta"]},
    "action": {"dtype": "float32", "shape": [2], "names": {"axes": ["linear", "angular"]}},
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def write_av1(path: Path, first: int, count: int) -> None:
    """AV1 mp4 of frames showing indices first .. first+count-1, keyframe every 2 frames (LeRobot's default g=2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libsvtav1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"g": "2", "crf": "30", "preset": "12"}
        for i in range(first, first + count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_with_index(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def pose_fn(t: np.ndarray, episode: int) -> np.ndarray:
    """x, y, theta of a robot's odometry (different per episode)."""
    return np.stack([0.8 * t + episode, 0.1 * t**2, wrap_angle(0.5 * t - episode)], -1)


def frames_table(episode: int, start_index: int, length: int, fixed: bool, velocity: tuple[float, float]) -> pa.Table:
    t = np.arange(length) / FPS
    state = pose_fn(t, episode).astype(np.float32)
    action = np.tile(np.asarray(velocity, np.float32), (length, 1))
    list_type = pa.list_(pa.float32(), 3) if fixed else pa.list_(pa.float32())
    return pa.table(
        {
            "observation.state": pa.array(state.tolist(), type=list_type),
            "action": pa.array(action.tolist(), type=pa.list_(pa.float32(), 2) if fixed else pa.list_(pa.float32())),
            "timestamp": pa.array(t.astype(np.float32)),
            "frame_index": pa.array(np.arange(length)),
            "episode_index": pa.array(np.full(length, episode)),
            "index": pa.array(start_index + np.arange(length)),
            "task_index": pa.array(np.zeros(length, np.int64)),
        }
    )


def info(version: str, episodes: int, frames: int) -> dict:
    layout = {
        "v2.1": {
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        },
        "v3.0": {
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
        },
    }[version]
    return {
        "codebase_version": version,
        "robot_type": "wheeled",
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{episodes}"},
        "features": FEATURES,
        **layout,
    }


def write_v21(root: Path, lengths: list[int], video_lengths: list[int]) -> None:
    """v2.1: one parquet and one mp4 per episode, episodes listed in meta/episodes.jsonl."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info("v2.1", len(lengths), sum(lengths))))
    (root / "meta" / "episodes.jsonl").write_text(
        "".join(json.dumps({"episode_index": e, "tasks": ["drive"], "length": n}) + "\n" for e, n in enumerate(lengths))
    )
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "drive"}) + "\n")
    start = 0
    for episode, (length, shown) in enumerate(zip(lengths, video_lengths)):
        path = root / f"data/chunk-000/episode_{episode:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frames_table(episode, start, length, fixed=False, velocity=(1.0, 0.0)), path)
        write_av1(root / f"videos/chunk-000/{CAMERA}/episode_{episode:06d}.mp4", start, shown)
        start += length


def write_v30(root: Path, lengths: list[int], velocities: list[tuple[float, float]]) -> pa.Table:
    """v3.0: all episodes in one data file and one video file, located by meta/episodes/chunk-000/file-000.parquet."""
    tables, rows, start = [], [], 0
    for episode, (length, velocity) in enumerate(zip(lengths, velocities)):
        tables.append(frames_table(episode, start, length, fixed=True, velocity=velocity))
        rows.append(
            {
                "episode_index": episode,
                "tasks": ["drive"],
                "length": length,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
                f"videos/{CAMERA}/chunk_index": 0,
                f"videos/{CAMERA}/file_index": 0,
                f"videos/{CAMERA}/from_timestamp": start / FPS,
                f"videos/{CAMERA}/to_timestamp": (start + length) / FPS,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
        )
        start += length
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info("v3.0", len(lengths), start)))
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["drive"]}), root / "meta/tasks.parquet")
    data = pa.concat_tables(tables)
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(data, root / "data/chunk-000/file-000.parquet")
    write_av1(root / f"videos/{CAMERA}/chunk-000/file-000.mp4", 0, start)
    return data


def read_shards(out: Path) -> dict[str, tuple[Trajectory, np.ndarray, dict]]:
    episodes = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name in members:
            if name.endswith(".mp4"):
                key = name[:-4]
                with av.open(io.BytesIO(members[name])) as container:
                    assert container.streams.video[0].codec_context.name == "h264"
                frames = decode_video(members[name], (96, 128), backend="pyav").frames
                episodes[key] = (
                    Trajectory.from_npz_bytes(members[key + ".traj.npz"]),
                    np.asarray([read_frame_index(f) for f in frames]),
                    json.loads(members[key + ".json"]),
                )
    return episodes


def test_v21_av1_episodes_with_odometry_state_columns(tmp_path):
    root = tmp_path / "ds"
    write_v21(root, lengths=[30, 25], video_lengths=[30, 22])  # episode 1's video lost its last 3 frames
    listing = find_lerobot_episodes(root, None, PoseFields.parse("observation.state[x],observation.state[1],observation.state[theta]", None))
    summary = ingest_clips(listing, tmp_path / "out", OPTIONS)
    assert summary.skipped == [] and sorted(k["key"] for k in summary.kept) == ["episode_000000", "episode_000001"]
    assert summary.messages_skipped == {"frame_missing": 3}
    episodes = read_shards(tmp_path / "out")
    for episode, (first, count) in enumerate([(0, 30), (30, 22)]):
        traj, shown, meta = episodes[f"episode_{episode:06d}"]
        assert shown.tolist() == list(range(first, first + count))  # AV1 decoded, re-encoded once to H.264
        np.testing.assert_allclose(traj.t, np.arange(count) / FPS, atol=2e-5)
        want = pose_fn(traj.t, episode)
        np.testing.assert_allclose(traj.xy, want[:, :2], atol=1e-5)
        np.testing.assert_allclose(wrap_angle(traj.yaw - want[:, 2]), 0.0, atol=1e-5)
        assert traj.valid.all() and meta["pose_format"] == "lerobot" and meta["fps"] == pytest.approx(FPS)


def test_v30_shared_files_and_velocities_integrated_like_frodobots(tmp_path):
    root = tmp_path / "ds"
    velocities = [(1.0, 0.0), (0.8, 0.4), (0.5, -0.3)]
    write_v30(root, lengths=[20, 30, 25], velocities=velocities)
    # one velocity row of episode 2 was not logged
    data = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pylist()
    data[50 + 10]["action"] = [float("nan"), float("nan")]
    pq.write_table(pa.Table.from_pylist(data, schema=pq.read_schema(root / "data/chunk-000/file-000.parquet")), root / "data/chunk-000/file-000.parquet")
    listing = find_lerobot_episodes(root, CAMERA, PoseFields.parse(None, "action[linear],action[angular]"))
    summary = ingest_clips(listing, tmp_path / "out", OPTIONS)
    assert summary.skipped == [] and summary.clips_kept == 3
    episodes = read_shards(tmp_path / "out")
    for episode, (first, count) in enumerate([(0, 20), (20, 30), (50, 25)]):
        traj, shown, _ = episodes[f"episode_{episode:06d}"]
        assert shown.tolist() == list(range(first, first + count))  # each episode's own frames from the shared file
        v, omega = velocities[episode]
        yaw = omega * traj.t
        if omega:
            want = np.stack([v / omega * np.sin(yaw), v / omega * (1 - np.cos(yaw))], -1)  # the exact arc
        else:
            want = np.stack([v * traj.t, 0 * traj.t], -1)
        expected_invalid = (np.arange(count) == 11) if episode == 2 else np.zeros(count, bool)
        np.testing.assert_array_equal(~traj.valid, expected_invalid)  # the frame after the unknown step
        if episode < 2:
            np.testing.assert_allclose(traj.xy, want, atol=1e-5)
            np.testing.assert_allclose(wrap_angle(traj.yaw - yaw), 0.0, atol=1e-6)
        else:  # after the unknown step the path is only known up to where it was: compare shapes
            np.testing.assert_allclose(traj.xy[:11], want[:11], atol=1e-5)
            step = np.diff(traj.xy[12:], axis=0)
            np.testing.assert_allclose(np.linalg.norm(step, axis=1), v / FPS * np.sinc(omega / FPS / (2 * np.pi)), atol=1e-5)


def test_integrate_unicycle_marks_the_pose_after_an_unknown_step():
    t = np.arange(5) / 10.0
    xy, yaw = integrate_unicycle(t, np.array([1.0, np.nan, 1.0, 1.0, 1.0]), np.zeros(5))
    assert np.isnan(xy[2]).all() and np.isnan(yaw[2])
    np.testing.assert_allclose(xy[[0, 1, 3, 4], 0], [0.0, 0.1, 0.2, 0.3])  # the unknown step adds nothing


def test_dataset_errors_name_what_exists(tmp_path):
    root = tmp_path / "ds"
    write_v21(root, lengths=[12], video_lengths=[12])
    fields = PoseFields.parse("observation.state[x],observation.state[y],observation.state[theta]", None)
    with pytest.raises(LeRobotFormatError, match=rf"video keys: {CAMERA}"):
        find_lerobot_episodes(root, "observation.images.wrist", fields)
    with pytest.raises(LeRobotFormatError, match=r"no numeric feature 'odom'; numeric features: action, episode_index"):
        find_lerobot_episodes(root, None, PoseFields.parse("odom[0],odom[1],odom[2]", None))
    with pytest.raises(LeRobotFormatError, match=r"observation.state\[z\]: observation.state has 3 elements named x, y, theta"):
        find_lerobot_episodes(root, None, PoseFields.parse("observation.state[x],observation.state[y],observation.state[z]", None))
    with pytest.raises(LeRobotFormatError, match="exactly one"):
        PoseFields.parse("a,b,c", "v,w")
    result = subprocess.run(
        [sys.executable, "tools/make_shards.py", "--from", "lerobot", "--dataset", str(tmp_path), "--pose-fields", "a,b,c", "--out", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not a LeRobot dataset: meta/info.json unreadable" in result.stderr
