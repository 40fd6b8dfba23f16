"""The anchor mixture as TorchRL sees it: log-prob and entropy against Monte Carlo, shapes, the
actor's stored log-prob, and the env action through the shared controller."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from test_pretrain import TINY_POLICY

from s2e.control import ControllerLimits, command_from_limits
from s2e.model.policy import PolicyConfig, S2EPolicy, best_trajectory_metres
from s2e.rl.actor import LOG_PROB_KEY, TRAJECTORY_KEY, Exploration, ValueHead, build_actor_critic
from s2e.rl.trajectory_distribution import AnchorTrajectoryDistribution
from s2e.timing import TimingSpec

SAMPLES = 40_000


def _mixture(m: int, t: int, separation: float, seed: int = 0) -> AnchorTrajectoryDistribution:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, m, generator=g)
    mean = torch.randn(2, m, t, 2, generator=g) * 0.3 + separation * torch.arange(m).float()[None, :, None, None]
    log_std = torch.rand(2, m, t, 2, generator=g) * 0.6 - 0.8
    rho = torch.rand(2, m, t, generator=g) * 1.2 - 0.6
    return AnchorTrajectoryDistribution(scores, mean, log_std, rho)


def _mc_entropy(dist: AnchorTrajectoryDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    log_p = dist.log_prob(dist.sample((SAMPLES,)))  # [S, B]
    return -log_p.mean(0), log_p.std(0) / math.sqrt(SAMPLES)


def test_log_prob_is_the_density_of_what_sample_draws() -> None:
    """One waypoint, three overlapping modes: the probability of boxes from sample frequencies equals
    the integral of exp(log_prob) over them (a midpoint rule on a fine grid)."""
    dist = _mixture(3, 1, separation=0.5)
    torch.manual_seed(2)
    x = dist.sample((SAMPLES,))[:, 0, 0]  # batch row 0: [S, 2]
    edges = torch.linspace(-1.0, 2.0, 301)
    centres = (edges[1:] + edges[:-1]) / 2
    gx, gy = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([gx, gy], -1).reshape(-1, 1, 1, 2)  # [G, 1, T=1, 2] as sample_shape [G]
    grid = grid.expand(-1, 2, 1, 2)
    density = dist.log_prob(grid)[:, 0].exp().reshape(300, 300) * (edges[1] - edges[0]) ** 2
    for (x0, x1), (y0, y1) in [((-1.0, 0.5), (-1.0, 0.5)), ((0.2, 1.4), (0.0, 2.0)), ((-0.5, 2.0), (0.5, 1.1))]:
        inside = ((x[:, 0] >= x0) & (x[:, 0] < x1) & (x[:, 1] >= y0) & (x[:, 1] < y1)).float().mean()
        cells = ((centres >= x0) & (centres < x1))[:, None] & ((centres >= y0) & (centres < y1))[None, :]
        integral = density[cells].sum()
        standard_error = math.sqrt(max(float(inside * (1 - inside)), 1e-6) / SAMPLES)
        assert abs(float(integral) - float(inside)) < 4 * standard_error + 2e-3


def test_entropy_is_exact_for_one_mode_and_a_tight_upper_bound_for_separated_modes() -> None:
    single = _mixture(1, 4, separation=0.0)
    mc, err = _mc_entropy(single)
    torch.testing.assert_close(single.entropy(), mc, atol=float(4 * err.max()) + 1e-3, rtol=0)

    separated = _mixture(3, 4, separation=6.0)
    mc, err = _mc_entropy(separated)
    gap = separated.entropy() - mc
    assert (gap > -4 * err).all() and (gap < 0.02).all()  # the bound holds and is tight

    overlapping = _mixture(3, 4, separation=0.0)
    mc, err = _mc_entropy(overlapping)
    assert (overlapping.entropy() - mc > 10 * err).all()  # still an upper bound, visibly loose


def test_shapes_mode_and_sample_moments() -> None:
    dist = _mixture(3, 5, separation=2.0)
    assert dist.batch_shape == (2,) and dist.event_shape == (5, 2)
    assert dist.sample().shape == (2, 5, 2) and dist.sample((4, 3)).shape == (4, 3, 2, 5, 2)
    assert dist.log_prob(dist.sample((4, 3))).shape == (4, 3, 2)
    best = dist.mixture.logits.argmax(-1)
    torch.testing.assert_close(dist.mode, dist.mixture.mean[torch.arange(2), best])
    assert dist.deterministic_sample is not None and torch.equal(dist.deterministic_sample, dist.mode)
    torch.manual_seed(3)
    samples = dist.sample((SAMPLES,))
    expected = (dist.mixture.log_weights.exp()[..., None, None] * dist.mixture.mean).sum(1)
    torch.testing.assert_close(samples.mean(0), expected, atol=0.05, rtol=0)

    nested = AnchorTrajectoryDistribution(
        *(v.reshape(1, 2, *v.shape[1:]) for v in (dist.mixture.logits, dist.mixture.mean, dist.mixture.log_std, dist.mixture.rho))
    )
    x = dist.sample()
    torch.testing.assert_close(nested.log_prob(x[None]), dist.log_prob(x)[None])
    torch.testing.assert_close(nested.entropy(), dist.entropy()[None])
    with pytest.raises(ValueError, match="trajectories"):
        dist.log_prob(torch.zeros(2, 4, 2))


def test_posterior_scale_is_the_scale_of_the_mode_a_trajectory_came_from() -> None:
    dist = _mixture(3, 5, separation=6.0)
    scale = torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.6, 1.2]])
    for m in range(3):
        on_mode = dist.mixture.mean[:, m]
        torch.testing.assert_close(dist.posterior_scale(on_mode, scale), scale[:, m], atol=1e-4, rtol=0)


def _tiny_policy() -> S2EPolicy:
    torch.manual_seed(0)
    config = PolicyConfig.preset("small", **{**TINY_POLICY, "num_anchors": 3})
    t = torch.linspace(1, 10, 10)[:, None]
    trajectories = torch.stack([torch.cat([t, 0.15 * k * (t / 10) ** 2 * 10], 1) for k in (-1, 0, 1)]).float()
    return S2EPolicy(config, trajectories[:, -1], trajectories).eval()


def _observation(n: int = 4) -> TensorDict:
    g = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (n, 5, 3, 32, 32), dtype=torch.uint8, generator=g)
    goal = torch.cat([torch.rand(n, 1, generator=g) * 20, torch.nn.functional.normalize(torch.randn(n, 2, generator=g), dim=-1)], -1)
    return TensorDict({"frames": frames, "goal": goal}, batch_size=[n])


@pytest.mark.parametrize("encoder_trainable", [False, True])
def test_actor_stores_the_log_prob_ppo_recomputes_and_drives_through_the_shared_controller(encoder_trainable: bool) -> None:
    policy = _tiny_policy()
    limits = ControllerLimits(max_speed=1.5, max_yaw_rate=1.5)
    modules = build_actor_critic(policy, ValueHead(32), TimingSpec().waypoint_dt, limits, encoder_trainable=encoder_trainable)
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        td = modules.collect_policy(_observation())
    assert td["state_value"].shape == (4, 1) and td["action"].shape == (4, 2)
    dist = modules.actor.get_dist(td.select("frames", "goal", "context"))
    torch.testing.assert_close(dist.log_prob(td[TRAJECTORY_KEY]), td[LOG_PROB_KEY])
    metres = td[TRAJECTORY_KEY] * dist.posterior_scale(td[TRAJECTORY_KEY], td["scale"])[:, None, None]
    torch.testing.assert_close(td["action"], command_from_limits(metres, TimingSpec().waypoint_dt, limits))

    with torch.no_grad(), set_interaction_type(InteractionType.DETERMINISTIC):
        greedy = modules.collect_policy(_observation())
        out = policy(greedy["frames"], greedy["goal"])
    # the deterministic action is the exported policy's: best mode in metres through the same controller
    expected = command_from_limits(best_trajectory_metres(out), TimingSpec().waypoint_dt, limits)
    np.testing.assert_allclose(greedy["action"].numpy(), expected.numpy(), atol=1e-3)


def test_exploration_sharpens_the_sampled_mixture_keeps_its_mode_and_its_log_prob_consistent() -> None:
    """A cooler anchor temperature and a smaller std scale: the stored log-prob is still the one the
    PPO actor recomputes, samples concentrate on the best anchor, and the deterministic action is
    the untempered policy's."""
    policy = _tiny_policy()
    limits = ControllerLimits(max_speed=1.5, max_yaw_rate=1.5)
    dt = TimingSpec().waypoint_dt
    plain = build_actor_critic(policy, ValueHead(32), dt, limits, encoder_trainable=False)
    cool = build_actor_critic(policy, ValueHead(32), dt, limits, encoder_trainable=False, exploration=Exploration(0.1, 0.5))
    obs = _observation(64)
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        td = cool.collect_policy(obs.clone())
        dist = cool.actor.get_dist(td.select("context"))
        torch.testing.assert_close(dist.log_prob(td[TRAJECTORY_KEY]), td[LOG_PROB_KEY])
        base = plain.actor.get_dist(td.select("context"))
    best = base.mixture.logits.argmax(-1)
    weights = lambda d: torch.softmax(d.mixture.logits, -1).gather(-1, best[:, None]).mean()  # noqa: E731
    assert weights(dist) > weights(base) + 0.05
    torch.testing.assert_close(dist.mixture.log_std, base.mixture.log_std + math.log(0.5))
    with torch.no_grad(), set_interaction_type(InteractionType.DETERMINISTIC):
        torch.testing.assert_close(cool.drive(obs.clone())["action"], plain.drive(obs.clone())["action"])
    with pytest.raises(ValueError, match="anchor_temperature"):
        Exploration(anchor_temperature=0.0)
    with pytest.raises(ValueError, match="space"):
        Exploration(space="waypoints")


