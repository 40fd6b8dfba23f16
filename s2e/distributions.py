"""The anchor mixture (one bivariate-Gaussian trajectory per anchor) and the AGDM loss.

Everything here is in *normalized* waypoint units (metres divided by the trajectory's mean step
length, see :func:`s2e.geometry.trajectory_scale`), the units the anchors were fitted in. Each
mixture component is a sequence of independent bivariate Gaussians, one per waypoint, with its own
(mu_x, mu_y, sigma_x, sigma_y, rho). Stability comes from the heads: log-std is squashed into
``[LOG_STD_MIN, LOG_STD_MAX]`` and |rho| <= ``RHO_MAX`` < 1 (see :func:`bound_log_std` and
:func:`bound_rho`), so the covariance is never singular and the log-density never overflows.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
RHO_MAX = 0.95
_LOG_2PI = math.log(2.0 * math.pi)

Assignment = Literal["nearest_anchor", "best_mode"]


def bound_log_std(raw: Tensor, low: float = LOG_STD_MIN, high: float = LOG_STD_MAX) -> Tensor:
    """Map an unbounded head output smoothly into [low, high] (a tanh keeps gradients everywhere)."""
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1.0)


def bound_rho(raw: Tensor, rho_max: float = RHO_MAX) -> Tensor:
    """Correlation strictly inside (-1, 1): at |rho| -> 1 the Gaussian degenerates onto a line."""
    return rho_max * torch.tanh(raw)


def bivariate_log_prob(x: Tensor, mean: Tensor, log_std: Tensor, rho: Tensor) -> Tensor:
    """log N(x; mean, Sigma) of 2-D Gaussians with Sigma = [[sx^2, rho sx sy], [rho sx sy, sy^2]].

    x, mean, log_std: [..., 2]; rho: [...]. Returns [...]. Written out in closed form (no Cholesky)
    so that it broadcasts over anchors and waypoints and stays TorchScript-friendly.
    """
    z = (x - mean) * torch.exp(-log_std)
    zx, zy = z[..., 0], z[..., 1]
    one_minus_rho2 = 1.0 - rho * rho
    quad = (zx * zx - 2.0 * rho * zx * zy + zy * zy) / one_minus_rho2
    return -_LOG_2PI - log_std.sum(-1) - 0.5 * torch.log(one_minus_rho2) - 0.5 * quad


class AnchorMixture:
    """M-component mixture over trajectories [T, 2] with per-waypoint bivariate Gaussians.

    Args:
        logits: [B, M] anchor scores (unnormalized log mixture weights).
        mean: [B, M, T, 2]; log_std: [B, M, T, 2] (already bounded); rho: [B, M, T] (|rho| < 1).
    """

    def __init__(self, logits: Tensor, mean: Tensor, log_std: Tensor, rho: Tensor) -> None:
        b, m = logits.shape
        if mean.shape[:2] != (b, m) or mean.shape[-1] != 2 or log_std.shape != mean.shape or rho.shape != mean.shape[:-1]:
            raise ValueError(
                f"inconsistent mixture shapes: logits {tuple(logits.shape)}, mean {tuple(mean.shape)}, log_std {tuple(log_std.shape)}, rho {tuple(rho.shape)}"
            )
        self.logits = logits
        self.mean = mean
        self.log_std = log_std
        self.rho = rho

    @property
    def log_weights(self) -> Tensor:
        """[B, M] log q_m."""
        return torch.log_softmax(self.logits, dim=-1)

    def component_log_prob(self, x: Tensor) -> Tensor:
        """[B, M] log N_m(x) of a trajectory x [B, T, 2] under every component (waypoints independent)."""
        return bivariate_log_prob(x[:, None], self.mean, self.log_std, self.rho).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """[B] log p(x) = logsumexp_m(log q_m + log N_m(x))."""
        return torch.logsumexp(self.log_weights + self.component_log_prob(x), dim=-1)

    def mode_index(self) -> Tensor:
        """[B] the highest-scoring anchor."""
        return self.logits.argmax(dim=-1)

    def most_likely(self) -> Tensor:
        """[B, T, 2] the mean of the highest-scoring component (the trajectory a robot would follow).

        The exact mixture mode has no closed form; with well-separated anchors it sits at the mean
        of the heaviest component, and that trajectory is also the one the export runs.
        """
        return select_modes(self.mean, self.mode_index())

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """[B, T, 2] one trajectory per batch row: draw an anchor from q, then each waypoint's Gaussian."""
        index = torch.multinomial(torch.softmax(self.logits, -1), 1, generator=generator).squeeze(-1)
        mean = select_modes(self.mean, index)
        std = select_modes(self.log_std, index).exp()
        rho = select_modes(self.rho, index)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        x = mean[..., 0] + std[..., 0] * eps[..., 0]
        y = mean[..., 1] + std[..., 1] * (rho * eps[..., 0] + torch.sqrt(1.0 - rho * rho) * eps[..., 1])
        return torch.stack([x, y], dim=-1)

    def component_entropy(self) -> Tensor:
        """[B, M] exact differential entropy of each component: sum over waypoints of
        log(2 pi e) + log sx + log sy + 0.5 log(1 - rho^2)."""
        per_waypoint = (_LOG_2PI + 1.0) + self.log_std.sum(-1) + 0.5 * torch.log(1.0 - self.rho * self.rho)
        return per_waypoint.sum(-1)

    def entropy(self) -> Tensor:
        """[B] H(q) + sum_m q_m H(N_m), an *upper bound* on the mixture entropy.

        A Gaussian mixture has no closed-form entropy. This is the joint entropy H(anchor, x) >= H(x);
        it is tight when the components barely overlap (the regime the anchors are built for) and,
        unlike a Monte-Carlo estimate, it is deterministic and differentiable, which an entropy
        bonus in RL post-training needs.
        """
        log_q = self.log_weights
        categorical = -(log_q.exp() * log_q).sum(-1)
        return categorical + (log_q.exp() * self.component_entropy()).sum(-1)


