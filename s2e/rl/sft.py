"""Expert labels for the ``sft`` strategy: the simulator's privileged planner, as an env transform.

:class:`ExpertAction` asks :class:`s2e.sim.expert.ExpertPlanner` for the expert's (v, omega) at every
reset and step and writes it as the observation ``expert_action``, so any TorchRL collector
(in-process or in worker processes) can roll the expert out. The supervised target is the expert's
chosen arc over the policy's horizon (:func:`arc_waypoints`): the trajectory the expert would drive
if it held its command, sampled at the TimingSpec's waypoint times, normalized like the pretraining
data (divided by its mean step length).
"""

from __future__ import annotations

from typing import Optional

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import Transform

from s2e.geometry import trajectory_scale
from s2e.sim.expert import ExpertPlanner

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
