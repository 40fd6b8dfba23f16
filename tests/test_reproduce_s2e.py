"""s2e.scripts.reproduce_s2e (tools/reproduce_s2e.py): the fine-tuning ablation end to end on a tiny
pretrained policy (every strategy trains for the same few seconds, then NavBench in both domains),
its summary with CIs, curves, skipped steps on rerun, a failed fit reported while the others go on,
and clear errors."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import pytest
from test_posttrain import pretrained  # noqa: F401  (fixture: a tiny pretrained checkpoint written by a Trainer)

from s2e.scripts import reproduce_s2e

METHODS = ["pretrained", "ram", "full", "decoder", "sft", "none"]
TASKS = ["empty", "obstacle", "pedestrian", "both"]
TINY_FIT = [
    "--data.init_args.num_envs",
    "2",
    "--data.init_args.steps_per_batch",
    "8",
    "--data.init_args.batches_per_epoch",
    "1",
    "--model.init_args.ppo.minibatch_size",
    "8",
    "--trainer.callbacks.init_args.every_n_epochs",
    "0",
]


def _argv(checkpoint: pathlib.Path, out: pathlib.Path, strategies: list[str], *fit_args: str) -> list[str]:
    return [
        "--pretrained",
        str(checkpoint),
        "--out",
        str(out),
        "--strategies",
        *strategies,
        "--minutes",
        "0.1",
        "--suite",
        "quick",
        "--bench-episodes",
        "2",
        "--fit-args",
        *TINY_FIT,
        *fit_args,
    ]


def _outputs(out: pathlib.Path) -> dict[pathlib.Path, int]:
    return {p: p.stat().st_mtime_ns for p in [*out.glob("*/last.ckpt"), *out.glob("*/navbench/report.json")]}


def test_budget_is_lightnings_max_time_and_the_control_trains_nothing(tmp_path: pathlib.Path) -> None:
    assert reproduce_s2e.max_time(0.1) == "00:00:00:06"
    assert reproduce_s2e.max_time(30) == "00:00:30:00"
    assert reproduce_s2e.max_time(60 * 25 + 1.5) == "01:01:01:30"
    assert reproduce_s2e.budget_minutes("01:01:01:30") == 60 * 25 + 1.5
    (tmp_path / "p.ckpt").write_bytes(b"")
    args = reproduce_s2e.parse_args(["--pretrained", str(tmp_path / "p.ckpt"), "--out", str(tmp_path), "--fit-args", "--x", "1"])
    assert args.strategies == ["ram", "full", "decoder", "sft", "none"] and args.fit_args == ["--x", "1"]
    command = " ".join(reproduce_s2e.fit_command("none", args))
    assert "--model.init_args.strategy ram --model.init_args.ppo.lr 0 --model.init_args.ppo.value_lr 0" in command
    assert command.endswith("--x 1") and "--model.init_args.task" not in command  # the yaml's task unless --task
    assert "reference_kl" not in command  # ram's shipped KL penalty stays in the control
    full = " ".join(reproduce_s2e.fit_command("full", args))
    assert "--model.init_args.strategy full --model.init_args.ppo.reference_kl 0 --trainer.max_time 00:00:30:00" in full


def test_a_missing_checkpoint_is_a_clear_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        reproduce_s2e.main(["--pretrained", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")])
    assert f"pretrained checkpoint not found: {tmp_path / 'nope.ckpt'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_curves_plot_the_overall_success_when_a_task_mix_also_logs_per_task_rates(tmp_path: pathlib.Path) -> None:
    """A task-mix run logs ``episode/success/<task>`` beside ``episode/success`` (real event files,
    the per-task tag written first): the success panel plots the overall rate."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "ram" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    writer = SummaryWriter(str(run))
    for step in range(3):
        writer.add_scalar("train/episode/success/obstacle", 0.1, step)
        writer.add_scalar("train/episode/success", 0.5, step)
        writer.add_scalar("ppo/entropy", 1.7, step)
    writer.close()
    used = reproduce_s2e.plot_curves({"ram": tmp_path / "ram"}, tmp_path / "curves.png")
    assert used["ram"] == ["train/episode/success", "ppo/entropy"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert reproduce_s2e.panel_tag(["train/ppo/kl_approx_mean"], ("kl_approx",)) == "train/ppo/kl_approx_mean"  # else: contains


@pytest.mark.slow
@pytest.mark.heavy
def test_ablation_end_to_end_then_rerun_skips_and_a_failed_fit_is_reported(
    pretrained: pathlib.Path,  # noqa: F811 (the imported fixture)
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "ablation"
    assert reproduce_s2e.main(_argv(pretrained, out, METHODS[1:])) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == METHODS and summary["failures"] == []
    for name, method in summary["methods"].items():
        assert method["status"] == "ok" and pathlib.Path(method["checkpoint"]).is_file()
        report = json.loads(pathlib.Path(method["report"]["json"]).read_text())
        assert report["agent"] == name and report["domains"] == ["sim", "recorded"] and report["suite"]["name"] == "quick"
        assert (out / name / "navbench" / "config.yaml").is_file()  # the CLI's saved config stays in the output, not the cwd
        for domain in ("sim", "recorded"):
            assert list(method["results"][domain]) == [*TASKS, "overall"]
            for task, metrics in method["results"][domain].items():
                assert list(metrics) == ["SR", "RC", "CT"]
                for entry in metrics.values():
                    assert entry["n"] == (8 if task == "overall" else 2)
                    assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
        if name != "pretrained":
            assert method["checkpoint"] == str(out / name / "last.ckpt")
            assert method["budget_minutes"] == 0.1 and method["task"] == "obstacle"
            assert method["rollout_batches"] > 0 and method["env_frames"] == 16 * method["rollout_batches"]  # 2 envs x 8 steps
    # the no-update control keeps the pretrained policy: the very same episodes
    episodes = {n: json.loads((out / n / "navbench" / "report.json").read_text())["episodes"] for n in ("pretrained", "none")}
    assert episodes["none"] == episodes["pretrained"]
    results_md = (out / "results.md").read_text()  # paired differences: the control changes no episode
    assert "## none vs pretrained, domain `sim`" in results_md and "| overall | 8 | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | 0 | 0 |" in results_md
    # learning curves: PPO diagnostics for the PPO runs, the SFT loss for sft
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "curves.png").stat().st_size > 20_000
    for name in ("ram", "full", "decoder", "none"):
        assert {"ppo/kl_approx", "ppo/clip_fraction", "ppo/entropy", "ppo/explained_variance"} <= set(summary["curve_tags"][name])
    assert "sft/loss" in summary["curve_tags"]["sft"]
    # printed: the CI tables, then one JSON line
    assert re.search(r"^\| none \| \d\.\d\d \[\d\.\d\d, \d\.\d\d\] \|", printed, re.M) and "## CT, domain `recorded`" in printed
    assert json.loads(printed.strip().splitlines()[-1])["failed"] == []
    compare_md = (out / "compare.md").read_text()
    assert compare_md.count("| decoder |") == 8  # SR / RC / CT / Stuck x 2 domains
    assert "## decoder vs pretrained, domain `recorded`" in compare_md  # the paired differences

    before = _outputs(out)
    assert len(before) == 11
    assert reproduce_s2e.main(_argv(pretrained, out, METHODS[1:])) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already") == 11 and not re.search(r"^\[(fit|NavBench) \w+\] (?!done already)", printed, re.M)
    assert _outputs(out) == before

    shutil.rmtree(out / "full")
    assert reproduce_s2e.main(_argv(pretrained, out, ["full", "ram"], "--data.init_args.num_envs", "0")) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["ram"]["status"] == "ok" and summary["methods"]["pretrained"]["status"] == "ok"
    [failure] = summary["failures"]
    assert summary["methods"]["full"]["status"] == "failed" and summary["methods"]["full"]["failures"] == [failure]
    assert failure["step"] == "fit full" and failure["exit_code"] != 0 and "--data.init_args.num_envs 0" in failure["command"]
    assert "num_envs must be >= 1" in pathlib.Path(failure["log"]).read_text()
    assert f"[fit full] FAILED with exit code {failure['exit_code']}" in capsys.readouterr().err
