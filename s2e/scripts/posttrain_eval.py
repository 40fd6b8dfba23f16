"""Learning evidence for RL post-training: pretrained vs ``ram`` vs ``full`` (vs any strategy), end to end.

    python tools/posttrain_eval.py --pretrained artifacts/demo/pretrain.ckpt --out artifacts/posttrain/evidence \
        --strategies ram full --minutes 10 --episodes 32

1. every strategy is trained with the real CLI (``python -m s2e fit --config experiments/posttrain.yaml``)
   for at most ``--minutes`` (``--trainer.max_time``), all strategies at the same time (``--sequential``
   trains one after the other);
2. the pretrained policy and every run's ``last.ckpt`` (rebuilt by ``load_policy_from_checkpoint``)
   drive the same ``--episodes`` scenes of the training task, deterministically (best anchor mode
   through the shared controller), in the training domain (``sim``) and the held-out appearance
   domain of the pretraining data (``recorded``), ``--eval-jobs`` evaluations at a time;
3. the training curves (episode return and success of the rollouts, read back from TensorBoard)
   go to ``curves.png``; the table is printed, the last line is one JSON object.

A finished run is reused (its ``last.ckpt`` exists) unless ``--retrain``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from s2e.checkpoint import load_policy_from_checkpoint
from s2e.control import LOOKAHEAD_TIME, ControllerLimits
from s2e.rl.actor import driving_policy
from s2e.rl.collect import make_rollout_env
from s2e.rl.evaluate import run_policy_episodes
from s2e.scripts import REPO_ROOT, strategy_fit_args
from s2e.sim.env import NavEnvConfig
from s2e.sim.robots import get_robot

CURVE_TAGS = ("train/episode/return", "train/episode/success")


def fit_command(strategy: str, args: argparse.Namespace) -> list[str]:
    root = args.out / strategy
    return [
        sys.executable,
        "-m",
        "s2e",
        "fit",
        "--config",
        str(REPO_ROOT / "experiments" / "posttrain.yaml"),
        "--model.init_args.pretrained",
        str(args.pretrained),
        *strategy_fit_args(strategy),
        "--model.init_args.task",
        args.task,
        "--trainer.callbacks.init_args.every_n_epochs",
        "0",  # RolloutVideo, the yaml's last callback
        "--data.init_args.num_envs",
        str(args.envs),
        "--data.init_args.steps_per_batch",
        str(args.steps),
        "--trainer.max_epochs",
        str(args.max_epochs),
        "--trainer.max_time",
        f"00:00:{args.minutes:02d}:00",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        *args.fit_args,
    ]


def last_checkpoint(strategy: str, args: argparse.Namespace) -> Path | None:
    found = sorted((args.out / strategy).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def train(strategies: list[str], args: argparse.Namespace) -> dict[str, Path]:
    """CLI fits of the strategies (finished ones reused unless ``--retrain``); returns each last.ckpt."""
    todo = [s for s in strategies if args.retrain or last_checkpoint(s, args) is None]
    started = time.monotonic()
    running = []
    for strategy in todo:
        command = fit_command(strategy, args)
        print(f"[{strategy}] {' '.join(command)}", flush=True)
        (args.out / strategy).mkdir(parents=True, exist_ok=True)
        log = open(args.out / strategy / "fit.log", "w")
        running.append((strategy, subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log))
        if args.sequential:
            running[-1][1].wait()
    for strategy, process, log in running:
        if process.wait() != 0:
            raise SystemExit(f"[{strategy}] fit failed with exit code {process.returncode}; see {log.name}")
        log.close()
        print(f"[{strategy}] trained ({time.monotonic() - started:.0f} s since the first fit started)", flush=True)
    return {s: last_checkpoint(s, args) for s in strategies}


def evaluate(checkpoint: Path, domain: str, args: argparse.Namespace) -> dict[str, float]:
    """One deterministic episode per env over ``--episodes`` scenes drawn from ``--eval-seed``."""
    torch.set_num_threads(1)  # evaluations run side by side in worker processes
    policy, timing, _ = load_policy_from_checkpoint(checkpoint)
    robot = get_robot(args.robot)
    limits = ControllerLimits(max_speed=robot.max_speed, max_yaw_rate=robot.max_omega, lookahead_time=args.lookahead_time)
    config = NavEnvConfig(task=args.task, robot=args.robot, timing=timing, image_size=policy.config.image_size, domain=domain)
    env = make_rollout_env(config, args.episodes, seed=args.eval_seed)
    return run_policy_episodes(env, driving_policy(policy, timing.waypoint_dt, limits)).summary()


def read_curves(run_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {tag: [] for tag in CURVE_TAGS}
    for events_file in sorted(run_root.glob("**/events.out.tfevents.*")):
        events = EventAccumulator(str(events_file.parent)).Reload()
        for tag in CURVE_TAGS:
            if tag in events.Tags()["scalars"]:
                curves[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    return curves


def plot(curves: dict[str, dict[str, list[tuple[int, float]]]], table: dict[str, dict[str, dict[str, float]]], path: Path, smooth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for strategy, runs in curves.items():
        for ax, tag in zip(axes[:2], CURVE_TAGS):
            if runs[tag]:
                steps, values = map(np.asarray, zip(*runs[tag]))
                kernel = np.ones(min(smooth, len(values))) / min(smooth, len(values))
                ax.plot(steps, values, alpha=0.25)
                ax.plot(steps[len(kernel) - 1 :], np.convolve(values, kernel, mode="valid"), label=strategy, color=ax.lines[-1].get_color())
            ax.set_title(f"{tag} (rollouts, {smooth}-point mean)")
            ax.set_xlabel("logged training step")
            ax.legend()
    names = list(table)
    domains = list(next(iter(table.values())))
    width = 0.8 / len(domains)
    for i, domain in enumerate(domains):
        axes[2].bar(np.arange(len(names)) + i * width, [table[n][domain]["success"] for n in names], width, label=domain)
    axes[2].set_xticks(np.arange(len(names)) + width * (len(domains) - 1) / 2, names)
    axes[2].set_title("success rate, deterministic evaluation")
    axes[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, default=Path("artifacts/demo/pretrain.ckpt"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/posttrain/evidence"))
    parser.add_argument("--strategies", nargs="*", default=["ram", "full"])
    parser.add_argument("--task", default="obstacle")
    parser.add_argument("--robot", default="wheeled")
    parser.add_argument("--domains", nargs="+", default=["sim", "recorded"])
    parser.add_argument("--minutes", type=int, default=10, help="training time limit per strategy")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64, help="control steps per env per rollout batch")
    parser.add_argument("--episodes", type=int, default=32, help="evaluation episodes per domain")
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--lookahead-time", type=float, default=LOOKAHEAD_TIME)
    parser.add_argument("--smooth", type=int, default=10)
    parser.add_argument("--eval-jobs", type=int, default=2, help="evaluations run at the same time")
    parser.add_argument("--sequential", action="store_true", help="train the strategies one after the other")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra CLI arguments for every fit")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate and plot; prints the table and, last, the JSON result."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.pretrained.is_file():
        parser.error(f"pretrained checkpoint not found: {args.pretrained} (run tools/demo.py first)")

    checkpoints = {"pretrained": args.pretrained, **train(args.strategies, args)}
    table: dict[str, dict[str, dict[str, float]]] = {name: {} for name in checkpoints}
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.eval_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {(name, domain): pool.submit(evaluate, checkpoint, domain, args) for name, checkpoint in checkpoints.items() for domain in args.domains}
        for (name, domain), job in jobs.items():
            table[name][domain] = job.result()
            print(f"[eval] {name:10s} {domain:9s} {table[name][domain]} ({time.monotonic() - started:.0f} s)", flush=True)
    curves = {s: read_curves(args.out / s) for s in args.strategies}
    plot(curves, table, args.out / "curves.png", args.smooth)

    print(f"\n{args.task} task, {args.episodes} episodes per domain, deterministic policy")
    print(f"{'policy':10s} {'domain':9s} {'return':>8s} {'success':>8s} {'route':>7s} {'collis.':>8s}")
    for name, domains in table.items():
        for domain, m in domains.items():
            print(f"{name:10s} {domain:9s} {m['return']:8.2f} {m['success']:8.2f} {m['route_completion']:7.2f} {m['collisions']:8.2f}")
    print(f"curves: {args.out / 'curves.png'}")
    print(
        json.dumps(
            {
                "task": args.task,
                "episodes": args.episodes,
                "results": table,
                "checkpoints": {k: str(v) for k, v in checkpoints.items()},
                "png": str(args.out / "curves.png"),
            }
        )
    )
