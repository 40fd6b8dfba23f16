"""End to end ingestion: real mp4s and pose files -> shards, checked member by member."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import encode_indexed_video, frame_with_index, read_frame_index
from datamodules.episode import Trajectory
from datamodules.file_source import find_clips
from datamodules.ingest import IngestOptions, align_poses, drop_short_runs, episode_key, ingest_clips
from datamodules.ingest_summary import IngestSummary
from datamodules.mp4_chunks import chunk_starts
from datamodules.video_decode import decode_video
from s2e.geometry import wrap_angle

REPO = Path(__file__).resolve().parents[1]
NTSC = Fraction(30000, 1001)


def ingest(videos: Path, poses: Path | None, out: Path, options: IngestOptions) -> IngestSummary:
    return ingest_clips(find_clips(videos, poses, options.pose_format), out, options)


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    episodes: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, member = info.name.split(".", 1)
                episodes.setdefault(key, {})[member] = tar.extractfile(info).read()
    return episodes


def pose_fn(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known motion: linear position, yaw sweeping across +-pi (so interpolation must wrap)."""
    return np.stack([2.0 * t, 1.0 - 0.5 * t], -1), wrap_angle(2.6 + 0.4 * t)


def write_csv(path: Path, t: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> None:
    rows = ["t,x,y,yaw,quality"] + [",".join(repr(float(v)) for v in (a, b, c, d)) + ",1" for a, (b, c), d in zip(t, xy, yaw)]
    path.write_text("\n".join(rows) + "\n")


def make_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    videos, poses, out = tmp_path / "videos", tmp_path / "poses", tmp_path / "out"
    videos.mkdir()
    poses.mkdir()
    return videos, poses, out


def test_h264_mp4_is_copied_and_poses_interpolated_at_frame_times(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    mp4 = encode_indexed_video(75, NTSC, bframes=2)
    (videos / "walk.mp4").write_bytes(mp4)
    pose_t = np.arange(0.0, 2.6, 0.1)  # 10 Hz poses, video at 29.97 Hz
    write_csv(poses / "walk.csv", 1000.0 + pose_t, *pose_fn(pose_t))  # relative: first pose = video 0
    options = IngestOptions(pose_format="csv", min_seconds=1.0, embodiment="wheelchair", license="CC-BY-4.0", intrinsics=(100.0, 101.0, 64.0, 48.0))
    summary = ingest(videos, poses, out, options)
    assert [k["key"] for k in summary.kept] == ["walk"] and summary.skipped == []
    episode = read_shards(out)["walk"]
    assert episode["mp4"] == mp4  # byte-for-byte copy, no re-encode
    traj = Trajectory.from_npz_bytes(episode["traj.npz"])
    decoded = decode_video(episode["mp4"], (96, 128), backend="pyav")
    np.testing.assert_allclose(traj.t, decoded.times, atol=1e-9)
    np.testing.assert_allclose(np.diff(traj.t), 1001 / 30000, atol=1e-6)  # B-frames: presentation order
    assert [read_frame_index(f) for f in decoded.frames] == list(range(75))
    want_xy, want_yaw = pose_fn(traj.t)
    np.testing.assert_allclose(traj.xy, want_xy, atol=1e-9)
    np.testing.assert_allclose(wrap_angle(traj.yaw - want_yaw), 0.0, atol=1e-9)
    assert traj.valid.all()
    meta = json.loads(episode["json"])
    assert meta["fps"] == pytest.approx(30000 / 1001)
    assert meta["embodiment"] == "wheelchair" and meta["license"] == "CC-BY-4.0" and meta["scene"] == "walk"
    assert meta["intrinsics"] == {"fx": 100.0, "fy": 101.0, "cx": 64.0, "cy": 48.0}
    assert meta["pose_format"] == "csv" and meta["video_copied"] is True
    assert meta["ingest"]["pose_time"] == "relative" and meta["ingest"]["min_seconds"] == 1.0
    assert summary.hours_kept == pytest.approx(75 * 1001 / 30000 / 3600)


def test_nan_span_and_gap_become_invalid_frames(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    (videos / "clip.mp4").write_bytes(encode_indexed_video(100, 10))  # 0.0 .. 9.9 s
    pose_t = np.concatenate([np.arange(0.0, 5.05, 0.1), np.arange(6.0, 10.0, 0.1)])  # gap 5.0 -> 6.0
    xy, yaw = pose_fn(pose_t)
    nan_rows = (pose_t > 1.95) & (pose_t < 2.45)  # poses at 2.0 .. 2.4 lost by the tracker
    xy[nan_rows] = np.nan
    write_csv(poses / "clip.csv", pose_t, xy, yaw)
    summary = ingest(videos, poses, out, IngestOptions(pose_format="csv", max_gap=0.5, min_seconds=1.0))
    traj = Trajectory.from_npz_bytes(read_shards(out)["clip"]["traj.npz"])
    t = np.round(traj.t, 6)
    expected_invalid = ((t > 1.9) & (t < 2.5)) | ((t > 5.0) & (t < 6.0)) | (t > pose_t[-1] + 1e-3)
    np.testing.assert_array_equal(~traj.valid, expected_invalid)
    want_xy, _ = pose_fn(traj.t)
    np.testing.assert_allclose(traj.xy[traj.valid], want_xy[traj.valid], atol=1e-9)
    assert summary.hours_dropped["nonfinite_pose"] == pytest.approx(5 * 0.1 / 3600)
    assert summary.hours_dropped["gap"] == pytest.approx(9 * 0.1 / 3600)
    assert summary.kept[0]["valid_fraction"] == pytest.approx(1 - 14 / 100)


def test_short_valid_runs_and_duplicate_times_are_dropped():
    frame_t = np.arange(50) / 10.0
    pose_t = np.arange(0.0, 5.0, 0.1)
    xy, yaw = pose_fn(pose_t)
    pose_t[20] = pose_t[19]  # duplicate timestamp at 1.9
    xy[30] = np.nan  # lost pose at 3.0
    aligned = align_poses(Trajectory(pose_t, xy, yaw), frame_t, "absolute", max_gap=0.5)
    reasons = dict(zip(np.round(frame_t, 1), aligned.problem))
    assert reasons[2.0] == "time_order" and reasons[1.9] == "" and reasons[2.1] == ""
    assert reasons[3.0] == "nonfinite_pose" and reasons[2.9] == "" and reasons[3.1] == ""
    drop_short_runs(aligned.problem, 0.1, min_seconds=1.0)
    # 2.1 .. 2.9 is a 9-frame valid run (0.9 s) between two problems: too short
    assert all(reasons_after == "short_run" for reasons_after in aligned.problem[21:30])
    assert (aligned.problem[:20] == "").all() and (aligned.problem[31:] == "").all()


def test_long_clip_is_split_at_keyframes_without_reencoding(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    (videos / "long.mp4").write_bytes(encode_indexed_video(100, NTSC, bframes=2))  # keyframes every 30 frames
    pose_t = np.arange(0.0, 3.45, 0.1)  # covers the last frame (3.30 s)
    xy, yaw = pose_fn(pose_t)
    xy[(pose_t > 1.45) & (pose_t < 1.65)] = np.nan  # invalid span inside the first chunk
    write_csv(poses / "long.csv", pose_t, xy, yaw)
    summary = ingest(videos, poses, out, IngestOptions(pose_format="csv", min_seconds=0.3, max_episode_seconds=2.1))
    episodes = read_shards(out)
    assert sorted(episodes) == ["long-0000", "long-0001"] and summary.clips_kept == 1
    first_frames = []
    for key, episode in sorted(episodes.items()):
        traj = Trajectory.from_npz_bytes(episode["traj.npz"])
        decoded = decode_video(episode["mp4"], (96, 128), backend="pyav")
        np.testing.assert_allclose(traj.t, decoded.times, atol=1e-9)
        indices = [read_frame_index(f) for f in decoded.frames]
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        first_frames.append(indices[0])
        source_t = np.asarray(indices) * 1001 / 30000  # each frame's time in the whole recording
        chunk = json.loads(episode["json"])["chunk"]
        assert chunk["start"] == pytest.approx(source_t[0])
        want_xy, _ = pose_fn(source_t)
        np.testing.assert_allclose(traj.xy[traj.valid], want_xy[traj.valid], atol=1e-9)
        np.testing.assert_array_equal(~traj.valid, (source_t > 1.4 + 1e-9) & (source_t < 1.7 - 1e-9))
    assert first_frames == [0, 60]  # cut at the keyframe of frame 60 (2.002 s <= 2.1 s)
    assert sum(k["frames"] for k in summary.kept) == 100


def test_bad_clips_are_skipped_and_counted(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    (videos / "good.mp4").write_bytes(encode_indexed_video(30, 10))
    (videos / "short.mp4").write_bytes(encode_indexed_video(8, 10))
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (videos / "lonely.mp4").write_bytes(encode_indexed_video(30, 10))
    (videos / "lost.mp4").write_bytes(encode_indexed_video(30, 10))
    pose_t = np.arange(0.0, 3.0, 0.1)
    for stem in ("good", "short", "broken"):
        write_csv(poses / f"{stem}.csv", pose_t, *pose_fn(pose_t))
    xy, yaw = pose_fn(pose_t)
    write_csv(poses / "lost.csv", pose_t, np.full_like(xy, np.nan), yaw)
    (poses / "orphan.csv").write_text("t,x,y,yaw\n0,0,0,0\n")
    summary = ingest(videos, poses, out, IngestOptions(pose_format="csv", min_seconds=2.0))
    assert [k["clip"] for k in summary.kept] == ["good"]
    assert summary.skipped_by_reason() == {"too_short": 1, "undecodable": 1, "no_poses": 1, "no_video": 1, "no_usable_run": 1}
    assert summary.hours_dropped["too_short"] == pytest.approx(0.8 / 3600)
    assert summary.hours_dropped["no_usable_run"] == pytest.approx(3.0 / 3600)
    assert set(read_shards(out)) == {"good"}


def encode_mpeg4(path: Path, num_frames: int, fps: int, start_frame: int = 0) -> None:
    """An MPEG-4 part 2 video in Matroska whose clock starts at ``start_frame / fps`` seconds."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"qscale": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_with_index(i), format="rgb24")
            frame.pts, frame.time_base = start_frame + i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_other_codecs_are_reencoded_to_h264_mp4_with_absolute_time(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    encode_mpeg4(videos / "cam.mkv", 40, 10, start_frame=10)  # the recording's clock starts at 1.0 s
    with av.open(str(videos / "cam.mkv")) as container:
        assert next(container.decode(video=0)).time == pytest.approx(1.0)
    pose_t = np.arange(1.5, 5.5, 0.05)  # absolute: on the video's clock, starting 0.5 s after its first frame
    write_csv(poses / "cam.csv", pose_t, *pose_fn(pose_t))
    ingest(videos, poses, out, IngestOptions(pose_format="csv", pose_time="absolute", min_seconds=1.0))
    episode = read_shards(out)["cam"]
    with av.open(io.BytesIO(episode["mp4"])) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert "mp4" in container.format.name
    decoded = decode_video(episode["mp4"], (96, 128), backend="pyav")
    assert [read_frame_index(f) for f in decoded.frames] == list(range(40))
    traj = Trajectory.from_npz_bytes(episode["traj.npz"])
    np.testing.assert_allclose(traj.t, decoded.times, atol=1e-9)
    np.testing.assert_array_equal(traj.valid, np.round(traj.t, 6) >= 0.5)  # before the first pose: invalid
    want_xy, _ = pose_fn(traj.t + 1.0)
    np.testing.assert_allclose(traj.xy[traj.valid], want_xy[traj.valid], atol=1e-9)
    assert json.loads(episode["json"])["video_copied"] is False


def test_gnm_folders(tmp_path):
    root, out = tmp_path / "gnm", tmp_path / "out"
    for name, frames in (("traj_a", 24), ("traj_b", 6)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(frames):
            Image.fromarray(frame_with_index(i)).save(folder / f"{i}.jpg", quality=95)
        xy, yaw = pose_fn(np.arange(frames) / 4.0)
        (folder / "traj_data.pkl").write_bytes(pickle.dumps({"position": xy, "yaw": yaw}))
    (root / "no_poses").mkdir()
    summary = ingest(root, None, out, IngestOptions(pose_format="gnm", fps=4.0, min_seconds=2.0, scene="campus"))
    assert [k["clip"] for k in summary.kept] == ["traj_a"]
    assert summary.skipped_by_reason() == {"too_short": 1, "no_poses": 1}
    episode = read_shards(out)["traj_a"]
    decoded = decode_video(episode["mp4"], (96, 128), backend="pyav")
    assert [read_frame_index(f) for f in decoded.frames] == list(range(24))
    traj = Trajectory.from_npz_bytes(episode["traj.npz"])
    np.testing.assert_allclose(traj.t, np.arange(24) / 4.0, atol=1e-6)
    np.testing.assert_allclose(traj.xy, pose_fn(np.arange(24) / 4.0)[0], atol=1e-6)
    assert traj.valid.all() and json.loads(episode["json"])["scene"] == "campus"


def test_tool_end_to_end_tum(tmp_path):
    """The command-line tool on TUM camera poses (default camera-SLAM convention), rolling shards by count."""
    videos, poses, out = make_dirs(tmp_path)
    for n in range(3):
        (videos / f"run{n}.mp4").write_bytes(encode_indexed_video(30, 10))
        t = np.arange(0.0, 3.0, 0.1)
        # camera drives forward along its optical axis (+z), camera y points down: up = -y
        lines = [f"{1e9 + ti:.3f} 0 0 {1.5 * ti:.6f} 0 0 0 1" for ti in t]
        (poses / f"run{n}.txt").write_text("# t tx ty tz qx qy qz qw\n" + "\n".join(lines) + "\n")
    cmd = [
        sys.executable,
        "tools/make_shards.py",
        "--videos",
        str(videos),
        "--poses",
        str(poses),
        "--pose-format",
        "tum",
        "--out",
        str(out),
        "--min-seconds",
        "1",
        "--shard-max-count",
        "2",
        "--intrinsics",
        "90,90,64,48",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    assert totals["clips_kept"] == 3 and totals["clips_skipped"] == 0
    assert json.loads((out / "summary.json").read_text())["clips_kept"] == 3
    assert len(list(out.glob("shard-*.tar"))) == 2
    traj = Trajectory.from_npz_bytes(read_shards(out)["run1"]["traj.npz"])
    np.testing.assert_allclose(traj.xy[:, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.diff(traj.xy[:, 0]), 0.15, atol=1e-5)  # moving forward along +x, 1.5 m/s
    np.testing.assert_allclose(traj.yaw, 0.0, atol=1e-9)


def test_tool_help_and_argument_errors(tmp_path):
    help_text = subprocess.run([sys.executable, "tools/make_shards.py", "--help"], cwd=REPO, capture_output=True, text=True).stdout
    assert "restricted unpickler" in help_text and "numpy arrays" in help_text
    result = subprocess.run(
        [sys.executable, "tools/make_shards.py", "--videos", str(tmp_path), "--pose-format", "gnm", "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--fps" in result.stderr


def test_tool_refuses_to_write_over_existing_shards(tmp_path):
    videos, poses, out = make_dirs(tmp_path)
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"an earlier dataset")
    cmd = [sys.executable, "tools/make_shards.py", "--videos", str(videos), "--poses", str(poses), "--pose-format", "csv", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "holds an earlier run (1 finished shard(s), no journal" in result.stderr and "--overwrite" in result.stderr
    assert (out / "shard-000000.tar").read_bytes() == b"an earlier dataset"


def test_episode_keys_are_sanitized_and_unique():
    taken = {"walk_01_v2"}
    assert episode_key("walk.01 v2", taken) == "walk_01_v2_1"
    assert episode_key("ok-name_3", set()) == "ok-name_3"


def test_chunk_starts_are_balanced_and_respect_the_limit():
    assert chunk_starts(np.array([0.0, 1, 2, 3, 4, 5, 5.5]), 2.0) == [0, 2, 4]  # chunks 2, 2, 1.5 s
    assert chunk_starts(np.array([0.0, 1, 2, 3, 4, 5, 6, 6.2]), 3.0) == [0, 2, 4]  # 2, 2, 2.2 s: no 0.2 s tail
    assert chunk_starts(np.array([0.0, 5, 6, 7]), 2.0) == [0, 1, 2]  # a 5 s GOP cannot be cut: one chunk per GOP
    assert chunk_starts(np.array([0.0, 1, 1.5]), 2.0) == [0]  # short video: one chunk
