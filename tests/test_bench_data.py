"""tools/bench_data.py on a user-like recording set: one shard from make_shards.py, compared per backend."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from datamodules.pipeline import SkipCounter, read_tar_episodes
from datamodules.video_decode import backend_unavailable
from s2e.scripts import bench_data

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def user_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 6 s recordings, 160x120 at 29.97 fps with B-frames, poses at 10 Hz in CSV, sharded by make_shards.py into one shard."""
    paths = bench_data.make_synthetic_shards(tmp_path_factory.mktemp("bench"), 2, 6.0, NTSC, (120, 160), bframes=2, episodes_per_shard=2, pose_hz=10.0)
    assert len(paths) == 1
    return paths[0]


def test_synthetic_recordings_are_sharded_the_way_a_user_does_it(user_shard: Path) -> None:
    episodes = list(read_tar_episodes([str(user_shard)], SkipCounter()))
    assert len(episodes) == 2 and all(set(e) >= {"mp4", "traj.npz", "json"} for e in episodes)
    for episode in episodes:
        with av.open(io.BytesIO(episode["mp4"])) as container:
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (160, 120) and stream.average_rate == NTSC
            pts = [p.pts for p in container.demux(stream) if p.pts is not None]
        assert pts != sorted(pts)  # B-frames: decode order is not presentation order


def test_one_run_compares_backends_at_the_shipped_settings_with_both_workers_decoding(user_shard: Path) -> None:
    backends = ["decord", "pyav"] + ([] if backend_unavailable("torchcodec") else ["torchcodec"])
    result = bench_data.run(["--shards", str(user_shard), "--repeats", "1", "--backend", *backends])
    assert result["config"].endswith("pretrain.yaml") and result["workers"] == 2 and result["decode_size"] == [64, 64]
    assert result["augment"]["brightness"] == 0.2 and result["jitter_on"] == "loader"  # jittered in this process's gather
    assert result["shards"] == 1 and result["frames_decoded"] == 2 * 180 and result["windows"] > 100
    assert [r["backend"] for r in result["results"]] == backends
    for run in result["results"]:
        assert run["ratio"] > 0 and np.isfinite(run["cpu_ratio"])
        assert len(run["pipeline_s"]) == len(run["ceiling_s"]) == len(run["pipeline_consumer_cpu_s"]) == 1
        assert 0 < run["pipeline_consumer_cpu_s"][0] <= run["pipeline_cpu_s"][0]


def test_plain_settings_and_an_unknown_backend(user_shard: Path, capsys: pytest.CaptureFixture) -> None:
    result = bench_data.run(["--shards", str(user_shard), "--config", "none", "--repeats", "1", "--size", "48x64", "--backend", "nope", "pyav"])
    assert "backend nope skipped: unknown video backend" in capsys.readouterr().out
    assert [r["backend"] for r in result["results"]] == ["pyav"]
    assert result["augment"]["brightness"] == 0.0 and result["decode_size"] == [48, 64]


def test_repeats_zero_only_writes_the_synthetic_data(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    args = ["--make-synthetic", str(out), "--repeats", "0", "--synthetic-episodes", "1", "--synthetic-seconds", "1", "--synthetic-size", "48x64"]
    assert bench_data.run(args) is None and len(list(out.glob("shard-*.tar"))) == 1
    with pytest.raises(SystemExit):
        bench_data.run(["--shards", str(next(out.glob("shard-*.tar"))), "--repeats", "0"])
