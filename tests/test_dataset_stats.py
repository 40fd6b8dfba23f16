"""dataset_stats on real shards: totals, skip counts for corrupt samples, histogram PNGs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from conftest import curved_trajectory, encode_indexed_video
from datamodules.pipeline import SkipCounter, episode_windows, read_tar_episodes
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import WindowConfig

REPO = Path(__file__).resolve().parents[1]


def object_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, t=np.array([0.0, 0.1]), xy=np.array([None, None], dtype=object), yaw=np.zeros(2))
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    with EpisodeShardWriter(out, max_count=2) as writer:
        for n in range(3):
            traj = curved_trajectory(40, 10.0, speed=1.2, turn_rate=0.15)
            traj.valid = np.arange(40) < 30  # last 10 poses lost
            writer.write(f"ep{n}", encode_indexed_video(40, 10), traj, {"fps": 10.0, "embodiment": "wheelchair" if n else "quadruped"})
        short = curved_trajectory(40, 10.0)
        writer.write("short_video", encode_indexed_video(20, 10), short, {"fps": 10.0})
    good_traj = curved_trajectory(40, 10.0).to_npz_bytes()
    with wds.TarWriter(str(out / "shard-000099.tar")) as bad:
        bad.write({"__key__": "pickled", "mp4": encode_indexed_video(4, 10), "traj.npz": object_npz(), "json": b'{"fps": 10}'})
        bad.write({"__key__": "garbage", "mp4": b"not an mp4 at all", "traj.npz": good_traj, "json": b'{"fps": 10}'})
        bad.write({"__key__": "nometa", "mp4": b"x", "traj.npz": good_traj})
    return out


def test_stats_tool_counts_hours_skips_and_writes_histograms(shards, tmp_path):
    report = tmp_path / "report"
    cmd = [sys.executable, "tools/dataset_stats.py", "--shards", str(shards / "shard-*.tar"), "--out", str(report)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["shards"] == 3 and stats["episodes"] == 3
    assert stats["frames"] == 120
    assert stats["hours"] == pytest.approx(3 * 40 * 0.1 / 3600)
    assert stats["valid_hours"] == pytest.approx(3 * 30 * 0.1 / 3600)
    assert stats["valid_fraction"] == pytest.approx(0.75)
    assert stats["skipped"] == {"bad_trajectory": 1, "undecodable_video": 1, "missing_member": 1, "video_shorter_than_poses": 1}
    assert stats["embodiments"] == {"quadruped": 1, "wheelchair": 2}
    # chord speed on an arc is a hair below the arc speed; turn rate is exact
    assert stats["speed_mps"]["median"] == pytest.approx(1.2, rel=1e-3)
    assert stats["abs_turn_rate_dps"]["median"] == pytest.approx(np.degrees(0.15), rel=1e-6)
    assert json.loads((report / "stats.json").read_text()) == stats
    for name in ("speed_hist.png", "turn_rate_hist.png"):
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_missing_shards_are_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/dataset_stats.py", "--shards", str(tmp_path / "none-*.tar")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "no shard matches" in result.stderr


def test_stats_skip_what_training_skips_for_drifting_frame_times(tmp_path):
    """A 5 fps video under poses timed at 10 fps: training drops it (frame_times_mismatch), so must the statistics."""
    out = tmp_path / "shards"
    with EpisodeShardWriter(out) as writer:
        writer.write("good", encode_indexed_video(60, 10), curved_trajectory(60, 10.0), {"fps": 10.0})
        writer.write("drifting", encode_indexed_video(60, 5), curved_trajectory(60, 10.0), {"fps": 10.0})
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    counter = SkipCounter()
    config = WindowConfig(goal_horizon_s=(1.0, 2.0))
    trained = [w.key for w in episode_windows(read_tar_episodes(urls, counter), config, (32, 32), np.random.default_rng(0), counter)]
    assert trained == ["good"] and dict(counter.total) == {"frame_times_mismatch": 1}
    result = subprocess.run(
        [sys.executable, "tools/dataset_stats.py", "--shards", str(out / "shard-*.tar")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["skipped"] == {"frame_times_mismatch": 1} and stats["episodes"] == 1
    assert stats["valid_hours"] == pytest.approx(60 * 0.1 / 3600)  # only the episode training uses
