"""AnchorMixture and AGDM loss against torch.distributions, gradient checks, bounds."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal

from s2e.distributions import AnchorMixture, agdm_loss, assign_modes, bivariate_log_prob, bound_log_std, bound_rho

B, M, T = 3, 4, 5


def _random_mixture(seed: int = 0, dtype: torch.dtype = torch.float32) -> AnchorMixture:
    g = torch.Generator().manual_seed(seed)
    return AnchorMixture(
        torch.randn(B, M, generator=g, dtype=dtype),
        torch.randn(B, M, T, 2, generator=g, dtype=dtype),
        bound_log_std(torch.randn(B, M, T, 2, generator=g, dtype=dtype)),
        bound_rho(torch.randn(B, M, T, generator=g, dtype=dtype)),
    )


def _reference(mix: AnchorMixture) -> MixtureSameFamily:
    sx, sy = mix.log_std.exp().unbind(-1)
    cov = torch.stack([torch.stack([sx * sx, mix.rho * sx * sy], -1), torch.stack([mix.rho * sx * sy, sy * sy], -1)], -2)
    components = Independent(MultivariateNormal(mix.mean, covariance_matrix=cov), 1)
    return MixtureSameFamily(Categorical(logits=mix.logits), components)


def test_log_prob_matches_torch_distributions() -> None:
    mix = _random_mixture(dtype=torch.float64)
    ref = _reference(mix)
    x = torch.randn(B, T, 2, dtype=torch.float64)
    torch.testing.assert_close(mix.component_log_prob(x), ref.component_distribution.log_prob(x[:, None]))
    torch.testing.assert_close(mix.log_prob(x), ref.log_prob(x))


def test_component_entropy_is_exact_and_mixture_entropy_bounds_a_monte_carlo_estimate() -> None:
    mix = _random_mixture(1, torch.float64)
    ref = _reference(mix)
    torch.testing.assert_close(mix.component_entropy(), ref.component_distribution.entropy())
    samples = ref.sample((20000,))  # [N, B, T, 2]
    neg_log_p = -ref.log_prob(samples)
    stderr = neg_log_p.std(0) / len(samples) ** 0.5
    assert (mix.entropy() >= neg_log_p.mean(0) - 4 * stderr).all()  # H(anchor, x) >= H(x), up to MC noise


def test_samples_follow_the_mixture_moments() -> None:
    mix = _random_mixture(2, torch.float64)
    ref = _reference(mix)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([mix.sample(g) for _ in range(20000)])  # [N, B, T, 2]
    torch.testing.assert_close(draws.mean(0), ref.mean, atol=0.06, rtol=0.0)
    torch.testing.assert_close(draws.var(0), ref.variance, atol=0.0, rtol=0.1)


def test_most_likely_is_the_best_scored_component_mean() -> None:
    mix = _random_mixture(3)
    best = mix.logits.argmax(-1)
    torch.testing.assert_close(mix.most_likely(), mix.mean[torch.arange(B), best])


def test_bounds_hold_for_extreme_head_outputs_and_log_prob_stays_finite() -> None:
    raw = torch.tensor([-1e6, -30.0, 0.0, 30.0, 1e6])
    assert (bound_log_std(raw) >= -5.0).all() and (bound_log_std(raw) <= 2.0).all()
    assert (bound_rho(raw).abs() < 1.0).all()
    mean = torch.zeros(5, 2)
    lp = bivariate_log_prob(torch.full((5, 2), 1e3), mean, bound_log_std(torch.stack([raw, raw], -1)), bound_rho(raw))
    assert torch.isfinite(lp).all()


def test_log_prob_gradients_pass_gradcheck() -> None:
    mix = _random_mixture(4, torch.float64)
    x = torch.randn(B, T, 2, dtype=torch.float64)

    def f(logits, mean, raw_log_std, raw_rho):
        return AnchorMixture(logits, mean, bound_log_std(raw_log_std), bound_rho(raw_rho)).log_prob(x)

    inputs = (
        mix.logits.clone().requires_grad_(),
        mix.mean.clone().requires_grad_(),
        torch.randn(B, M, T, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(B, M, T, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, inputs)


def _agdm_inputs() -> tuple[AnchorMixture, Tensor, Tensor, Tensor, Tensor]:
    """(mixture, predicted scales, target, target scales, anchor points) for agdm_loss, float64."""
    mix = _random_mixture(5, torch.float64)
    pred_scale = torch.rand(B, M, dtype=torch.float64) + 0.5
    target = torch.randn(B, T, 2, dtype=torch.float64)
    target_scale = torch.rand(B, dtype=torch.float64) + 0.5
    return mix, pred_scale, target, target_scale, torch.randn(M, 2, dtype=torch.float64)


def test_agdm_loss_is_component_nll_plus_cross_entropy_plus_scale_l2() -> None:
    mix, pred_scale, target, target_scale, anchor_points = _agdm_inputs()
    out = agdm_loss(mix, pred_scale, target, target_scale, anchor_points, scale_weight=2.0)
    h = torch.cdist(target[:, -1], anchor_points).argmin(-1)
    rows = torch.arange(B)
    expected = (-mix.component_log_prob(target)[rows, h] - mix.log_weights[rows, h] + 2.0 * (pred_scale[rows, h] - target_scale) ** 2).mean()
    torch.testing.assert_close(out["loss"], expected)
    assert torch.equal(out["assigned"], h)


def test_agdm_loss_weights_make_a_weighted_average_and_leave_the_logged_parts_plain() -> None:
    args = _agdm_inputs()
    mix, pred_scale, target, target_scale, anchor_points = args
    plain = agdm_loss(*args)
    torch.testing.assert_close(agdm_loss(*args, weights=torch.full((B,), 3.0, dtype=torch.float64))["loss"], plain["loss"])
    only_first = torch.zeros(B, dtype=torch.float64)
    only_first[0] = 1.0
    first = agdm_loss(AnchorMixture(mix.logits[:1], mix.mean[:1], mix.log_std[:1], mix.rho[:1]), pred_scale[:1], target[:1], target_scale[:1], anchor_points)
    weighted = agdm_loss(*args, weights=only_first)
    torch.testing.assert_close(weighted["loss"], first["loss"])
    for part in ("nll", "cls", "scale"):
        torch.testing.assert_close(weighted[part], plain[part])


def test_best_mode_assignment_picks_the_most_likely_component() -> None:
    mix = _random_mixture(6)
    target = mix.mean[:, 2] + 0.01  # right next to component 2 of every row
    assert torch.equal(assign_modes(mix, target, torch.zeros(M, 2), "best_mode"), torch.full((B,), 2))
    with pytest.raises(ValueError, match="unknown assignment 'nearest'"):
        assign_modes(mix, target, torch.zeros(M, 2), "nearest")  # type: ignore[arg-type]


def test_inconsistent_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent mixture shapes"):
        AnchorMixture(torch.zeros(B, M), torch.zeros(B, M + 1, T, 2), torch.zeros(B, M + 1, T, 2), torch.zeros(B, M + 1, T))
