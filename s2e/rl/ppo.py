"""PPO on one rollout batch, top to bottom as in CleanRL's ``ppo.py``, and its settings.

:func:`ppo_update` is the whole learning step of the PPO strategies: GAE from the values the
collector stored, then ``epochs`` passes of shuffled minibatches through TorchRL's ``ClipPPOLoss``,
stopping the batch early once the policy left the trust region (``target_kl``). It knows nothing of
Lightning: the caller hands it the function that applies one loss (backward, clipping, optimizer
step), which is where ``PostTrainModule`` puts Lightning's manual optimization.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.objectives import ClipPPOLoss

from s2e.rl.actor import REFERENCE_SCORES_KEY, ActorCritic, Exploration, anchor_kl
from s2e.rl.advantage import ValueOfObservation, add_gae

REFERENCE_KL_KEY = "reference_kl"  # logged as ppo/reference_kl
PPO_DIAGNOSTICS = ("kl_approx", "clip_fraction", "entropy", "explained_variance", "ESS", "loss_objective", "loss_critic", "loss_entropy")

OptimizerStep = Callable[[Tensor], None]  # one loss -> backward, gradient clipping, optimizer step


@dataclass(frozen=True)
class PPOConfig:
    """PPO and its optimizer; these defaults are the shipped experiment (``experiments/posttrain.yaml``
    changes none of them). The measurements behind them are in the README ("RL post-training: status").

    Attributes:
        gamma, gae_lambda: discount and GAE lambda.
        clip_epsilon, critic_coeff: ``ClipPPOLoss``'s ratio clip and value-loss weight.
        entropy_coeff: weight of the mixture-entropy bonus
            (:meth:`s2e.rl.trajectory_distribution.AnchorTrajectoryDistribution.entropy`); 0 because
            that entropy sums 2T Gaussian log-stds, and Adam turns any constant bonus into a steady
            widening of every waypoint's std.
        epochs, minibatch_size: passes over a rollout batch and the minibatch size (``sft`` uses
            both, and ``lr`` and ``max_grad_norm``, for its supervised passes). With minibatches of
            256 most seeds did not move in 30 minutes (every update at approximate KL 0.001-0.005:
            minibatch gradients that do not agree); with 1,024 all seeds gained, and 2 passes gained
            as much as 4 at half the update time (README, "Larger PPO minibatches").
        lr: the policy's trainable parameters; value_lr: the value head (AdamW, no weight decay).
        max_grad_norm: gradient norm clip of every update.
        target_kl: stop a batch's passes at the first minibatch whose approximate KL to the
            collecting policy exceeds it (``None``: never). The 2T-dimensional trajectory log-prob
            reacts strongly to small changes of the waypoint means, so without it an update leaves
            the trust region within the first batch.
        anchor_temperature, std_scale: the behaviour distribution PPO samples and updates is the
            policy's mixture with anchor logits / ``anchor_temperature`` and stds x ``std_scale``
            (:class:`s2e.rl.actor.PolicyDecoder`); below 1 they keep a briefly pretrained policy's
            samples near its mode, where its own near-uniform anchor scores would redraw a random
            anchor every step. Evaluation and export use the mode, which neither changes.
        exploration_space: ``trajectory`` (sample a whole trajectory from the mixture) or ``anchor``
            (sample which anchor to follow and drive its mean: the ratio is that of the choice the
            deployed argmax makes): see :class:`s2e.rl.actor.Exploration`.
        reference_kl: weight of the penalty on KL(policy || pretrained policy) of the anchor choice
            (:class:`s2e.rl.actor.ReferenceScores`, :class:`AnchoredClipPPOLoss`; strategy ``ram``
            only, so the other strategies need it set to 0). 0: no penalty; the KL is logged as
            ``ppo/reference_kl`` whenever the strategy can compute it (at any weight, every
            minibatch). 0.01 kept every task at or above the pretrained policy; without it a task
            mix drifted (overall SR -0.08), 0.5 froze learning.
    """

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    critic_coeff: float = 0.5
    entropy_coeff: float = 0.0
    epochs: int = 2
    minibatch_size: int = 1024
    lr: float = 3e-4
    value_lr: float = 1e-3
    max_grad_norm: float = 1.0
    target_kl: Optional[float] = 0.02
    anchor_temperature: float = 0.5
    std_scale: float = 0.5
    exploration_space: str = "anchor"
    reference_kl: float = 0.01

    def __post_init__(self) -> None:
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"model.ppo.target_kl must be a positive number or null, got {self.target_kl}")
        if not (isinstance(self.reference_kl, (int, float)) and math.isfinite(self.reference_kl) and self.reference_kl >= 0):
            raise ValueError(f"model.ppo.reference_kl must be a finite number >= 0, got {self.reference_kl!r}")
        self.exploration()  # a bad temperature, std scale or space fails here, where it was configured

    def exploration(self) -> Exploration:
        """The behaviour distribution's shape (both collection and the update sample from it)."""
        return Exploration(self.anchor_temperature, self.std_scale, self.exploration_space)


