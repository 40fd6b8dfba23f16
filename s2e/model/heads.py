"""Per-anchor output heads: score, per-waypoint bivariate Gaussian, velocity scale."""

from __future__ import annotations

from typing import Dict

import torch.nn.functional as F
from torch import Tensor, nn

from s2e.distributions import LOG_STD_MAX, LOG_STD_MIN, RHO_MAX, bound_log_std, bound_rho
from s2e.geometry import MIN_SCALE

#: Added to the scale logit before the softplus: a near-zero logit at initialization then gives a
#: scale of ``MIN_SCALE + softplus(1)`` ~ 1.36 m per step, where the softplus is steep (slope ~0.73),
#: instead of a scale near its floor, where the gradient fades.
SCALE_LOGIT_OFFSET = 1.0


class AnchorHeads(nn.Module):
    """anchor features [B, M, D] -> scores [B, M], mean/log_std [B, M, T, 2], rho [B, M, T], scale [B, M].

    Means are predicted as offsets from each anchor's trajectory, so at initialization every mode
    already is its anchor and training only refines it. Log-std and rho are bounded here (see
    :mod:`s2e.distributions`) and the scale (metres per step) is a softplus above ``MIN_SCALE``.
    """

    def __init__(self, d_model: int, num_waypoints: int, log_std_min: float = LOG_STD_MIN, log_std_max: float = LOG_STD_MAX, rho_max: float = RHO_MAX) -> None:
        super().__init__()
        self.num_waypoints = num_waypoints
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.rho_max = rho_max
        self.min_scale = MIN_SCALE
        self.scale_logit_offset = SCALE_LOGIT_OFFSET
        self.score = nn.Linear(d_model, 1)
        self.gaussian = nn.Linear(d_model, num_waypoints * 5)
        self.scale = nn.Linear(d_model, 1)
        nn.init.zeros_(self.gaussian.weight)
        nn.init.zeros_(self.gaussian.bias)

    def forward(self, features: Tensor, anchor_trajectories: Tensor) -> Dict[str, Tensor]:
        b, m, _ = features.shape
        params = self.gaussian(features).view(b, m, self.num_waypoints, 5)
        return {
            "scores": self.score(features).squeeze(-1),
            "mean": anchor_trajectories + params[..., 0:2],
            "log_std": bound_log_std(params[..., 2:4], self.log_std_min, self.log_std_max),
            "rho": bound_rho(params[..., 4], self.rho_max),
            "scale": self.min_scale + F.softplus(self.scale(features).squeeze(-1) + self.scale_logit_offset),
        }
