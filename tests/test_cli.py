"""``python -m s2e``: help, a real fit from experiments/pretrain.yaml on tiny shards, overlays, errors."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest
import torch
import yaml
from test_pretrain import IMAGE, TINY_POLICY, fit_demo_anchors, write_demo_shards

from s2e.checkpoint import load_policy_from_checkpoint
from s2e.cli import S2ECLI
from s2e.pretrain import PretrainModule

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("cli_demo")
    shards = write_demo_shards(root)
    return shards, fit_demo_anchors(shards, root / "anchors.npz")


def _tiny_args(shards: str, anchors: pathlib.Path, out: pathlib.Path) -> list[str]:
    """experiments/pretrain.yaml pointed at tiny shards, a tiny model and a few steps."""
    overrides = {
        "model": {"init_args": {"anchors_path": str(anchors), "policy": TINY_POLICY, "warmup_steps": 1, "image_every_n_steps": 0}},
        "data": {
            "init_args": {
                "train_shards": shards,
                "val_shards": shards,
                "image_size": [IMAGE, IMAGE],
                "batch_size": 4,
                "num_workers": 0,
                "samples_per_epoch": 8,
                "val_samples_per_epoch": 4,
                "goal_horizon_s": [1.0, 2.0],
            }
        },
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "logger": {"init_args": {"save_dir": str(out)}},
        },
    }
    return ["--config", str(ROOT / "experiments" / "pretrain.yaml"), "--config", json.dumps(overrides)]


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "s2e", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout


def test_fit_from_the_experiment_config_saves_config_and_checkpoints_then_validates(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo
    args = _tiny_args(shards, anchors, tmp_path)
    cli = S2ECLI(args=["fit", *args])
    assert isinstance(cli.model, PretrainModule) and cli.trainer.global_step == 4
    log_dir = pathlib.Path(cli.trainer.log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 1234
    assert saved["model"]["class_path"] == "s2e.pretrain.PretrainModule"
    checkpoints = {p.name for p in (log_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)

    policy, timing, anchor_set = load_policy_from_checkpoint(log_dir / "checkpoints" / "last.ckpt")
    assert anchor_set.num_anchors == 4 and timing.context_frames == 5
    validated = S2ECLI(args=["validate", *args, "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
    assert "val/ade" in validated.trainer.callback_metrics
    torch.testing.assert_close(validated.model.policy.state_dict()["heads.score.weight"], policy.state_dict()["heads.score.weight"])


def test_ckpt_path_last_resumes_the_previous_run_of_the_experiment(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo
    args = _tiny_args(shards, anchors, tmp_path)
    first = S2ECLI(args=["fit", *args, "--trainer.max_epochs", "1"])
    assert first.trainer.global_step == 2
    resumed = S2ECLI(args=["fit", *args, "--ckpt_path", "last"])  # a new logger version, same experiment
    assert resumed.trainer.log_dir != first.trainer.log_dir
    assert pathlib.Path(resumed.trainer.ckpt_path) == pathlib.Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert resumed.trainer.global_step == 4


def test_single_gaussian_overlay_trains_one_mode(demo, tmp_path: pathlib.Path) -> None:
    shards, _ = demo
    single = fit_demo_anchors(shards, tmp_path / "anchors_single.npz", num_anchors=1)
    args = _tiny_args(shards, single, tmp_path)
    args[2:2] = ["--config", str(ROOT / "experiments" / "pretrain_single.yaml")]  # after pretrain.yaml, before the overrides
    cli = S2ECLI(args=["fit", *args, "--trainer.max_epochs", "1"])
    assert cli.model.policy.config.num_anchors == 1 and cli.model.hparams.top_k == 1
    assert cli.trainer.global_step == 2


def test_missing_shard_is_named(demo, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    shards, anchors = demo
    missing = str(tmp_path / "nowhere-000000.tar")
    # the DataModule's FileNotFoundError becomes one usage error line, not jsonargparse's Union dump
    with pytest.raises(SystemExit):
        S2ECLI(args=_tiny_args(missing, anchors, tmp_path), run=False)
    err = capsys.readouterr().err
    assert f"error: shard not found: {missing}" in err
    assert "Union" not in err


def test_anchor_count_not_matching_the_model_is_refused(demo, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    shards, anchors = demo
    single = ["--config", str(ROOT / "experiments" / "pretrain_single.yaml"), "--model.init_args.anchors_path", str(anchors)]
    with pytest.raises(SystemExit):
        S2ECLI(args=[*_tiny_args(shards, anchors, tmp_path), *single], run=False)
    assert re.search("num_anchors=1 but .* holds 4 anchors", capsys.readouterr().err)


def test_a_checkpoint_of_another_stage_or_no_checkpoint_at_all_is_refused_by_name(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 16, item 15: ``fit --config experiments/pretrain.yaml --ckpt_path posttrain.ckpt`` switched to
    PostTrainModule silently and then failed with unrelated errors."""
    from onnx_helpers import TINY, random_policy, write_policy_checkpoint

    pre_policy, timing, _ = random_policy("small", image_size=(IMAGE, IMAGE), **TINY)
    post_policy, _, _ = random_policy("small", ram=True, image_size=(IMAGE, IMAGE), **TINY)
    pre = write_policy_checkpoint(tmp_path / "pretrain.ckpt", pre_policy, timing)
    post = write_policy_checkpoint(tmp_path / "posttrain.ckpt", post_policy, timing)
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 8)
    pretrain = ["--config", str(ROOT / "experiments" / "pretrain.yaml"), "--model.init_args.anchors_path", str(tmp_path / "a.npz")]
    posttrain = ["--config", str(ROOT / "experiments" / "posttrain.yaml"), "--model.init_args.pretrained", str(pre)]
    cases = [
        (
            pretrain,
            post,
            "was written by s2e.posttrain.PostTrainModule (RL post-training), but this `fit` configures s2e.pretrain.PretrainModule (pretraining)",
        ),
        (
            posttrain,
            pre,
            "was written by s2e.pretrain.PretrainModule (pretraining), but this `fit` configures s2e.posttrain.PostTrainModule (RL post-training)",
        ),
        (pretrain, noise, f"{noise} is not a PyTorch checkpoint"),
    ]
    for config, checkpoint, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            S2ECLI(args=["fit", *config, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "weights_only" not in err, err
