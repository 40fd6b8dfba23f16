"""Closed-loop episodes of a TorchRL policy module: one episode per env, deterministic by default.

Used by post-training for its rollout videos and by ``tools/posttrain_eval.py`` for the
before/after table (``s2e.sim.rollout.run_episodes`` drives the simulator's own controllers instead,
``s2e.bench.runner.run_batch`` benchmark agents). Each env's *first* episode counts; an env that
finished keeps stepping (its later steps are ignored) until every env is done, so all episodes get
the env's own time limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, set_interaction_type
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp


@dataclass
class EpisodeOutcomes:
    """Per-env results of one episode each ([N] arrays) and, if asked, env 0's camera frames."""

    episode_return: np.ndarray
    success: np.ndarray
    route_completion: np.ndarray
    collisions: np.ndarray
    frames: Optional[np.ndarray] = None  # [T, H, W, 3] uint8, env 0 until its episode ended

    def summary(self) -> dict[str, float]:
        return {
            "return": float(self.episode_return.mean()),
            "success": float(self.success.mean()),
            "route_completion": float(self.route_completion.mean()),
            "collisions": float(self.collisions.mean()),
            "episodes": int(len(self.success)),
        }


@torch.no_grad()
def run_policy_episodes(
    env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    *,
    deterministic: bool = True,
    record_frames: bool = False,
    max_steps: Optional[int] = None,
) -> EpisodeOutcomes:
    """Reset ``env`` (a NavEnv with ``RewardSum``), run ``policy`` until each env ended one episode
    (or ``max_steps``; unfinished episodes then count with their state so far)."""
    n = env.batch_size[0]
    done = torch.zeros(n, dtype=torch.bool)
    result = {key: torch.zeros(n) for key in ("episode_reward", "success", "route_completion", "collisions")}
    frames = []
    td = env.reset()
    if record_frames:
        frames.append(td["frames"][0, -1])
    steps = 0
    mode = InteractionType.DETERMINISTIC if deterministic else InteractionType.RANDOM
    while not done.all() and (max_steps is None or steps < max_steps):
        with set_interaction_type(mode):
            td = env.step(policy(td))
        nxt = td["next"]
        steps += 1
        live = ~done
        for key in result:
            result[key][live] = nxt[key].squeeze(-1).float()[live]
        if record_frames and not done[0]:
            frames.append(nxt["frames"][0, -1])
        done |= nxt["done"].squeeze(-1)
        td = step_mdp(td)
    return EpisodeOutcomes(
        episode_return=result["episode_reward"].numpy(),
        success=result["success"].numpy() > 0.5,
        route_completion=result["route_completion"].numpy(),
        collisions=result["collisions"].numpy(),
        frames=torch.stack(frames).permute(0, 2, 3, 1).numpy() if record_frames else None,
    )
