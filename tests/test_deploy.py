"""PolicyRuntime on a real export folder: timing of the window, safety stops, errors, and
tools/run_policy.py on a real mp4."""

from __future__ import annotations

import csv
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

from conftest import encode_indexed_video, frame_with_index
from s2e.anchors import Anchors
from s2e.control import ControllerLimits
from s2e.deploy import PolicyRuntime
from s2e.export import DeployablePolicy, export_policy
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.timing import TimingSpec
from test_pretrain import TINY_POLICY

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
DT = TimingSpec().control_dt


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
    export_policy(policy, TimingSpec(), anchors, out, ControllerLimits())
    return out


def _frame(i: int) -> np.ndarray:
    return frame_with_index(i, SIZE, SIZE)


def test_runtime_waits_for_a_full_window_then_matches_the_full_window_policy(export_dir: pathlib.Path) -> None:
    runtime = PolicyRuntime(export_dir)
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


def test_stale_missing_and_out_of_order_frames_stop_the_robot_and_refill_the_window(export_dir: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = PolicyRuntime(export_dir)
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


def test_malformed_goal_and_non_finite_outputs_give_zero_velocity(export_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    runtime = PolicyRuntime(export_dir)
    assert runtime.step(0.0, _frame(0), 0.0, (math.inf, 0.0)).status == "malformed_goal"
    assert runtime.step(0.1, _frame(1), 0.1, (math.nan, 2.0)).status == "malformed_goal"
    broken, anchors = _policy()
    with torch.no_grad():
        broken.heads.scale.bias.fill_(math.nan)
    export_policy(broken, TimingSpec(), anchors, tmp_path / "nan", ControllerLimits())
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
        [sys.executable, "tools/run_policy.py", "--policy", str(export_dir), "--video", str(video), "--goal", "5", "1", "--out", str(out), "--commands", str(commands)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
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
    with pytest.raises(ValueError, match="frame_dt to be a whole multiple of control_dt"):
        DeployablePolicy(policy, TimingSpec(frame_dt=0.25, control_dt=0.1), ControllerLimits())
    assert DeployablePolicy(policy, TimingSpec(frame_dt=0.3, control_dt=0.1), ControllerLimits()).cache_length == 13
