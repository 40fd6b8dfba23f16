"""PolicyRuntime on a real export folder, on TorchScript and on ONNX Runtime: timing of the window,
safety stops (the same on both), arrival, errors, and tools/run_policy.py on real mp4s (rotated,
empty, audio-only; outputs that would overwrite files; the ONNX path without torch)."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from test_pretrain import TINY_POLICY

from conftest import encode_indexed_video, frame_with_index
from s2e.anchors import Anchors
from s2e.bench.suite import load_suite
from s2e.control import ControllerLimits
from s2e.deploy import DEFAULT_ARRIVAL_RADIUS, PolicyRuntime
from s2e.export import DeployablePolicy, export_policy
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.scripts import run_policy
from s2e.timing import TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
DT = TimingSpec().control_dt
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
BACKENDS = ["torchscript", pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed"))]


def _policy(seed: int = 0) -> tuple[S2EPolicy, Anchors]:
    torch.manual_seed(seed)
    config = PolicyConfig.preset("small", **{**TINY_POLICY, "num_anchors": 3})
    trajectories = torch.cumsum(torch.rand(3, 10, 2) * torch.tensor([0.3, 0.1]), 1)
    anchors = Anchors(points=trajectories[:, -1].numpy(), trajectories=trajectories.numpy(), timing=TimingSpec(), counts=np.ones(3, np.int64))
    return S2EPolicy(config, trajectories[:, -1], trajectories).eval(), anchors


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    policy, anchors = _policy()
    out = tmp_path_factory.mktemp("deploy") / "policy"
    export_policy(policy, TimingSpec(), anchors, out, ControllerLimits(), formats=["ts", "onnx"] if HAS_ONNX else ["ts"])
    return out


def _frame(i: int) -> np.ndarray:
    return frame_with_index(i, SIZE, SIZE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_waits_for_a_full_window_then_matches_the_full_window_policy(export_dir: pathlib.Path, backend: str) -> None:
    runtime = PolicyRuntime(export_dir, backend=backend)
    assert runtime.backend == backend
    policy, _ = _policy()
    reference = DeployablePolicy(policy, TimingSpec(), ControllerLimits()).eval()
    goal = (4.0, 1.0)
    outputs = [runtime.step(t * DT, _frame(t), t * DT - 0.01, goal) for t in range(12)]
    assert [o.status for o in outputs] == ["warming_up"] * 8 + ["ok"] * 4
    assert all(o.v == 0.0 and o.omega == 0.0 for o in outputs[:8])
    frames = torch.from_numpy(np.stack([_frame(t) for t in range(12)])).permute(0, 3, 1, 2)
    for t in range(8, 12):
        window = frames[[t - 8, t - 6, t - 4, t - 2, t]][None]  # k=5 frames frame_dt=0.2 apart, newest now
        with torch.no_grad():
            _, _, _, command = reference(window, torch.tensor([goal]))
        assert outputs[t].v == pytest.approx(float(command[0, 0]), abs=1e-5)
        assert outputs[t].omega == pytest.approx(float(command[0, 1]), abs=1e-5)
    assert outputs[-1].best_trajectory.shape == (10, 2) and outputs[-1].modes.shape == (3, 10, 2)
    assert not runtime.faults


@pytest.mark.parametrize("backend", BACKENDS)
def test_stale_missing_and_out_of_order_frames_stop_the_robot_and_refill_the_window(
    export_dir: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    runtime = PolicyRuntime(export_dir, backend=backend)
    for t in range(9):
        assert runtime.step(t * DT, _frame(t), t * DT, None).status == ("ok" if t == 8 else "warming_up")
    with caplog.at_level(logging.WARNING, logger="s2e.deploy"):
        stale = [runtime.step(t * DT, _frame(8), 8 * DT, None) for t in (9, 10, 11)]  # the camera froze
        missing = runtime.step(1.2, None, None, None)
        backwards = runtime.step(1.3, _frame(13), 0.5, None)
    assert all(o.status == "stale_frame" and o.v == 0.0 and o.omega == 0.0 for o in stale)
    assert missing.status == "missing_frame" and backwards.status == "bad_timestamp"
    assert runtime.faults["stale_frame"] == 3 and runtime.faults["missing_frame"] == 1
    assert sum("stale frame" in r.message for r in caplog.records) == 1  # logged when it starts, not every tick
    resumed = [runtime.step(1.4 + t * DT, _frame(14 + t), 1.4 + t * DT, None).status for t in range(9)]
    assert resumed == ["warming_up"] * 8 + ["ok"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_goal_gives_zero_velocity(export_dir: pathlib.Path, backend: str) -> None:
    runtime = PolicyRuntime(export_dir, backend=backend)
    assert runtime.step(0.0, _frame(0), 0.0, (math.inf, 0.0)).status == "malformed_goal"
    assert runtime.step(0.1, _frame(1), 0.1, (math.nan, 2.0)).status == "malformed_goal"


def test_non_finite_outputs_give_zero_velocity(tmp_path: pathlib.Path) -> None:
    broken, anchors = _policy()
    with torch.no_grad():
        broken.heads.scale.bias.fill_(math.nan)
    export_policy(broken, TimingSpec(), anchors, tmp_path / "nan", ControllerLimits())  # the check is the runtime's, for any backend
    nan_runtime = PolicyRuntime(tmp_path / "nan")
    out = [nan_runtime.step(t * DT, _frame(t), t * DT, (3.0, 0.0)) for t in range(10)]
    assert all(o.status == "non_finite_output" and o.v == 0.0 for o in out)


def test_wrong_frame_types_are_clear_errors_and_other_sizes_are_resized(export_dir: pathlib.Path) -> None:
    runtime = PolicyRuntime(export_dir)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        runtime.step(0.0, _frame(0).astype(np.float32), 0.0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        runtime.step(0.0, _frame(0)[..., :1], 0.0)
    with pytest.raises(ValueError, match=r"goal must be \(x, y\)"):
        runtime.step(0.0, _frame(0), 0.0, (1.0, 2.0, 3.0))
    big = [runtime.step(t * DT, frame_with_index(t, 64, 96), t * DT, (2.0, 0.0)) for t in range(9)]
    assert big[-1].status == "ok" and math.isfinite(big[-1].v)


def test_run_policy_tool_on_a_real_video(export_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_indexed_video(40, 20, height=64, width=96))  # 2 s at 20 fps: ticks take every 2nd frame
    out, commands = tmp_path / "plan.mp4", tmp_path / "commands.csv"
    result = subprocess.run(
        [
            sys.executable,
            "tools/run_policy.py",
            "--policy",
            str(export_dir),
            "--video",
            str(video),
            "--goal",
            "5",
            "1",
            "--out",
            str(out),
            "--commands",
            str(commands),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # ticks at 0.0 .. 2.0 s: the last frame (1.95 s) is still fresh at the 2.0 s tick
    assert summary["ticks"] == 21 and summary["moving_ticks"] == 21 - 8 and summary["faults"] == {}
    rows = list(csv.DictReader(open(commands)))
    assert [float(r["t"]) for r in rows] == pytest.approx([i * DT for i in range(21)])
    assert {r["status"] for r in rows[8:]} == {"ok"}
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 21 and decoded[0].shape == (64, 96, 3)
    assert decoded[-1][:32, -32:].std() > 5  # the plan inset is drawn top right


def test_a_frame_period_that_is_not_a_multiple_of_the_control_period_is_refused() -> None:
    policy, _ = _policy()
    with pytest.raises(ValueError, match="frame_dt .* must be a whole multiple of control_dt"):
        DeployablePolicy(policy, TimingSpec(frame_dt=0.25, control_dt=0.1), ControllerLimits())
    assert DeployablePolicy(policy, TimingSpec(frame_dt=0.3, control_dt=0.1), ControllerLimits()).cache_length == 13


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_camera_latency_of_exactly_one_control_period_is_fresh(export_dir: pathlib.Path, backend: str) -> None:
    """Issue 16, item 13: frames exactly control_dt old were stale by float rounding on 24 of 40 ticks."""
    runtime = PolicyRuntime(export_dir, backend=backend)
    assert runtime.max_frame_age == DT
    statuses = [runtime.step(t * DT, _frame(t), (t - 1) * DT, (4.0, 0.0)).status for t in range(1, 41)]
    assert statuses == ["warming_up"] * 8 + ["ok"] * 32 and not runtime.faults
    older = runtime.step(41 * DT, _frame(41), 41 * DT - DT - 1e-3, (4.0, 0.0))  # a millisecond past the limit is still stale
    assert older.status == "stale_frame"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_robot_stops_within_the_arrival_radius(export_dir: pathlib.Path, backend: str) -> None:
    """Issue 16, item 18: with the goal at distance 0 the runtime kept driving at 0.93 m/s."""

    def last(radius: float, goal: tuple[float, float]) -> object:
        runtime = PolicyRuntime(export_dir, backend=backend, arrival_radius=radius)
        return [runtime.step(t * DT, _frame(t), t * DT, goal) for t in range(10)][-1]

    assert DEFAULT_ARRIVAL_RADIUS == load_suite("standard").arrival_radius == load_suite("quick").arrival_radius
    driving = last(0.0, (1e-3, 0.0))
    assert driving.status == "ok" and driving.v > 0.05  # the policy itself drives on at the goal
    for goal in [(0.0, 0.0), (0.6, -0.7)]:
        arrived = last(DEFAULT_ARRIVAL_RADIUS, goal)
        assert arrived.status == "arrived" and arrived.v == arrived.omega == 0.0 and not arrived.moving
        assert arrived.best_trajectory is not None  # the policy still ran: its window stays warm
    assert last(0.5, (0.6, -0.7)).status == "ok"  # the radius is configurable
    runtime = PolicyRuntime(export_dir, backend=backend)
    statuses = [runtime.step(t * DT, _frame(t), t * DT, (0.5, 0.0) if t < 10 else (5.0, 0.0)).status for t in range(12)]
    assert statuses[8:] == ["arrived", "arrived", "ok", "ok"]  # a new goal outside the radius: it drives again at once
    with pytest.raises(ValueError, match="arrival_radius"):
        PolicyRuntime(export_dir, arrival_radius=-1.0)


def test_onnx_backend_without_onnxruntime_says_what_to_install(export_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs onnxruntime.*pip install 's2e\[onnx\]'"):
        PolicyRuntime(export_dir, backend="onnx")


NO_TORCH = r"""
import runpy, sys
sys.argv = ["run_policy.py", *sys.argv[1:]]
runpy.run_path("tools/run_policy.py", run_name="__main__")
leaked = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
assert not leaked, f"torch was imported: {leaked[:5]}"
"""


@pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
def test_run_policy_runs_an_onnx_export_without_importing_torch(export_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_indexed_video(40, 20, height=64, width=96))
    common = ["--policy", str(export_dir), "--video", str(video), "--goal", "5", "1", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *common, "--backend", "onnx", "--out", str(tmp_path / "onnx.mp4"), "--commands", str(tmp_path / "onnx.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "onnx" and summary["ticks"] == 21 and summary["moving_ticks"] == 13 and summary["faults"] == {}
    scripted = run_policy.run([*common, "--backend", "torchscript", "--out", str(tmp_path / "ts.mp4"), "--commands", str(tmp_path / "ts.csv")])
    assert scripted["backend"] == "torchscript"
    onnx_rows, ts_rows = (list(csv.DictReader(open(tmp_path / f"{name}.csv"))) for name in ("onnx", "ts"))
    assert [r["status"] for r in onnx_rows] == [r["status"] for r in ts_rows]
    for a, b in zip(onnx_rows, ts_rows):
        assert float(a["v"]) == pytest.approx(float(b["v"]), abs=2e-4) and float(a["omega"]) == pytest.approx(float(b["omega"]), abs=2e-4)


def test_run_policy_never_overwrites_its_input_or_an_existing_file_unasked(
    export_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 16, item 2: ``--video X --out X`` overwrote its own input."""
    video = tmp_path / "clip.mp4"
    original = encode_indexed_video(12, 10, height=32, width=32)
    video.write_bytes(original)
    common = ["--policy", str(export_dir), "--video", str(video), "--threads", "1"]
    for refused in (["--out", str(video)], ["--out", str(video), "--overwrite"], ["--out", str(tmp_path / "o.mp4"), "--commands", str(video), "--overwrite"]):
        with pytest.raises(SystemExit) as exit_info:
            run_policy.run([*common, *refused])
        assert exit_info.value.code == 2 and "is the input video" in capsys.readouterr().err
    assert video.read_bytes() == original
    out = tmp_path / "plan.mp4"
    out.write_bytes(b"an earlier run")
    with pytest.raises(SystemExit):
        run_policy.run([*common, "--out", str(out)])
    assert "exists: pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"an earlier run"
    assert run_policy.run([*common, "--out", str(out), "--overwrite"])["ticks"] == 12
    assert out.read_bytes() != b"an earlier run" and video.read_bytes() == original


