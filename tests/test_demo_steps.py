"""The demo (s2e/scripts/demo.py) wires real commands together: the paths one step writes must be what the next reads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from datamodules.pipeline import expand_shards
from s2e.scripts import demo, render_demo_data


def _args(episodes: int) -> argparse.Namespace:
    return argparse.Namespace(episodes=episodes, val_episodes=16, epochs=1, posttrain_epochs=1, bench_episodes=12)


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("episodes", [150, 200, 201, 400])
def test_pretraining_reads_exactly_the_shards_the_render_step_writes(tmp_path: Path, episodes: int) -> None:
    """The render step writes ceil(episodes / shard size) shards; the pretraining step's brace
    pattern must expand to exactly those files (a glob is not expanded by the data module)."""
    per_shard = render_demo_data.build_parser().parse_args(["--out", "x", "--episodes", "1"]).shard_episodes
    assert per_shard == demo.SHARD_EPISODES
    steps = {step.name: step for step in demo.build_steps(tmp_path, _args(episodes))}
    shards = tmp_path / "shards" / "train"
    shards.mkdir(parents=True)
    written = [shards / f"demo-{i:06d}.tar" for i in range(-(-episodes // per_shard))]
    for path in written:
        path.touch()
    pattern = _option(steps["AGDM pretraining (small policy)"].command, "--data.init_args.train_shards")
    assert sorted(expand_shards(pattern)) == sorted(str(p) for p in written)
    assert steps["render demo recordings (train)"].output == written[0]


def test_every_navbench_step_reports_where_the_compare_step_reads(tmp_path: Path) -> None:
    steps = demo.build_steps(tmp_path, _args(400))
    compare = next(s for s in steps if s.name == "NavBench: side by side")
    bench = [s for s in steps if s.name.startswith("NavBench standard suite")]
    assert {_option(s.command, "--model.init_args.out_dir") for s in bench} == {a for a in compare.command if "/navbench/" in a and not a.endswith(".md")}
    for step in bench:
        assert _option(step.command, "--data.init_args.max_episodes_per_task") == "12"
        assert int(_option(step.command, "--data.init_args.num_envs")) == 48  # every task of a run in one batch


def test_the_rl_step_keeps_the_newest_run_and_plots_its_curves(tmp_path: Path) -> None:
    """After the RL fit: the newest run's last.ckpt becomes posttrain.ckpt and its TensorBoard
    scalars (real event files) become the learning-curve PNG the demo prints."""
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "demo"
    logs = out / "lightning_logs"
    step = next(s for s in demo.build_steps(out, _args(400)) if s.name.startswith("RL post-training"))
    assert step.output == out / "posttrain.ckpt" and _option(step.command, "--trainer.max_epochs") == "1"
    for version, content in ((0, b"old"), (1, b"new")):
        run = logs / "posttrain" / f"version_{version}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(content)
        writer = SummaryWriter(str(run))
        for batch in range(3):
            writer.add_scalar("train/episode/return", float(batch), batch)
        writer.close()
    step.after()
    assert (out / "posttrain.ckpt").read_bytes() == b"new"
    assert (out / "posttrain_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