def select_modes(values: Tensor, index: Tensor) -> Tensor:
    """values [B, M, ...] gathered at index [B] -> [B, ...]."""
    return values[torch.arange(values.shape[0], device=values.device), index]


def assign_modes(mixture: AnchorMixture, target: Tensor, anchor_points: Tensor, assignment: Assignment = "nearest_anchor") -> Tensor:
    """[B] the component h each ground-truth trajectory is attributed to.

    ``nearest_anchor``: the anchor whose intent point is closest to the target's endpoint (AGDM's
    default: a fixed, data-defined assignment that keeps every anchor meaning one intent).
    ``best_mode``: the component with the highest likelihood of the target (winner-takes-all; the
    anchors then only initialize the modes).
    """
    if assignment == "nearest_anchor":
        return torch.cdist(target[:, -1], anchor_points).argmin(dim=-1)
    if assignment == "best_mode":
        with torch.no_grad():
            return mixture.component_log_prob(target).argmax(dim=-1)
    raise ValueError(f"unknown assignment {assignment!r}; expected 'nearest_anchor' or 'best_mode'")


def agdm_loss(
    mixture: AnchorMixture,
    pred_scale: Tensor,
    target: Tensor,
    target_scale: Tensor,
    anchor_points: Tensor,
    *,
    assignment: Assignment = "nearest_anchor",
    scale_weight: float = 1.0,
    weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """AGDM loss: -log N_h(target) - log q_h + scale_weight * (s_h - s)^2, averaged over the batch
    (``weights`` [B], non-negative with a positive sum: a weighted average instead; the logged
    parts stay plain means).

    Args:
        mixture: the predicted anchor mixture (normalized units).
        pred_scale: [B, M] predicted metres per step of each anchor's trajectory.
        target: [B, T, 2] normalized ground-truth waypoints; target_scale: [B] their metres per step.
        anchor_points: [M, 2] intent points of the anchors (for ``nearest_anchor``).

    Returns the total ``loss`` and its parts (``nll``, ``cls``, ``scale``) plus ``assigned`` [B].
    """
    assigned = assign_modes(mixture, target, anchor_points, assignment)
    nll = -select_modes(mixture.component_log_prob(target), assigned)
    cls = F.cross_entropy(mixture.logits, assigned, reduction="none")
    scale = (select_modes(pred_scale, assigned) - target_scale) ** 2
    loss = nll + cls + scale_weight * scale
    total = loss.mean() if weights is None else (weights * loss).sum() / weights.sum()
    return {"loss": total, "nll": nll.mean(), "cls": cls.mean(), "scale": scale.mean(), "assigned": assigned}
