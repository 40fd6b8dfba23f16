"""compute_anchors (tools/compute_anchors.py) on real shards: anchors separate straight/left/right and ignore speed."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import curved_trajectory, encode_indexed_video
from datamodules.episode import Trajectory
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import WindowConfig
from s2e.anchors import Anchors
from s2e.scripts import compute_anchors
from s2e.timing import TimingSpec

FPS = 10
N = 60


def _straight(speed: float) -> Trajectory:
    t = np.arange(N) / FPS
    return Trajectory(t=t, xy=np.stack([2.0 + speed * t, np.full(N, -1.0)], -1), yaw=np.zeros(N))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("anchor_shards")
    video = encode_indexed_video(N, FPS, height=32, width=48)
    episodes = {
        "straight_slow": _straight(0.5),
        "straight_fast": _straight(2.0),
        "left_slow": curved_trajectory(N, FPS, speed=0.6, turn_rate=0.5),
        "left_fast": curved_trajectory(N, FPS, speed=1.8, turn_rate=0.5),
        "right_slow": curved_trajectory(N, FPS, speed=0.6, turn_rate=-0.5),
        "right_fast": curved_trajectory(N, FPS, speed=1.8, turn_rate=-0.5),
    }
    with EpisodeShardWriter(root, max_count=3) as writer:
        for key, traj in episodes.items():
            writer.write(key, video, traj, {"fps": FPS})
    with tarfile.open(root / "shard-000002.tar", "w") as tar:  # an episode whose poses are unreadable
        for name, data in (("junk.mp4", video), ("junk.traj.npz", b"not an npz"), ("junk.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def test_anchors_separate_turns_and_are_speed_invariant(shards: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    out = tmp_path / "out" / "anchors.npz"
    summary = compute_anchors.run(["--shards", str(shards / "shard-{000000..000002}.tar"), "--num-anchors", "3", "--out", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert summary["episodes"] == 6 and summary["skipped"] == {"bad_trajectory": 1}
    # 60 poses at 10 fps: now frames 8..29 of each episode
    assert summary["trajectories"] == 6 * 22

    anchors = Anchors.load(out)
    assert anchors.timing == TimingSpec()
    assert sorted(anchors.counts.tolist()) == [44, 44, 44]
    ends_y = anchors.points[:, 1]
    left, straight, right = np.argmax(ends_y), np.argmin(np.abs(ends_y)), np.argmin(ends_y)
    assert ends_y[left] > 1.0 and ends_y[right] < -1.0
    # constant-speed straight motion normalizes to unit steps whatever the speed: (1,0), (2,0), ... (10,0)
    expected = np.stack([np.arange(1, 11), np.zeros(10)], -1)
    np.testing.assert_allclose(anchors.trajectories[straight], expected, atol=1e-4)
    # left and right turns are mirror images
    np.testing.assert_allclose(anchors.trajectories[left] * [1, -1], anchors.trajectories[right], atol=1e-3)

    png = out.parent / "anchors.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timing_flags_change_the_trajectory_length(shards: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "anchors.npz"
    compute_anchors.run(["--shards", str(shards / "shard-000000.tar"), "--num-anchors", "2", "--out", str(out), "--num-waypoints", "5"])
    anchors = Anchors.load(out)
    assert anchors.trajectories.shape == (2, 5, 2) and anchors.timing.num_waypoints == 5


def test_no_usable_episode_is_a_clear_error(shards: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The library raises a ValueError; only the command line turns it into its message and exit status 1."""
    unreadable = str(shards / "shard-000002.tar")
    with pytest.raises(compute_anchors.NoTrainingWindowError, match=r"no training window in 1 shard\(s\); skips: \{'bad_trajectory': 1\}"):
        compute_anchors.gather_trajectories([unreadable], WindowConfig())
    assert issubclass(compute_anchors.NoTrainingWindowError, ValueError)
    with pytest.raises(SystemExit, match="no training window"):
        compute_anchors.main(["--shards", unreadable, "--num-anchors", "2", "--out", str(tmp_path / "a.npz")])
    result = subprocess.run(
        [sys.executable, "tools/compute_anchors.py", "--shards", unreadable, "--num-anchors", "2", "--out", str(tmp_path / "a.npz")],
        cwd=pathlib.Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no training window in 1 shard(s); skips: {'bad_trajectory': 1}"
