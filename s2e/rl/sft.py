"""The ``sft`` strategy: expert labels from the simulator's privileged planner, and the supervised update.

:class:`ExpertAction` asks :class:`s2e.sim.expert.ExpertPlanner` for the expert's (v, omega) at every
reset and step and writes it as the observation ``expert_action``, so any TorchRL collector
(in-process or in worker processes) can roll the expert out. The supervised target is the expert's
chosen arc over the policy's horizon (:func:`arc_waypoints`): the trajectory the expert would drive
if it held its command, sampled at the TimingSpec's waypoint times, normalized like the pretraining
data (divided by its mean step length). :func:`sft_update` fits the whole policy to those arcs with
the pretraining loss (AGDM), in PPO's minibatch passes (:class:`s2e.rl.ppo.PPOConfig`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import Transform

from s2e.distributions import agdm_loss
from s2e.geometry import trajectory_scale
from s2e.model.policy import S2EPolicy
from s2e.rl.ppo import OptimizerStep, PPOConfig, minibatch_indices
from s2e.sim.expert import ExpertPlanner
from s2e.timing import TimingSpec

EXPERT_KEY = "expert_action"


class ExpertAction(Transform):
    """Writes the privileged expert's command [N, 2] under ``expert_action`` (needs a NavEnv parent)."""

    def __init__(self) -> None:
        super().__init__(in_keys=[], out_keys=[EXPERT_KEY])
        self._planner: Optional[ExpertPlanner] = None

    def _plan(self) -> torch.Tensor:
        env = self.parent.base_env
        if self._planner is None:
            self._planner = ExpertPlanner(env.robot)
        return self._planner.plan(env.world, env.robot_xy, env.robot_yaw).action

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        tensordict_reset.set(EXPERT_KEY, self._plan())
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set(EXPERT_KEY, self._plan())
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        observation_spec[EXPERT_KEY] = Unbounded(shape=(*observation_spec.shape, 2), device=observation_spec.device)
        return observation_spec


def arc_waypoints(command: torch.Tensor, waypoint_dt: float, num_waypoints: int) -> torch.Tensor:
    """Robot-frame points [..., T, 2] of holding (v, omega) = command [..., 2] for t = waypoint_dt .. T * waypoint_dt."""
    t = torch.arange(1, num_waypoints + 1, dtype=command.dtype, device=command.device) * waypoint_dt
    v, w = command[..., 0:1], command[..., 1:2]
    straight = w.abs() < 1e-4
    safe_w = torch.where(straight, torch.ones_like(w), w)
    x = torch.where(straight, v * t, v / safe_w * torch.sin(safe_w * t))
    y = torch.where(straight, torch.zeros_like(v * t), v / safe_w * (1.0 - torch.cos(safe_w * t)))
    return torch.stack([x, y], dim=-1)


def expert_targets(command: torch.Tensor, waypoint_dt: float, num_waypoints: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized waypoints [..., T, 2], scale [...] metres per step) of the expert's arc."""
    metres = arc_waypoints(command, waypoint_dt, num_waypoints)
    scale = trajectory_scale(metres)
    return metres / scale[..., None, None], scale


class NoisyExpert(torch.nn.Module):
    """The collector policy of ``sft``: the expert's command plus Gaussian noise (std per (v, omega)),
    so the supervised data also covers states slightly off the expert's path (the env clamps the
    command to the robot's limits)."""

    def __init__(self, noise_std: tuple[float, float]) -> None:
        super().__init__()
        self.register_buffer("noise_std", torch.tensor([float(s) for s in noise_std]), persistent=False)

    def forward(self, expert_action: torch.Tensor) -> torch.Tensor:
        return expert_action + torch.randn_like(expert_action) * self.noise_std


def sft_update(batch: TensorDictBase, policy: S2EPolicy, timing: TimingSpec, config: PPOConfig, optimizer_step: OptimizerStep) -> dict[str, float]:
    """One rollout batch of supervised fine-tuning: the AGDM loss of the policy's prediction from the
    stored frames against the expert's arcs, over ``config.epochs`` shuffled minibatch passes;
    returns the ``sft/*`` losses (means over minibatches)."""
    flat = batch.reshape(-1)
    target, scale = expert_targets(flat[EXPERT_KEY], timing.waypoint_dt, timing.num_waypoints)
    logged: dict[str, list[float]] = defaultdict(list)
    for index in minibatch_indices(flat.shape[0], config.epochs, config.minibatch_size):
        out = policy(flat["frames"][index], flat["goal"][index])
        losses = agdm_loss(policy.mixture(out), out["scale"], target[index], scale[index], policy.anchor_points)
        optimizer_step(losses["loss"])
        for key in ("loss", "nll", "cls", "scale"):
            logged[key].append(float(losses[key].detach()))
    return {f"sft/{k}": float(np.mean(v)) for k, v in logged.items()}
