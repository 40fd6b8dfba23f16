"""Rollout statistics the RL logs show: episode outcomes overall and, on a task mix, per task."""

from __future__ import annotations

from dataclasses import replace

import torch

from s2e.rl.collect import make_rollout_env
from s2e.rl.stats import rollout_stats
from s2e.sim.env import NavEnvConfig
from s2e.sim.generator import SceneConfig

# Episodes of a few control steps (time limit ~0.5 s): many end inside a short rollout.
SHORT = NavEnvConfig(image_size=(16, 16), scene=SceneConfig(route_length=(6.0, 8.0)), time_limit_factor=0.01, time_limit_slack=0.5)


def _rollout(config: NavEnvConfig, steps: int = 12):
    env = make_rollout_env(config, num_envs=16, seed=3)
    torch.manual_seed(0)
    return env.rollout(steps, break_when_any_done=False)


def test_a_task_mix_splits_episode_outcomes_by_task():
    names = ["empty", "obstacle", "obstacle", "both"]  # obstacle listed twice: its indices pool
    batch = _rollout(replace(SHORT, task=tuple(names)))
    stats = rollout_stats(batch, names)
    ended = batch["next", "done"].squeeze(-1)
    task = batch["next", "task"].squeeze(-1)
    assert {k for k in stats if k.startswith("episode/count/")} == {f"episode/count/{n}" for n in ("empty", "obstacle", "both")}
    assert stats["episode/count/obstacle"] == float((ended & ((task == 1) | (task == 2))).sum())
    assert sum(stats[f"episode/count/{n}"] for n in ("empty", "obstacle", "both")) == stats["episode/count"]
    for name, rows in (("empty", task == 0), ("both", task == 3)):
        expected = batch["next", "success"].squeeze(-1)[ended & rows].float().mean()
        assert stats[f"episode/success/{name}"] == float(expected)


def test_one_task_logs_no_per_task_outcomes():
    batch = _rollout(SHORT)
    assert "task" not in batch["next"].keys()
    stats = rollout_stats(batch, ["both"])
    assert stats["episode/count"] > 0 and not any(k.startswith("episode/count/") for k in stats)
