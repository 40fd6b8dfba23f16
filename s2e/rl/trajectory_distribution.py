"""The anchor mixture as a ``torch.distributions.Distribution``, the form TorchRL's actors and PPO use.

:class:`s2e.distributions.AnchorMixture` does the maths (log-density, sampling, entropy bound) for
a flat batch [B]; this wrapper adds what TorchRL's ``ProbabilisticActor`` and ``ClipPPOLoss`` call:
arbitrary leading batch dimensions, ``sample(sample_shape)``, ``deterministic_sample`` / ``mode``
and an analytic ``entropy`` (so PPO needs no Monte-Carlo entropy).

The event is a whole normalized trajectory [T, 2]. The policy's velocity scale is *not* part of the
event: it is a deterministic function of the observation and the sampled trajectory
(:meth:`AnchorTrajectoryDistribution.posterior_scale`), so the env action derived from both is a
deterministic function of the sampled trajectory and the trajectory's log-probability is the
action's log-probability that PPO's ratio needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from s2e.distributions import AnchorMixture


class AnchorTrajectoryDistribution(Distribution):
    """Mixture over normalized trajectories; parameters as the policy outputs them.

    Args:
        scores: [..., M] anchor logits; mean / log_std: [..., M, T, 2]; rho: [..., M, T].
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, scores: Tensor, mean: Tensor, log_std: Tensor, rho: Tensor) -> None:
        batch_shape = scores.shape[:-1]
        m, t = mean.shape[-3], mean.shape[-2]
        self._flat = AnchorMixture(scores.reshape(-1, m), mean.reshape(-1, m, t, 2), log_std.reshape(-1, m, t, 2), rho.reshape(-1, m, t))
        super().__init__(batch_shape=batch_shape, event_shape=torch.Size([t, 2]), validate_args=False)

    @property
    def mixture(self) -> AnchorMixture:
        """The underlying mixture over the flattened batch."""
        return self._flat

    def _unflatten(self, value: Tensor, event: bool) -> Tensor:
        return value.reshape(self.batch_shape + (self.event_shape if event else torch.Size()))

    def _repeated(self, times: int) -> AnchorMixture:
        """The flat mixture tiled ``times`` times along the batch (sample-major), for vectorized draws."""
        if times == 1:
            return self._flat
        mix = self._flat
        return AnchorMixture(*(v.repeat(times, *[1] * (v.dim() - 1)) for v in (mix.logits, mix.mean, mix.log_std, mix.rho)))

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(trajectory), shape ``sample_shape + batch_shape`` for ``value`` [*sample, *batch, T, 2]."""
        if value.shape[-2:] != self.event_shape:
            raise ValueError(f"expected trajectories [..., {self.event_shape[0]}, 2], got {list(value.shape)}")
        sample_shape = value.shape[: value.dim() - 2 - len(self.batch_shape)]
        times = math.prod(sample_shape)
        log_p = self._repeated(times).log_prob(value.reshape(-1, *self.event_shape))
        return log_p.reshape(sample_shape + self.batch_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            draws = self._repeated(math.prod(sample_shape)).sample()
        return draws.reshape(sample_shape + self.batch_shape + self.event_shape)

    def entropy(self) -> Tensor:
        """H(anchor) + E_anchor[H(trajectory | anchor)]: an upper bound on the mixture entropy that is
        tight for well-separated anchors (see :meth:`AnchorMixture.entropy`); analytic and differentiable."""
        return self._unflatten(self._flat.entropy(), event=False)

    @property
    def mode(self) -> Tensor:
        """The highest-scoring anchor's mean trajectory (what the exported policy follows)."""
        return self._unflatten(self._flat.most_likely(), event=True)

    @property
    def deterministic_sample(self) -> Tensor:
        return self.mode

    def posterior_scale(self, trajectory: Tensor, scale: Tensor) -> Tensor:
        """Metres per step for ``trajectory`` [..., T, 2]: the anchors' scales [..., M] weighted by the
        posterior p(anchor | trajectory).

        With the well-separated modes AGDM trains, the posterior is one-hot on the anchor the
        trajectory was drawn from, so this is "that anchor's scale"; unlike an argmax it is a smooth,
        deterministic function of the trajectory, which keeps the action a function of the event.
        """
        flat = trajectory.reshape(-1, *self.event_shape)
        mix = self._flat
        posterior = torch.softmax(mix.log_weights + mix.component_log_prob(flat), dim=-1)
        return self._unflatten((posterior * scale.reshape(posterior.shape)).sum(-1), event=False)
