"""What a rollout batch says about the policy: per-step reward terms and finished-episode outcomes."""

from __future__ import annotations

from tensordict import TensorDictBase

from s2e.sim.rewards import TERMS


def rollout_stats(batch: TensorDictBase) -> dict[str, float]:
    """Means over a collector batch: ``reward/step``, ``reward_terms/<term>`` per step (unweighted
    term values, as the env reports them) and, over the episodes that ended in this batch,
    ``episode/return``, ``episode/success``, ``episode/route_completion``, ``episode/collisions``
    and ``episode/count`` (episode keys are absent when none ended)."""
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
    return stats
