"""`make demo`: the S2E pipeline end to end on the embedded simulator, on CPU.

    python tools/demo.py --out artifacts/demo

Steps (each prints its progress; a rerun skips every step whose output already exists):

1. render demo "recordings" with the simulator's expert in the ``recorded`` appearance domain
   (the stand-in for real navigation video), written as shards;
2. dataset statistics of those shards;
3. K-Means anchors over their normalized future trajectories;
4. AGDM pretraining of the small policy through the Lightning CLI (``experiments/pretrain.yaml``);
5. RL post-training with the Residual Attention Module in the ``sim`` domain (``experiments/posttrain.yaml``,
   4 epochs of its recipe), its learning curves as ``posttrain_curves.png``;
6. NavBench on held-out episodes of the standard suite (12 per task, both appearance domains):
   straight-to-goal, the pretrained policy with real and with grey frames (does it use its
   camera?) and the post-trained policy, then SR / RC / CT with bootstrap 95 % CIs side by side
   (``experiments/navbench.yaml``);
7. TorchScript + torch.export of the post-trained policy;
8. the robot runtime on a rendered video, drawing the plan over it.

Every step is a plain command of the README's workflow, run as a subprocess, so the demo exercises
exactly what users run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from s2e.scripts import REPO_ROOT

SHARD_EPISODES = 200  # render_demo_data --shard-episodes default


@dataclass
class Step:
    name: str
    output: Path  # the step is done when this exists
    command: list[str]
    after: Optional[Callable[[], None]] = None  # moves the command's result to ``output``


def _newest(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return found[-1]


def build_steps(out: Path, args: argparse.Namespace) -> list[Step]:
    py = sys.executable
    shards = out / "shards"
    logs = out / "lightning_logs"
    size = "64x64"  # the small preset's input size
    last_shard = (args.episodes - 1) // SHARD_EPISODES  # render_demo_data's default: 200 episodes per shard
    train_shards = str(shards / "train" / f"demo-{{000000..{last_shard:06d}}}.tar")
    return [
        Step(
            "render demo recordings (train)",
            shards / "train" / "demo-000000.tar",
            [
                py,
                "tools/render_demo_data.py",
                "--out",
                str(shards / "train"),
                "--episodes",
                str(args.episodes),
                "--domain",
                "recorded",
                "--task",
                "both",
                "--size",
                size,
                "--envs",
                "64",
                "--prefix",
                "demo",
                "--seed",
                "0",
            ],
        ),
        Step(
            "render demo recordings (val)",
            shards / "val" / "val-000000.tar",
            [
                py,
                "tools/render_demo_data.py",
                "--out",
                str(shards / "val"),
                "--episodes",
                str(args.val_episodes),
                "--domain",
                "recorded",
                "--task",
                "both",
                "--size",
                size,
                "--envs",
                str(args.val_episodes),
                "--prefix",
                "val",
                "--seed",
                "1",
            ],
        ),
        Step(
            "dataset statistics",
            out / "stats" / "stats.json",
            [py, "tools/dataset_stats.py", "--shards", str(shards / "train" / "demo-*.tar"), "--out", str(out / "stats")],
        ),
        Step(
            "anchors",
            out / "anchors.npz",
            [py, "tools/compute_anchors.py", "--shards", str(shards / "train" / "demo-000000.tar"), "--num-anchors", "20", "--out", str(out / "anchors.npz")],
        ),
        Step(
            "AGDM pretraining (small policy)",
            out / "pretrain.ckpt",
            [
                py,
                "-m",
                "s2e",
                "fit",
                "--config",
                "experiments/pretrain.yaml",
                "--model.init_args.anchors_path",
                str(out / "anchors.npz"),
                "--data.init_args.train_shards",
                train_shards,
                "--data.init_args.val_shards",
                str(shards / "val" / "val-000000.tar"),
                "--trainer.max_epochs",
                str(args.epochs),
                "--trainer.default_root_dir",
                str(logs),
                "--trainer.logger.init_args.save_dir",
                str(logs),
            ],
            # the Lightning run's last checkpoint becomes the demo's stable path
            after=lambda: shutil.copy(_newest("**/last.ckpt", logs), out / "pretrain.ckpt"),
        ),
        Step(
            "RL post-training with RAM (sim domain)",
            out / "posttrain.ckpt",
            [
                py,
                "-m",
                "s2e",
                "fit",
                "--config",
                "experiments/posttrain.yaml",
                "--model.init_args.pretrained",
                str(out / "pretrain.ckpt"),
                "--trainer.max_epochs",
                str(args.posttrain_epochs),
                "--trainer.default_root_dir",
                str(logs),
                "--trainer.logger.init_args.save_dir",
                str(logs),
            ],
            after=lambda: _keep_posttrain(logs, out),
        ),
        *[
            navbench_step(out, name, agent_args, logs, args.bench_episodes)
            for name, agent_args in (
                ("straight", ["--model.init_args.agent", "straight"]),
                ("pretrained", ["--ckpt_path", str(out / "pretrain.ckpt")]),
                ("pretrained-grey", ["--ckpt_path", str(out / "pretrain.ckpt"), "--model.init_args.frames", "grey", "--data.init_args.domains", "[sim]"]),
                ("post-trained", ["--ckpt_path", str(out / "posttrain.ckpt")]),
            )
        ],
        Step(
            "NavBench: side by side",
            out / "navbench" / "compare.md",
            [
                py,
                "tools/navbench_compare.py",
                *(str(out / "navbench" / name) for name in ("straight", "pretrained", "pretrained-grey", "post-trained")),
                "--metrics",
                "success_rate",
                "route_completion",
                "collisions",
                "--out",
                str(out / "navbench" / "compare.md"),
            ],
        ),
        Step(
            "export TorchScript + torch.export",
            out / "export" / "policy.json",
            [py, "-m", "s2e", "export", "--ckpt_path", str(out / "posttrain.ckpt"), "--out", str(out / "export")],
        ),
        Step(
            "render an input video for the runtime",
            out / "preview" / "episode.mp4",
            [py, "tools/sim_preview.py", "--task", "both", "--domain", "recorded", "--size", size, "--seed", "7", "--out", str(out / "preview")],
        ),
        Step(
            "robot runtime on a rendered video",
            out / "run_policy" / "plan.mp4",
            [
                py,
                "tools/run_policy.py",
                "--policy",
                str(out / "export"),
                "--video",
                str(out / "preview" / "episode.mp4"),
                "--goal",
                "8",
                "0",
                "--out",
                str(out / "run_policy" / "plan.mp4"),
                "--commands",
                str(out / "run_policy" / "commands.csv"),
            ],
        ),
    ]


def _keep_posttrain(logs: Path, out: Path) -> None:
    """The RL run's last checkpoint becomes the demo's stable path, and its learning curves (return,
    success, KL, clip fraction, ... from TensorBoard) a PNG beside it."""
    from s2e.scripts.reproduce_s2e import plot_curves

    shutil.copy(_newest("posttrain/**/last.ckpt", logs), out / "posttrain.ckpt")
    plot_curves({"ram": logs / "posttrain"}, out / "posttrain_curves.png")
    print(f"RL learning curves: {out / 'posttrain_curves.png'}", flush=True)


def navbench_step(out: Path, name: str, agent_args: list[str], logs: Path, episodes_per_task: int) -> Step:
    """NavBench on the first ``episodes_per_task`` episodes per task of the standard suite (held-out
    scenes), in the ``sim`` and ``recorded`` domains unless the agent's arguments say otherwise."""
    report = out / "navbench" / name
    return Step(
        f"NavBench standard suite ({episodes_per_task} episodes per task): {name}",
        report / "report.json",
        [
            sys.executable,
            "-m",
            "s2e",
            "test",
            "--config",
            "experiments/navbench.yaml",
            "--data.init_args.max_episodes_per_task",
            str(episodes_per_task),
            "--data.init_args.num_envs",
            str(4 * episodes_per_task),
            "--model.init_args.videos",
            "1",
            *agent_args,
            "--model.init_args.name",
            name,
            "--model.init_args.out_dir",
            str(report),
            "--trainer.logger.init_args.save_dir",
            str(logs),
        ],
    )


