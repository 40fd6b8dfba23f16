"""The S2E policy as TorchRL modules: context, anchor decoding, the probabilistic actor, the controller
and the value head.

The policy's forward pass is cut at the fused context (frame + goal tokens), because under the
``ram`` and ``decoder`` strategies everything before it is frozen: the collector stores ``context``
in the rollout and PPO's actor re-runs only the decoder from it, instead of re-encoding k frames
per sample in every PPO epoch. The ``full`` / ``sft`` strategies re-run the whole policy. With a
frozen encoder the collector's env also encodes each frame only once (:mod:`s2e.rl.features`), so
its policy starts from ``frame_features`` instead of ``frames``.

Keys (all batch-first):

* ``frames`` uint8 [k, 3, H, W], ``goal`` [3]  -> ``context`` [k + 1, D]            (:class:`PolicyContext`)
* ``frame_features`` [k, D], ``goal`` [3]      -> ``context`` [k + 1, D]            (:class:`FeatureContext`)
* ``context`` -> ``scores``, ``mean``, ``log_std``, ``rho``, ``scale``               (:class:`PolicyDecoder`)
* with a frozen-half RAM: ``context`` -> ``frozen_anchor_features`` [M, D]           (:class:`FrozenAnchorFeatures`),
  then ``context`` + those -> the same outputs                                      (:class:`ResidualDecoder`)
* those -> ``trajectory`` [T, 2] (normalized) + ``trajectory_log_prob``              (ProbabilisticActor)
* ``trajectory`` + the mixture -> ``action`` (v, omega)                              (:class:`TrajectoryController`)
* or, exploring in anchor space: ``scores`` -> ``anchor`` + ``anchor_log_prob``      (ProbabilisticActor, :class:`AnchorChoice`),
  then that anchor's mean trajectory x its scale -> ``action``                      (:class:`AnchorCommand`)
* ``context`` (detached), ``goal`` -> ``state_value`` [1]                            (:class:`ValueHead`)
* with a frozen-half RAM: ``frozen_anchor_features`` -> ``reference_scores``, the pretrained policy's
  anchor scores, from which PPO measures how far the anchor choice moved           (:class:`ReferenceScores`)

Scale: the distribution is over *normalized* trajectories; the metres-per-step scale is the
posterior-weighted anchor scale of the sampled trajectory (see
:meth:`AnchorTrajectoryDistribution.posterior_scale`), and the shared pure-pursuit controller
(:func:`s2e.control.command_from_limits`) turns ``trajectory x scale`` into (v, omega).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.modules import ProbabilisticActor, ValueOperator

from s2e.control import ControllerLimits, command_from_limits
from s2e.model.policy import S2EPolicy
from s2e.model.ram import ResidualAttentionModule
from s2e.rl.features import FEATURES_KEY
from s2e.rl.trajectory_distribution import AnchorTrajectoryDistribution

DIST_KEYS = ("scores", "mean", "log_std", "rho")
FROZEN_KEY = "frozen_anchor_features"
TRAJECTORY_KEY = "trajectory"
LOG_PROB_KEY = "trajectory_log_prob"
ANCHOR_KEY = "anchor"
ANCHOR_LOG_PROB_KEY = "anchor_log_prob"
REFERENCE_SCORES_KEY = "reference_scores"
EXPLORATION_SPACES = ("trajectory", "anchor")
#: Metres per unit of the goal distance the critic reads: goals lie metres to tens of metres away,
#: so divided by this the distance enters at the scale of the bearing's cos and sin.
GOAL_DISTANCE_SCALE_M = 10.0


class FeatureContext(nn.Module):
    """(per-frame features, goal) -> the fused context tokens of the policy (goal token + fusion)."""

    def __init__(self, policy: S2EPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, frame_features: Tensor, goal: Tensor) -> Tensor:
        return self.policy.fusion(frame_features, self.policy.goal_encoder(goal, None))


class PolicyContext(FeatureContext):
    """(frames, goal) -> the fused context tokens of the policy (encoder + goal token + fusion)."""

    def forward(self, frames: Tensor, goal: Tensor) -> Tensor:
        return super().forward(self.policy.encode_frames(frames), goal)


@dataclass(frozen=True)
class Exploration:
    """How the RL behaviour distribution explores around the pretrained one (see PolicyDecoder).

    ``space``: ``trajectory`` samples a whole normalized trajectory from the anchor mixture (the
    paper's form: PPO's ratio is that of a 2T-dimensional density); ``anchor`` samples only which
    anchor to follow and drives its mean trajectory (PPO's ratio is that of a categorical over M
    anchors, the choice the deployed policy's argmax makes). ``std_scale`` matters only for
    ``trajectory``. The defaults leave the policy's own distribution as it is; the shipped
    exploration is :class:`s2e.rl.ppo.PPOConfig`'s.
    """

    anchor_temperature: float = 1.0
    std_scale: float = 1.0
    space: str = "trajectory"

    def __post_init__(self) -> None:
        if self.space not in EXPLORATION_SPACES:
            raise ValueError(f"exploration space must be one of {EXPLORATION_SPACES}, got {self.space!r}")
        for name in ("anchor_temperature", "std_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"exploration {name} must be a positive finite number, got {value!r}")


class PolicyDecoder(nn.Module):
    """context -> mixture parameters and scale: the anchor queries, THE cross-attention block (or its
    RAM) and the heads (``S2EPolicy.decode_from_context``).

    ``exploration``: the behaviour distribution of RL is the pretrained mixture with its anchor
    logits divided by ``anchor_temperature`` and its stds multiplied by ``std_scale``. A briefly
    pretrained policy has near-uniform anchor scores, so sampling it re-draws a random anchor every
    control step and drives far worse than its mode (``docs/experiments.md``); PPO would then start
    from that bad policy.
    Both collection and the PPO update run this module, so the stored log-probabilities and the
    ratio stay those of one distribution; the mode (highest score) is unchanged by either factor.
    """

    def __init__(self, policy: S2EPolicy, exploration: Exploration | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.exploration = exploration or Exploration()

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self._explore(self.policy.decode_from_context(context))

    def _explore(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        e = self.exploration
        scores, log_std = out["scores"], out["log_std"]
        if e.anchor_temperature != 1.0:
            scores = scores / e.anchor_temperature
        if e.std_scale != 1.0:
            log_std = log_std + math.log(e.std_scale)
        return scores, out["mean"], log_std, out["rho"], out["scale"]


class FrozenAnchorFeatures(nn.Module):
    """context -> the RAM's frozen block on the anchor queries, ``psi(Q; K, V; Theta_D)`` [M, D].

    While only the RAM learns it is a function of the stored context alone, so the collector stores
    it with the context and every PPO pass reuses it (:class:`ResidualDecoder`) instead of running the
    frozen block again: a quarter of a PPO minibatch's work (forward frozen + forward and backward
    of the residual copy).
    """

    def __init__(self, policy: S2EPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, context: Tensor) -> Tensor:
        policy = self.policy
        return policy.cross_attention.frozen(policy.anchor_queries(policy.anchor_points, context.shape[0]), context)


class ResidualDecoder(PolicyDecoder):
    """(context, frozen anchor features) -> what :class:`PolicyDecoder` gives for a RAM policy:
    ``S2EPolicy.decode_from_context`` with the RAM's sum ``frozen + branch`` split open, the frozen
    half read from the rollout (``tests/test_rl_features.py`` checks both give the same numbers)."""

    def forward(self, context: Tensor, frozen_features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        policy = self.policy
        queries = policy.anchor_queries(policy.anchor_points, context.shape[0])
        features = frozen_features + policy.cross_attention.branch(queries, context)
        return self._explore(policy.heads(features, policy.anchor_trajectories))


class ReferenceScores(nn.Module):
    """frozen anchor features -> the pretrained policy's (tempered) anchor scores [B, M], no gradient.

    With a frozen-half RAM the pretrained policy needs no copy: the RAM is ``frozen + branch`` with a
    zero-started branch, so the heads on the frozen half alone are exactly the policy post-training
    started from (and the heads are frozen too). PPO's clip bounds each update's step from the
    policy that collected the batch, not the sum of the steps; where the reward says little (an
    empty street in an obstacle-task batch) those steps add up to a random walk of the argmax. A
    penalty on KL(current || these) (``PPOConfig.reference_kl``, :func:`anchor_kl`) holds the policy
    near what pretraining taught wherever the advantages do not pull it away; logged at any weight,
    the KL measures the drift. The scores depend on stored rollout keys only, so PPO computes them
    once per batch, and the KL reuses the scores of the loss's own forward pass.
    """

    def __init__(self, decoder: ResidualDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    @torch.no_grad()
    def forward(self, frozen_features: Tensor) -> Tensor:
        policy = self.decoder.policy
        return self.decoder._explore(policy.heads(frozen_features, policy.anchor_trajectories))[0]


def anchor_kl(scores: Tensor, reference_scores: Tensor) -> Tensor:
    """KL(softmax(scores) || softmax(reference_scores)) over the last (anchor) dimension."""
    log_p, log_q = scores.log_softmax(-1), reference_scores.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def has_frozen_ram(policy: S2EPolicy) -> bool:
    """Whether the policy's cross-attention is a RAM whose frozen block stays frozen (strategy ``ram``)."""
    block = policy.cross_attention
    return isinstance(block, ResidualAttentionModule) and not any(p.requires_grad for p in block.frozen.parameters())


