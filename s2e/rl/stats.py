"""What a rollout batch says about the policy: per-step reward terms and finished-episode outcomes."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from tensordict import TensorDictBase

from s2e.sim.rewards import TERMS


def rollout_stats(batch: TensorDictBase, task_names: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Means over a collector batch: ``reward/step``, ``reward_terms/<term>`` per step (unweighted
    term values, as the env reports them) and, over the episodes that ended in this batch,
    ``episode/return``, ``episode/success``, ``episode/route_completion``, ``episode/collisions``
    and ``episode/count`` (episode keys are absent when none ended).

    On a task mix (the env's ``task`` key, indices into ``task_names``), also ``episode/success/<task>``
    and ``episode/count/<task>`` per task that ended episodes: whether RL improves one task at
    the cost of another shows in training, before any benchmark."""
    nxt = batch["next"]
    stats = {"reward/step": float(nxt["reward"].mean())}
    for term in TERMS:
        stats[f"reward_terms/{term}"] = float(nxt["reward_terms", term].mean())
    ended = nxt["done"].squeeze(-1)
    count = int(ended.sum())
    if count:
        stats["episode/count"] = float(count)
        stats["episode/return"] = float(nxt["episode_reward"][ended].mean())
        stats["episode/success"] = float(nxt["success"][ended].float().mean())
        stats["episode/route_completion"] = float(nxt["route_completion"][ended].mean())
        stats["episode/collisions"] = float(nxt["collisions"][ended].float().mean())
    if task_names and "task" in nxt.keys():
        stats.update(_per_task_outcomes(nxt, ended, task_names))
    return stats


def _per_task_outcomes(nxt: TensorDictBase, ended: torch.Tensor, task_names: Sequence[str]) -> dict[str, float]:
    """Success and episode count per task name (a name listed twice in a mix pools its indices)."""
    task = nxt["task"].squeeze(-1)
    out = {}
    for name in dict.fromkeys(task_names):
        indices = torch.tensor([i for i, n in enumerate(task_names) if n == name], device=task.device)
        rows = ended & torch.isin(task, indices)
        if rows.any():
            out[f"episode/success/{name}"] = float(nxt["success"][rows].float().mean())
            out[f"episode/count/{name}"] = float(rows.sum())
    return out
