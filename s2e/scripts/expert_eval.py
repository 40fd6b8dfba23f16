"""Measure the privileged expert's success rate, route completion and collisions per task.

    python tools/expert_eval.py --episodes 50 --tasks empty obstacle pedestrian both --robot wheeled

Episodes run batched (``--envs`` at a time) in ``NavEnv`` with tiny frames (the expert does not
look at them). Prints one line per task and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.expert import ExpertPlanner
from s2e.sim.rollout import expert_controller, run_episodes
from s2e.sim.tasks import TASKS


def evaluate(task: str, robot: str, episodes: int, envs: int, seed: int) -> dict[str, float]:
    """Run ``episodes`` expert episodes of one task; returns SR, mean RC, mean CT and wall seconds."""
    records = []
    start = time.perf_counter()
    batch_seed = seed
    while len(records) < episodes:
        n = min(envs, episodes - len(records))
        env = NavEnv(NavEnvConfig(task=task, robot=robot, image_size=(16, 16)), num_envs=n, seed=batch_seed)
        records += run_episodes(env, expert_controller(ExpertPlanner(env.robot)), record_frames=False)
        batch_seed += 1
    return {
        "success_rate": sum(r.success for r in records) / len(records),
        "route_completion": sum(r.route_completion for r in records) / len(records),
        "collisions_per_episode": sum(r.collisions for r in records) / len(records),
        "episodes": len(records),
        "seconds": round(time.perf_counter() - start, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--robot", default="wheeled", choices=["wheeled", "quadruped"])
    parser.add_argument("--envs", type=int, default=25, help="episodes simulated side by side")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Evaluate the expert on every task; prints and returns the figures."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for task in args.tasks:
        results[task] = evaluate(task, args.robot, args.episodes, args.envs, args.seed)
        r = results[task]
        print(
            f"{task:>10}: SR {r['success_rate']:.2f}  RC {r['route_completion']:.2f}  CT {r['collisions_per_episode']:.2f}  ({r['episodes']} episodes, {r['seconds']} s)"
        )
    summary = {"robot": args.robot, "seed": args.seed, "results": results}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