class AnchoredClipPPOLoss(ClipPPOLoss):
    """``ClipPPOLoss`` that also reports KL(policy || pretrained policy) of the anchor choice, from the
    anchor scores of the same forward pass that gives PPO its ratio (one decoder pass per minibatch,
    not two): where a minibatch holds ``reference_scores`` (:class:`s2e.rl.actor.ReferenceScores`),
    the output gets ``reference_kl`` (its mean, detached, for the log) and ``loss_reference_kl``
    (``weight`` x that mean, with its gradient).
    """

    def __init__(self, *args: Any, reference_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference_weight = float(reference_weight)
        self._scores: Optional[Tensor] = None

    def _get_cur_log_prob(self, tensordict: TensorDictBase, params: Any = None) -> Any:
        # the actor's decoder writes its (tempered) anchor scores into the loss's copy of the minibatch
        out = super()._get_cur_log_prob(tensordict, params)
        if params is None:
            self._scores = tensordict.get("scores", None)
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._scores = None
        out = super().forward(tensordict)
        reference = tensordict.get(REFERENCE_SCORES_KEY, None)
        if reference is not None:
            if self._scores is None:
                raise RuntimeError("the actor wrote no 'scores' for the reference KL")
            drift = anchor_kl(self._scores, reference).mean()
            out.set(REFERENCE_KL_KEY, drift.detach())
            out.set("loss_reference_kl", self.reference_weight * drift)
        self._scores = None
        return out


def make_ppo_loss(modules: ActorCritic, config: PPOConfig) -> ClipPPOLoss:
    """``ClipPPOLoss`` over the actor and critic, reading the actor's sample and log-probability keys,
    with the KL penalty to the pretrained policy where the strategy can compute it."""
    loss = AnchoredClipPPOLoss(
        modules.actor,
        modules.critic,
        clip_epsilon=config.clip_epsilon,
        entropy_coeff=config.entropy_coeff,
        critic_coeff=config.critic_coeff,
        normalize_advantage=True,
        functional=False,  # the optimizer owns the live parameters; required under DDP
        reference_weight=config.reference_kl,
    )
    loss.set_keys(action=modules.action_key, sample_log_prob=modules.log_prob_key, value="state_value")
    return loss


def minibatch_indices(size: int, epochs: int, minibatch_size: int) -> Iterator[Tensor]:
    """``epochs`` shuffled passes over ``size`` samples, in minibatches of ``minibatch_size``."""
    for _ in range(epochs):
        yield from torch.randperm(size).split(minibatch_size)


def ppo_update(
    batch: TensorDictBase,
    loss: ClipPPOLoss,
    value_of: ValueOfObservation,
    config: PPOConfig,
    optimizer_step: OptimizerStep,
    reference_scores: Optional[TensorDictModule] = None,
) -> dict[str, float]:
    """One rollout batch [envs, time] of PPO; returns the ``ppo/*`` diagnostics (means over minibatches).
    ``reference_scores``: the actor's :class:`s2e.rl.actor.ReferenceScores` (``ActorCritic.reference_scores``),
    run once over the batch; the loss (:class:`AnchoredClipPPOLoss`) then logs the KL to them on
    every minibatch and adds its penalty (weight ``config.reference_kl``)."""
    # 1. advantages and value targets; V(s_t) was stored by the collector, V(s_t+1) is re-evaluated only where a row ends
    add_gae(batch, value_of, config.gamma, config.gae_lambda)

    # 2. flatten [envs, time] to samples, keeping only what the loss reads (no next observations)
    keys = loss.tensor_keys
    reads = [k for k in loss.in_keys if not (isinstance(k, tuple) and k[0] == "next")]
    flat = batch.select(*dict.fromkeys([*reads, keys.action, keys.sample_log_prob, keys.advantage, keys.value_target, keys.value])).reshape(-1)
    if reference_scores is not None:
        reference_scores(flat)  # the pretrained policy's anchor scores: stored keys only, so once per batch

    # 3. shuffled minibatch passes of the clipped objective + value loss (+ entropy bonus, + KL penalty)
    logged: dict[str, list[float]] = defaultdict(list)
    updates = 0
    for index in minibatch_indices(flat.shape[0], config.epochs, config.minibatch_size):
        losses = loss(flat[index])
        for key in PPO_DIAGNOSTICS:
            logged[key].append(float(losses[key].detach().mean()))
        if REFERENCE_KL_KEY in losses.keys():
            logged[REFERENCE_KL_KEY].append(float(losses[REFERENCE_KL_KEY]))
        if config.target_kl is not None and logged["kl_approx"][-1] > config.target_kl:
            break  # the policy left the trust region: this batch's data is used up
        optimizer_step(sum(losses[key] for key in losses.keys() if key.startswith("loss_")))
        updates += 1

    # 4. what TensorBoard shows
    out = {f"ppo/{k}": float(np.mean(v)) for k, v in logged.items()}
    out["ppo/updates"] = float(updates)
    out["ppo/value_target"] = float(batch["value_target"].mean())
    return out
