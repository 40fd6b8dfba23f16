"""The shared waypoint controller: a planned trajectory in metres -> a (v, omega) command.

The simulator, the closed-loop benchmark and the exported robot policy all call
:func:`waypoints_to_command`, so a policy is judged with exactly the controller it will drive with.
It is pure torch (no Python-side state, TorchScript- and torch.export-able) and differentiable
everywhere, so RL post-training can back-propagate through the command.

Choice: pure pursuit on a lookahead point taken at a fixed *time* along the plan.

* The lookahead point is the plan (with the robot at the origin at t=0) linearly interpolated at
  ``lookahead_time`` seconds. Interpolating in time, not picking the first waypoint beyond a
  distance, keeps the point a fixed linear blend of two waypoints: no discrete switch, so the
  command is smooth in the waypoints and the gradient never jumps.
* ``v`` is the path length covered up to the lookahead point divided by ``lookahead_time``: the
  speed the plan itself asks for (a straight plan with step ``s`` gives ``v = s / waypoint_dt``).
* ``omega = v * kappa`` with the pure-pursuit curvature ``kappa = 2 y / L^2`` of the arc through the
  origin (heading +x) and the lookahead point ``(x, y)``; left (+y) gives positive omega (REP-103).
* Limits use a smooth saturation (identity below 80 % of the limit, a tanh knee above it, never
  beyond the limit), so commands inside the limits are exact and gradients still flow at the limit.
  When the yaw rate saturates, ``v`` is scaled by the same factor so the robot keeps the planned
  curvature (slows down into a tight turn) instead of cutting the corner.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

#: Seconds along the plan at which pure pursuit takes its target point (two waypoints of the
#: default 0.3 s spacing): the default of every controller in s2e, from training to the robot.
LOOKAHEAD_TIME = 0.6


@dataclass(frozen=True)
class ControllerLimits:
    """A robot's command limits and the controller's lookahead (stored in every export's JSON).

    Attributes:
        max_speed: m/s, forward speed limit (commands are never negative: the plan is followed forward).
        max_yaw_rate: rad/s, symmetric yaw-rate limit.
        lookahead_time: seconds along the plan at which the pursuit point is taken.
    """

    max_speed: float = 1.5
    max_yaw_rate: float = 1.5
    lookahead_time: float = LOOKAHEAD_TIME

    def __post_init__(self) -> None:
        for name in ("max_speed", "max_yaw_rate", "lookahead_time"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ControllerLimits.{name} must be a positive finite number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ControllerLimits":
        unknown = set(data) - {"max_speed", "max_yaw_rate", "lookahead_time"}
        if unknown:
            raise ValueError(f"unknown ControllerLimits fields {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in data.items()})


def smooth_clamp(x: Tensor, limit: float, knee_fraction: float = 0.8) -> Tensor:
    """Symmetric saturation to ``[-limit, limit]``: identity for ``|x| <= knee_fraction * limit``, then a tanh
    knee with slope 1 at the join (C1), non-decreasing, never beyond the limit."""
    knee = knee_fraction * limit
    room = limit - knee
    magnitude = x.abs()
    # the final clamp only catches float rounding of tanh -> 1 (where its gradient is already ~0)
    bent = (knee + room * torch.tanh((magnitude - knee) / room)).clamp_max(limit)
    return torch.where(magnitude <= knee, x, torch.sign(x) * bent)


def waypoints_to_command(
    waypoints: Tensor,
    waypoint_dt: float,
    max_speed: float,
    max_yaw_rate: float,
    lookahead_time: float,
) -> Tensor:
    """Pure pursuit (see the module docstring): waypoints [B, T, 2] in metres, robot frame, the
    first at ``waypoint_dt`` seconds -> command [B, 2] = (v m/s, omega rad/s) within the limits."""
    if waypoints.dim() != 3 or waypoints.shape[2] != 2:
        raise ValueError(f"waypoints must be [B, T, 2], got {list(waypoints.shape)}")
    num = waypoints.shape[1]
    origin = torch.zeros_like(waypoints[:, :1])
    path = torch.cat([origin, waypoints], dim=1)  # path[i] is the plan at i * waypoint_dt
    position = min(lookahead_time / waypoint_dt, float(num))
    lo = min(int(math.floor(position)), num - 1)
    frac = position - float(lo)
    target = path[:, lo] * (1.0 - frac) + path[:, lo + 1] * frac
    eps = 1e-9  # under the square roots: zero-length segments keep finite gradients
    segments = torch.sqrt(((path[:, 1:] - path[:, :-1]) ** 2).sum(-1) + eps)  # [B, T]
    covered = segments[:, :lo].sum(-1) + frac * segments[:, lo]
    speed = covered / (position * waypoint_dt)
    curvature = 2.0 * target[:, 1] / ((target**2).sum(-1) + eps)
    v = smooth_clamp(speed, max_speed)
    omega_raw = v * curvature
    omega = smooth_clamp(omega_raw, max_yaw_rate)
    saturated = omega_raw.abs() > 0.8 * max_yaw_rate  # smooth_clamp's knee
    keep_curvature = torch.where(saturated, omega / torch.where(saturated, omega_raw, torch.ones_like(omega_raw)), torch.ones_like(omega))
    return torch.stack([v * keep_curvature, omega], dim=-1)


def command_from_limits(waypoints: Tensor, waypoint_dt: float, limits: ControllerLimits) -> Tensor:
    """:func:`waypoints_to_command` with a :class:`ControllerLimits` (Python callers)."""
    return waypoints_to_command(waypoints, waypoint_dt, limits.max_speed, limits.max_yaw_rate, limits.lookahead_time)
