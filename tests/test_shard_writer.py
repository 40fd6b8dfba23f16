"""EpisodeShardWriter: rolling by count and size, key checks, and pickle-free trajectories."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from conftest import curved_trajectory
from datamodules.episode import BadTrajectoryError, Trajectory
from datamodules.shard_writer import EpisodeShardWriter

META = {"fps": 10.0}


def keys_per_shard(writer: EpisodeShardWriter) -> list[list[str]]:
    shards = []
    for path in writer.shard_paths:
        with tarfile.open(path) as tar:
            shards.append(sorted({m.name.split(".", 1)[0] for m in tar.getmembers()}))
    return shards


def test_rolls_by_count(tmp_path):
    with EpisodeShardWriter(tmp_path, max_count=2) as writer:
        for n in range(5):
            writer.write(f"ep{n}", b"video-bytes", curved_trajectory(5, 10.0), META)
    assert keys_per_shard(writer) == [["ep0", "ep1"], ["ep2", "ep3"], ["ep4"]]
    assert writer.episodes == 5


def test_rolls_by_size(tmp_path):
    video = np.random.default_rng(0).bytes(30_000)  # incompressible stand-in for an mp4 payload
    with EpisodeShardWriter(tmp_path, max_count=1000, max_size=50_000) as writer:
        for n in range(4):
            writer.write(f"ep{n}", video, curved_trajectory(5, 10.0), META)
    shards = keys_per_shard(writer)
    assert len(shards) >= 2 and sum(len(s) for s in shards) == 4
    with tarfile.open(writer.shard_paths[0]) as tar:
        assert tar.extractfile("ep0.mp4").read() == video  # payload stored byte-for-byte


def test_duplicate_and_bad_keys_are_errors(tmp_path):
    with EpisodeShardWriter(tmp_path) as writer:
        writer.write("walk_01", b"v", curved_trajectory(5, 10.0), META)
        with pytest.raises(ValueError, match="duplicate"):
            writer.write("walk_01", b"v", curved_trajectory(5, 10.0), META)
        for bad in ("walk.01", "a/b", "", "space key"):
            with pytest.raises(ValueError, match="must match"):
                writer.write(bad, b"v", curved_trajectory(5, 10.0), META)
        with pytest.raises(ValueError, match="lacks"):
            writer.write("nofps", b"v", curved_trajectory(5, 10.0), {})
    assert writer.episodes == 1


def test_npz_with_object_array_is_refused():
    buf = io.BytesIO()
    np.savez(buf, t=np.arange(3.0), xy=np.array([{"a": 1}, None, None], dtype=object), yaw=np.zeros(3))
    with pytest.raises(BadTrajectoryError, match="unreadable"):
        Trajectory.from_npz_bytes(buf.getvalue())


def test_trajectory_round_trips_through_npz():
    traj = curved_trajectory(12, 10.0)
    traj.valid = np.arange(12) % 5 != 0
    back = Trajectory.from_npz_bytes(traj.to_npz_bytes())
    np.testing.assert_array_equal(back.t, traj.t)
    np.testing.assert_array_equal(back.xy, traj.xy)
    np.testing.assert_array_equal(back.valid, traj.valid)


def test_shards_appear_only_complete_and_an_exception_drops_the_open_one(tmp_path):
    with EpisodeShardWriter(tmp_path / "empty"):
        pass
    assert not list((tmp_path / "empty").iterdir())  # nothing written: no empty shard-000000.tar
    finished = []
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with EpisodeShardWriter(out, max_count=2, on_finalize=lambda path: finished.append((path.name, path.exists()))) as writer:
            for n in range(3):
                writer.write(f"ep{n}", b"video-bytes", curved_trajectory(5, 10.0), META, same_shard=n == 2)
            assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar.partial"]  # ep2 kept with its recording
            writer.write("ep3", b"video-bytes", curved_trajectory(5, 10.0), META)  # rolls over: shard 0 is finished
            assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar.partial"]
            raise KeyboardInterrupt
    assert finished == [("shard-000000.tar", False)]  # told before the rename
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
    assert keys_per_shard(writer) == [["ep0", "ep1", "ep2"]]