class TrajectoryController(nn.Module):
    """A sampled normalized trajectory -> (v, omega) through the shared controller, in metres."""

    def __init__(self, waypoint_dt: float, limits: ControllerLimits) -> None:
        super().__init__()
        self.waypoint_dt = float(waypoint_dt)
        self.limits = limits

    def forward(self, trajectory: Tensor, scores: Tensor, mean: Tensor, log_std: Tensor, rho: Tensor, scale: Tensor) -> Tensor:
        dist = AnchorTrajectoryDistribution(scores, mean, log_std, rho)
        metres = trajectory * dist.posterior_scale(trajectory, scale)[..., None, None]
        flat = metres.reshape(-1, *metres.shape[-2:])
        return command_from_limits(flat, self.waypoint_dt, self.limits).reshape(*metres.shape[:-2], 2)


class AnchorChoice(torch.distributions.Categorical):
    """Which anchor to follow, from the (tempered) anchor scores; its deterministic sample is the
    highest-scoring anchor, the one evaluation and the exported policy follow."""

    @property
    def deterministic_sample(self) -> Tensor:
        return self.logits.argmax(-1)


class AnchorCommand(nn.Module):
    """The chosen anchor's mean trajectory x that anchor's scale -> (v, omega) through the shared
    controller: exactly what the deployed policy commands when the choice is its argmax."""

    def __init__(self, waypoint_dt: float, limits: ControllerLimits) -> None:
        super().__init__()
        self.waypoint_dt = float(waypoint_dt)
        self.limits = limits

    def forward(self, anchor: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        index = anchor.long()[..., None]
        chosen = mean.gather(-3, index[..., None, None].expand(*index.shape, *mean.shape[-2:]))[..., 0, :, :]
        metres = chosen * scale.gather(-1, index)[..., None]
        flat = metres.reshape(-1, *metres.shape[-2:])
        return command_from_limits(flat, self.waypoint_dt, self.limits).reshape(*metres.shape[:-2], 2)


class ValueHead(nn.Module):
    """V(observation) from the policy's *detached* context (mean over tokens) and the raw goal.

    Detached: the critic's regression never moves the policy's features (as in the S2E paper: gradients do not
    flow into the context). The raw goal (distance, cos, sin) is concatenated because the distance
    to the goal is the strongest single predictor of the remaining return.
    """

    def __init__(self, d_model: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model + 3), nn.Linear(d_model + 3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, context: Tensor, goal: Tensor) -> Tensor:
        goal = torch.cat([goal[..., :1] / GOAL_DISTANCE_SCALE_M, goal[..., 1:]], dim=-1)
        return self.net(torch.cat([context.detach().mean(-2), goal], dim=-1))


@dataclass
class ActorCritic:
    """The TorchRL modules of one policy.

    Attributes:
        context: (frames, goal) -> context.
        actor: ProbabilisticActor over ``trajectory``; starts from ``context`` when the encoder is
            frozen, from ``frames`` / ``goal`` otherwise (what ClipPPOLoss runs).
        critic: ValueOperator on ``context`` / ``goal``.
        drive: (frames, goal) -> ``action`` through the controller (what evaluation runs).
        collect_policy: ``drive`` plus the critic in one pass (what the collector runs over raw frames).
        feature_context, feature_policy: the same from ``frame_features`` / ``goal`` (what the
            collector runs over an env with :class:`s2e.rl.features.FrameFeatures`); ``None`` when
            the encoder is trainable, since stored features would then go stale.
        action_key, log_prob_key: the actor's sample and its log-probability (what PPO's ratio reads).
        reference_scores: ``frozen_anchor_features`` -> ``reference_scores`` (:class:`ReferenceScores`)
            when the RAM's frozen half is stored in the rollout (strategy ``ram``), else ``None``.
    """

    context: TensorDictModule
    actor: ProbabilisticActor
    critic: ValueOperator
    drive: TensorDictSequential
    collect_policy: TensorDictSequential
    feature_context: TensorDictModule | None = None
    feature_policy: TensorDictSequential | None = None
    action_key: str = TRAJECTORY_KEY
    log_prob_key: str = LOG_PROB_KEY
    reference_scores: TensorDictModule | None = None

    def value_of(self, observation: TensorDictBase) -> Tensor:
        """V [K, 1] of K observations from the rollout env: from their frame features when the env
        provides them (:mod:`s2e.rl.features`), else by encoding their frames (what GAE needs)."""
        context = self.feature_context if FEATURES_KEY in observation.keys() else self.context
        return self.critic(context(observation.select(*context.in_keys)))["state_value"]


def build_actor_critic(
    policy: S2EPolicy,
    value_head: ValueHead,
    waypoint_dt: float,
    limits: ControllerLimits,
    *,
    encoder_trainable: bool,
    exploration: Exploration | None = None,
) -> ActorCritic:
    """Wire the modules (see the module docstring); ``exploration`` shapes the sampled distribution."""
    context = TensorDictModule(PolicyContext(policy), in_keys=["frames", "goal"], out_keys=["context"])
    reference_scores = None
    if not encoder_trainable and has_frozen_ram(policy):  # the RAM's frozen half goes into the rollout beside the context
        before_actor = [TensorDictModule(FrozenAnchorFeatures(policy), in_keys=["context"], out_keys=[FROZEN_KEY])]
        residual = ResidualDecoder(policy, exploration)
        decoder = TensorDictModule(residual, in_keys=["context", FROZEN_KEY], out_keys=[*DIST_KEYS, "scale"])
        reference_scores = TensorDictModule(ReferenceScores(residual), in_keys=[FROZEN_KEY], out_keys=[REFERENCE_SCORES_KEY])
    else:
        before_actor = []
        decoder = TensorDictModule(PolicyDecoder(policy, exploration), in_keys=["context"], out_keys=[*DIST_KEYS, "scale"])
    parameters = TensorDictSequential(context, decoder) if encoder_trainable else decoder
    exploration = exploration or Exploration()
    if exploration.space == "anchor":
        action_key, log_prob_key = ANCHOR_KEY, ANCHOR_LOG_PROB_KEY
        actor = ProbabilisticActor(
            parameters,
            in_keys={"logits": "scores"},
            out_keys=[action_key],
            distribution_class=AnchorChoice,
            return_log_prob=True,
            log_prob_key=log_prob_key,
            default_interaction_type=InteractionType.RANDOM,
        )
        controller = TensorDictModule(AnchorCommand(waypoint_dt, limits), in_keys=[action_key, "mean", "scale"], out_keys=["action"])
    else:
        action_key, log_prob_key = TRAJECTORY_KEY, LOG_PROB_KEY
        actor = ProbabilisticActor(
            parameters,
            in_keys=list(DIST_KEYS),
            out_keys=[action_key],
            distribution_class=AnchorTrajectoryDistribution,
            return_log_prob=True,
            log_prob_key=log_prob_key,
            default_interaction_type=InteractionType.RANDOM,
        )
        controller = TensorDictModule(TrajectoryController(waypoint_dt, limits), in_keys=[action_key, *DIST_KEYS, "scale"], out_keys=["action"])
    critic = ValueOperator(value_head, in_keys=["context", "goal"], out_keys=["state_value"])
    # ``context`` must be in every rollout: a trainable-encoder actor writes it itself, a
    # frozen-encoder one reads it, so the context module runs first
    head = [actor] if encoder_trainable else [context, *before_actor, actor]
    drive = TensorDictSequential(*head, controller)
    modules = ActorCritic(
        context=context,
        actor=actor,
        critic=critic,
        drive=drive,
        collect_policy=TensorDictSequential(drive, critic),
        action_key=action_key,
        log_prob_key=log_prob_key,
        reference_scores=reference_scores,
    )
    if not encoder_trainable:
        modules.feature_context = TensorDictModule(FeatureContext(policy), in_keys=[FEATURES_KEY, "goal"], out_keys=["context"])
        modules.feature_policy = TensorDictSequential(modules.feature_context, *before_actor, actor, controller, critic)
    return modules


def driving_policy(policy: S2EPolicy, waypoint_dt: float, limits: ControllerLimits) -> TensorDictSequential:
    """(frames, goal) -> ``action`` for evaluating a policy (no value head involved)."""
    return build_actor_critic(policy, ValueHead(policy.config.d_model), waypoint_dt, limits, encoder_trainable=False).drive