def test_run_policy_applies_the_rotation_metadata(export_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Issue 16, item 5: PyAV decodes the stored pixels; a phone video's display matrix was ignored."""
    video = tmp_path / "rotated.mp4"
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :16] = 255  # a white band along the left edge of the stored picture
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)  # shown turned 90 degrees counter-clockwise: the band at the bottom
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "plan.mp4"
    run_policy.run(["--policy", str(export_dir), "--video", str(video), "--out", str(out), "--threads", "1"])
    with av.open(str(out)) as container:
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][-1]
    assert shown.shape == (96, 64, 3)  # upright: taller than wide
    assert shown[84:94].mean() > 200 and shown[66:78].mean() < 60  # the band is at the bottom, below the plan inset


def test_run_policy_on_a_video_without_frames_is_a_clear_error(export_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 16, item 17: a 0-frame or audio-only video raised IndexError."""
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as container:  # AVI keeps a video stream that holds no frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, i * 1024
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for video, message in ((empty, "has a video stream but no decodable frame"), (audio, "has no video stream (audio only?)")):
        out = tmp_path / f"{video.stem}_plan.mp4"
        with pytest.raises(SystemExit) as exit_info:
            run_policy.run(["--policy", str(export_dir), "--video", str(video), "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{video} {message}" in err, err
        assert not out.exists()
