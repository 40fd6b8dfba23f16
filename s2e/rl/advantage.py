"""GAE for a rollout batch [envs, time], with values stored by the collector.

The collector's policy writes ``state_value`` at every step, so V(s_t) costs nothing here. The value
of the *next* observation is V(s_{t+1}) from the same row, except where the row ends: at an episode
end (s_{t+1} is the terminal observation, not the reset one that follows) and at the batch's last
step. Only those next observations are evaluated again (CleanRL computes ``next_value`` the same way):
from their frame features when the env provides them (:mod:`s2e.rl.features`), else by encoding
their frames, which keeps GAE at a few percent of a batch's encoder cost. A terminated episode's next value is
masked by GAE; a time-limit truncation is bootstrapped from V(terminal observation).
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.objectives.value.functional import generalized_advantage_estimate

ValueOfObservation = Callable[[TensorDictBase], torch.Tensor]  # td with frames or frame_features, goal [K] -> [K, 1]


@torch.no_grad()
def next_state_values(batch: TensorDictBase, value_of: ValueOfObservation) -> torch.Tensor:
    """[envs, time, 1] V(next observation) for a batch [envs, time] carrying ``state_value``."""
    values = batch["state_value"]
    following = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    ends = batch["next", "done"].clone()
    ends[:, -1] = True
    rows = ends.squeeze(-1)
    following[rows] = value_of(batch["next"][rows])
    return following


@torch.no_grad()
def add_gae(batch: TensorDictBase, value_of: ValueOfObservation, gamma: float, lmbda: float) -> TensorDictBase:
    """Write ``advantage`` and ``value_target`` [envs, time, 1] into ``batch`` (and return it)."""
    if batch.ndim != 2:
        raise ValueError(f"GAE needs a rollout batch [envs, time], got batch size {tuple(batch.shape)}")
    advantage, target = generalized_advantage_estimate(
        gamma,
        lmbda,
        batch["state_value"],
        next_state_values(batch, value_of),
        batch["next", "reward"],
        batch["next", "done"],
        batch["next", "terminated"],
        time_dim=-2,
    )
    batch.set("advantage", advantage)
    batch.set("value_target", target)
    return batch