def test_anchor_space_exploration_samples_anchors_and_drives_the_chosen_mean() -> None:
    """In anchor space the actor's sample is an anchor index with a categorical log-prob PPO can
    recompute; the env command is that anchor's mean trajectory x its scale through the shared
    controller, and the deterministic command is the exported policy's (best mode)."""
    policy = _tiny_policy()
    limits = ControllerLimits(max_speed=1.5, max_yaw_rate=1.5)
    dt = TimingSpec().waypoint_dt
    modules = build_actor_critic(policy, ValueHead(32), dt, limits, encoder_trainable=False, exploration=Exploration(0.5, space="anchor"))
    obs = _observation(256)
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        td = modules.collect_policy(obs.clone())
    anchor = td[modules.action_key]
    assert anchor.dtype == torch.long and anchor.shape == (256,)
    assert len(anchor.unique()) > 1  # it explores
    logits = torch.log_softmax(td["scores"], -1)
    torch.testing.assert_close(td[modules.log_prob_key], logits.gather(-1, anchor[:, None])[:, 0])
    torch.testing.assert_close(modules.actor.get_dist(td.select("context")).log_prob(anchor), td[modules.log_prob_key])
    rows = torch.arange(256)
    metres = td["mean"][rows, anchor] * td["scale"][rows, anchor][:, None, None]
    torch.testing.assert_close(td["action"], command_from_limits(metres, dt, limits))
    with torch.no_grad(), set_interaction_type(InteractionType.DETERMINISTIC):
        greedy = modules.drive(obs.clone())
        out = policy(obs["frames"], obs["goal"])
    np.testing.assert_allclose(greedy["action"].numpy(), command_from_limits(best_trajectory_metres(out), dt, limits).numpy(), atol=1e-3)
