"""make_shards under bad conditions (issue 16): ambiguous names, interruptions, runs that write nothing,
FIFOs, Excel CSVs and pose files that do not match their video. Every input is a real file built here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import encode_indexed_video
from datamodules.episode import Trajectory
from datamodules.file_source import AmbiguousClipsError, find_clips
from datamodules.ingest import IngestOptions, ingest_clips

REPO = Path(__file__).resolve().parents[1]
TOOL = [sys.executable, "tools/make_shards.py"]


def write_csv(path: Path, t: np.ndarray, speed: float = 1.0, encoding: str = "utf-8") -> None:
    """Poses driving along +x at ``speed`` m/s."""
    rows = ["t,x,y,yaw"] + [f"{float(ti)!r},{speed * float(ti)!r},0.0,0.0" for ti in t]
    path.write_text("\n".join(rows) + "\n", encoding=encoding)


def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    videos, poses = tmp_path / "videos", tmp_path / "poses"
    videos.mkdir()
    poses.mkdir()
    return videos, poses, tmp_path / "out"


def run_tool(videos: Path, poses: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*TOOL, "--videos", str(videos), "--poses", str(poses), "--pose-format", "csv", "--out", str(out), "--min-seconds", "1", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def shard_episodes(out: Path) -> list[str]:
    """Keys of every episode in the finished shards; each shard must read to its end."""
    keys = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:  # a truncated tar raises here
            members = tar.getnames()
        assert len(members) % 3 == 0
        keys += sorted({m.split(".", 1)[0] for m in members})
    return keys


def test_videos_sharing_a_stem_are_refused_then_paired_by_full_name(tmp_path):
    videos, poses, out = folders(tmp_path)
    (videos / "walk.mov").write_bytes(encode_indexed_video(30, 10))
    (videos / "walk.mp4").write_bytes(encode_indexed_video(30, 10))
    t = np.arange(0.0, 3.0, 0.1)
    write_csv(poses / "walk.csv", t)
    with pytest.raises(AmbiguousClipsError, match=r"walk\.csv could belong to walk\.mov \(name it walk\.mov\.csv\) or walk\.mp4"):
        find_clips(videos, poses, "csv")
    result = run_tool(videos, poses, out)
    assert result.returncode == 2 and "cannot be paired by name" in result.stderr
    assert not out.exists()  # refused before anything was written

    (poses / "walk.csv").rename(poses / "walk.mov.csv")  # poses named after the full video name
    summary = ingest_clips(find_clips(videos, poses, "csv"), out, IngestOptions(pose_format="csv", min_seconds=1.0))
    assert [k["key"] for k in summary.kept] == ["walk_mov"]
    assert summary.skipped == [{"clip": "walk.mp4", "reason": "no_poses", "detail": str(videos / "walk.mp4")}]  # not silently lost

    write_csv(poses / "walk.mp4.csv", t, speed=2.0)
    write_csv(poses / "walk.csv", t)  # now a third pose file that could be either video's
    with pytest.raises(AmbiguousClipsError, match="walk.csv could belong"):
        find_clips(videos, poses, "csv")
    (poses / "walk.csv").unlink()
    listing = find_clips(videos, poses, "csv")
    assert [(c.name, c.video.name, c.poses.name) for c in listing.clips] == [("walk.mov", "walk.mov", "walk.mov.csv"), ("walk.mp4", "walk.mp4", "walk.mp4.csv")]


def test_subfolders_pair_by_relative_path_and_a_video_with_two_pose_files_is_an_error(tmp_path):
    videos, poses, out = folders(tmp_path)
    for day in ("day1", "day2"):
        (videos / day).mkdir()
        (poses / day).mkdir()
        (videos / day / "walk.mp4").write_bytes(encode_indexed_video(20, 10))
    write_csv(poses / "day1" / "walk.csv", np.arange(0.0, 2.0, 0.1))
    write_csv(poses / "day2" / "walk.csv", np.arange(0.0, 2.0, 0.1), speed=3.0)
    listing = find_clips(videos, poses, "csv")
    assert [(c.name, c.poses.relative_to(poses).as_posix()) for c in listing.clips] == [("day1/walk", "day1/walk.csv"), ("day2/walk", "day2/walk.csv")]
    summary = ingest_clips(listing, out, IngestOptions(pose_format="csv", min_seconds=1.0))
    assert sorted(k["key"] for k in summary.kept) == ["day1_walk", "day2_walk"]
    write_csv(poses / "day1" / "walk.mp4.csv", np.arange(0.0, 2.0, 0.1))
    with pytest.raises(AmbiguousClipsError, match="video day1/walk.mp4 has several pose files"):
        find_clips(videos, poses, "csv")


#: Clips an interrupted run is given: many more than the three it reports before the signal, so that
#: on a loaded machine, where the test may read the child's third line late, the tool is still busy.
INTERRUPTED_CLIPS = 40


def interrupt_tool(videos: Path, poses: Path, out: Path, sig: signal.Signals, clips: int) -> int:
    """Run the tool over ``clips`` clips, two per shard, and send ``sig`` once it reports its third clip."""
    for n in range(clips):
        (videos / f"clip{n:02d}.mp4").write_bytes(encode_indexed_video(15, 10))
        write_csv(poses / f"clip{n:02d}.csv", np.arange(0.0, 1.5, 0.1))
    cmd = [*TOOL, "--videos", str(videos), "--poses", str(poses), "--pose-format", "csv", "--out", str(out), "--min-seconds", "1", "--shard-max-count", "2"]
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in child.stdout:
        if line.startswith("[3/"):
            child.send_signal(sig)
            break
    child.communicate(timeout=60)
    assert not (out / "summary.json").exists()  # the run did not finish
    return child.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_deletes_the_open_shard_and_keeps_the_finished_ones(tmp_path, sig):
    videos, poses, out = folders(tmp_path)
    assert interrupt_tool(videos, poses, out, sig, clips=INTERRUPTED_CLIPS) == 130
    assert not list(out.glob("*.partial"))
    kept = shard_episodes(out)  # every shard-*.tar reads to its end
    journal = [json.loads(line) for line in (out / "ingest-journal.jsonl").read_text().splitlines()[1:]]
    assert sorted(c["clip"] for line in journal for c in line["clips"]) == kept  # the journal describes exactly them
    assert 2 <= len(kept) < INTERRUPTED_CLIPS


def test_killed_run_is_refused_then_resumed_without_duplicates(tmp_path):
    videos, poses, out = folders(tmp_path)
    clips = [f"clip{n:02d}" for n in range(INTERRUPTED_CLIPS)]
    assert interrupt_tool(videos, poses, out, signal.SIGKILL, clips=len(clips)) == -signal.SIGKILL
    assert 2 <= len(shard_episodes(out)) < len(clips)  # whatever is named shard-*.tar is complete

    again = run_tool(videos, poses, out, "--shard-max-count", "2")
    assert again.returncode == 2 and "--resume" in again.stderr and "interrupted" in again.stderr
    resumed = run_tool(videos, poses, out, "--shard-max-count", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    assert sorted(shard_episodes(out)) == clips  # every clip exactly once
    assert not list(out.glob("*.partial"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_kept"] == len(clips) and summary["episodes"] == len(clips) and summary["clips_skipped"] == 0

    changed = run_tool(videos, poses, out, "--shard-max-count", "3", "--resume")
    assert changed.returncode == 2 and "other inputs or options (shard_max_count)" in changed.stderr
    over = run_tool(videos, poses, out, "--shard-max-count", "3", "--overwrite")
    assert over.returncode == 0 and sorted(shard_episodes(out)) == clips and len(list(out.glob("shard-*.tar"))) == -(-len(clips) // 3)


def test_a_run_that_writes_nothing_fails_leaves_no_shard_and_does_not_block_a_rerun(tmp_path):
    videos, poses, out = folders(tmp_path)
    for name in ("a", "b"):
        (videos / f"{name}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
        write_csv(poses / f"{name}.csv", np.arange(0.0, 3.0, 0.1))
    result = run_tool(videos, poses, out)
    assert result.returncode == 1 and "no episode was written" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no empty shard, no journal
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    assert totals["clips"] == 2 and totals["clips_skipped"] == 2 and totals["skipped_by_reason"] == {"undecodable": 2}
    assert run_tool(videos, poses, out).returncode == 1  # not refused as "an earlier run"


def test_clips_whose_chunks_all_fall_below_min_seconds_are_counted_as_skipped(tmp_path):
    videos, poses, out = folders(tmp_path)
    (videos / "walk.mp4").write_bytes(encode_indexed_video(100, 10))  # 10 s, keyframes every 3 s
    t = np.arange(0.0, 10.0, 0.1)
    lines = [f"{ti!r},{'nan' if round(ti, 1) in (1.5, 4.5, 7.5) else repr(ti)},0.0,0.0" for ti in t.tolist()]
    (poses / "walk.csv").write_text("t,x,y,yaw\n" + "\n".join(lines) + "\n")
    # whole-clip valid runs of 2.8 s pass --min-seconds 2.5; cut into 3 s chunks, every run is shorter
    options = IngestOptions(pose_format="csv", min_seconds=2.5, max_episode_seconds=3.0)
    summary = ingest_clips(find_clips(videos, poses, "csv"), out, options).to_dict()
    assert summary["clips"] == 1 and summary["clips_kept"] == 0 and summary["skipped_by_reason"] == {"no_usable_run": 1}
    assert summary["hours_dropped"]["short_run"] > 0 and not list(out.glob("shard-*"))


def test_fifo_named_like_a_video_is_skipped_not_waited_on(tmp_path):
    videos, poses, out = folders(tmp_path)
    os.mkfifo(videos / "camera.mp4")
    os.mkfifo(poses / "walk.mp4.csv")  # a pose file that is a FIFO as well
    (videos / "walk.mp4").write_bytes(encode_indexed_video(20, 10))
    write_csv(poses / "camera.csv", np.arange(0.0, 2.0, 0.1))
    write_csv(poses / "walk.csv", np.arange(0.0, 2.0, 0.1))
    result = run_tool(videos, poses, out)  # would block forever reading the FIFO
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    assert totals["clips_kept"] == 1 and totals["skipped_by_reason"] == {"not_regular_file": 2, "no_video": 1}


def test_csv_saved_with_a_utf8_byte_order_mark_is_read(tmp_path):
    videos, poses, out = folders(tmp_path)
    (videos / "walk.mp4").write_bytes(encode_indexed_video(20, 10))
    write_csv(poses / "walk.csv", np.arange(0.0, 2.0, 0.1), speed=1.5, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    assert (poses / "walk.csv").read_bytes().startswith(b"\xef\xbb\xbft,x,y,yaw")
    summary = ingest_clips(find_clips(videos, poses, "csv"), out, IngestOptions(pose_format="csv", min_seconds=1.0))
    assert summary.skipped == [] and summary.kept[0]["valid_fraction"] == 1.0
    with tarfile.open(out / "shard-000000.tar") as tar:
        traj = Trajectory.from_npz_bytes(tar.extractfile("walk.traj.npz").read())
    np.testing.assert_allclose(traj.xy[:, 0], 1.5 * traj.t, atol=1e-9)


def test_relative_pose_time_warns_when_pose_and_video_spans_disagree(tmp_path):
    videos, poses, out = folders(tmp_path)
    for name in ("ok", "long", "short"):
        (videos / f"{name}.mp4").write_bytes(encode_indexed_video(40, 10))  # 3.9 s between first and last frame
    write_csv(poses / "ok.csv", np.arange(0.0, 4.0, 0.1))
    write_csv(poses / "long.csv", np.arange(0.0, 8.0, 0.1))  # poses in another unit or another recording
    write_csv(poses / "short.csv", np.arange(0.0, 2.5, 0.1))
    summary = ingest_clips(find_clips(videos, poses, "csv"), out, IngestOptions(pose_format="csv", min_seconds=1.0))
    assert summary.to_dict()["warnings"] == {"pose_span_mismatch": 2} and summary.clips_kept == 3  # a warning, not a skip
    assert sorted(k["clip"] for k in summary.kept if "pose_span_mismatch" in k.get("warnings", {})) == ["long", "short"]
    absolute = ingest_clips(find_clips(videos, poses, "csv"), tmp_path / "abs", IngestOptions(pose_format="csv", pose_time="absolute", min_seconds=1.0))
    assert absolute.warnings == {}  # absolute times are checked by outside_pose_range instead
