"""NavBench through the real CLI (``python -m s2e test --config experiments/navbench.yaml``) on the
quick suite with a tiny trained checkpoint: report files, TensorBoard scalars, and clear config errors."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from s2e.anchors import Anchors
from s2e.bench.metrics import METRICS
from s2e.pretrain import PretrainModule
from s2e.timing import TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "navbench.yaml"
QUICK = ROOT / "experiments" / "navbench_quick.yaml"
IMAGE = 32
TINY_POLICY = {"image_size": [IMAGE, IMAGE], "d_model": 32, "cnn_channels": [8, 16, 16, 32], "fusion_heads": 2, "fusion_depth": 1}


def _random_batches(timing: TimingSpec, image: int, count: int = 2, batch: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    k, t = timing.context_frames, timing.num_waypoints
    return [
        {
            "frames": torch.randint(0, 256, (batch, k, 3, image, image), dtype=torch.uint8, generator=g),
            "goal": torch.cat([torch.rand(batch, 1, generator=g) * 10, torch.ones(batch, 1), torch.zeros(batch, 1)], 1),
            "waypoints": torch.cumsum(torch.ones(batch, t, 2) * torch.tensor([1.0, 0.0]), 1),
            "scale": torch.full((batch,), 0.4),
        }
        for _ in range(count)
    ]


def tiny_checkpoint(root: pathlib.Path, timing: TimingSpec = TimingSpec(), name: str = "tiny.ckpt") -> pathlib.Path:
    """A PretrainModule with the tests' tiny policy, trained one step through a real Trainer and saved."""
    root.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, timing.num_waypoints + 1, dtype=np.float32)
    trajectories = np.stack([np.stack([steps, steps * c], -1) for c in (-0.3, 0.0, 0.3)])
    anchors_path = root / f"{pathlib.Path(name).stem}_anchors.npz"
    Anchors(points=trajectories[:, -1].copy(), trajectories=trajectories, timing=timing, counts=np.ones(3, np.int64)).save(anchors_path)
    module = PretrainModule(anchors_path=str(anchors_path), policy=dict(TINY_POLICY), warmup_steps=1, image_every_n_steps=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        max_steps=1,
    )
    trainer.fit(module, train_dataloaders=DataLoader(_random_batches(timing, IMAGE), batch_size=None))
    path = root / name
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bench_ckpt"))


def _run_cli(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "s2e", "test", "--config", str(CONFIG), "--config", str(QUICK), *args, "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as conftest does in-process: tiny ops, a shared 2-core machine
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _check_report(report: dict, agent: str) -> None:
    assert report["agent"] == agent and report["suite"]["name"] == "quick" and report["domains"] == ["sim"]
    assert len(report["episodes"]) == 8 and {e["task"] for e in report["episodes"]} == {"empty", "obstacle", "pedestrian", "both"}
    overall = report["results"]["sim"]["overall"]
    assert overall["success_rate"]["mean"] == pytest.approx(np.mean([e["success"] for e in report["episodes"]]))
    assert overall["collisions"]["mean"] == pytest.approx(np.mean([e["collisions"] for e in report["episodes"]]))
    for name in ("success_rate", "route_completion", "collisions", "spl"):
        entry = overall[name]
        assert entry["n"] == 8 and entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    assert 0.0 <= overall["route_completion"]["mean"] <= 1.0


def test_cli_runs_the_quick_suite_with_a_checkpoint_and_writes_reports_and_scalars(checkpoint: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = _run_cli("--model.init_args.policy_path", str(checkpoint), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "logs" / "navbench" / "version_0"
    report = json.loads((version / "report.json").read_text())
    _check_report(report, "tiny")
    files = report["files"]
    assert len(files["plots"]) == 4 and len(files["videos"]) == 1
    assert all(pathlib.Path(p).stat().st_size > 1000 for p in files["plots"] + files["videos"])
    assert (version / "report.md").read_text().count("| empty |") == 1
    csv_lines = (version / "report.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 5 * len(METRICS)  # header + (4 tasks + overall) x metrics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version))
    events.Reload()
    scalar = events.Scalars("navbench/sim/overall/success_rate")
    assert scalar[-1].value == pytest.approx(report["results"]["sim"]["overall"]["success_rate"]["mean"])


def test_cli_ckpt_path_runs_the_policy_it_names(checkpoint: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """``--ckpt_path``: the checkpoint's own hyper-parameters (another module's) stay out of the config."""
    result = _run_cli("--ckpt_path", str(checkpoint), "--trainer.logger", "false", "--model.init_args.out_dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_report(json.loads((tmp_path / "report.json").read_text()), "tiny")


def test_cli_camera_ablation_runs_the_policy_on_grey_frames_and_says_so(checkpoint: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = _run_cli(
        "--model.init_args.policy_path",
        str(checkpoint),
        "--model.init_args.frames",
        "grey",
        "--data.init_args.max_episodes_per_task",
        "1",
        "--model.init_args.videos",
        "0",
        "--model.init_args.plots",
        "0",
        "--trainer.logger",
        "false",
        "--model.init_args.out_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["agent"] == "tiny [grey frames]" and report["run"]["frames"] == "grey" and len(report["episodes"]) == 4
    assert (tmp_path / "report.md").read_text().startswith("# NavBench: tiny [grey frames]\n")


def test_config_errors_name_a_missing_suite_file_an_unknown_task_and_an_unknown_agent(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    from s2e.cli import S2ECLI

    common = ["--config", str(CONFIG), "--config", str(QUICK), "--trainer.logger", "false"]
    cases = [
        (["--data.init_args.suite", str(tmp_path / "nope.json")], re.escape(f"suite file not found: {tmp_path / 'nope.json'}")),
        (["--data.init_args.tasks", "[stairs]"], r"unknown task 'stairs'; known tasks: \['both', 'empty', 'obstacle', 'pedestrian'\]"),
        (["--model.init_args.agent", "oracle"], "unknown agent 'oracle'"),
    ]
    for args, message in cases:  # each is one usage-error line, not jsonargparse's dump of every subtype
        with pytest.raises(SystemExit):
            S2ECLI(args=[*common, *args], run=False)
        err = capsys.readouterr().err
        assert re.search("error: " + message, err), err
        assert "Union" not in err