def run(out: Path, args: argparse.Namespace) -> None:
    steps = build_steps(out, args)
    started = time.monotonic()
    for number, step in enumerate(steps, 1):
        header = f"[{number}/{len(steps)}] {step.name}"
        if step.output.exists():
            print(f"{header}: done already ({step.output})", flush=True)
            continue
        _run(header, step.command)
        if step.after is not None:
            step.after()
        if not step.output.exists():
            raise SystemExit(f"{header}: finished but {step.output} is missing")
    print(f"demo finished in {time.monotonic() - started:.0f} s; everything is under {out}", flush=True)


def _run(header: str, command: list[str]) -> None:
    print(f"{header}: {' '.join(command)}", flush=True)
    t0 = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{header}: failed with exit code {result.returncode}")
    print(f"{header}: ok in {time.monotonic() - t0:.0f} s", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--episodes", type=int, default=400, help="training episodes to render")
    parser.add_argument("--val-episodes", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=16, help="pretraining epochs (6400 windows each)")
    parser.add_argument(
        "--posttrain-epochs",
        type=int,
        default=4,
        help="RL post-training epochs of the shipped recipe (experiments/posttrain.yaml: 4 batches of 64 envs x 64 decisions each)",
    )
    parser.add_argument("--bench-episodes", type=int, default=12, help="standard-suite episodes per task for each NavBench run (24 = the whole suite)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # every step runs in the checkout (it reads experiments/), so outputs are named absolutely
    run(args.out.resolve(), args)
