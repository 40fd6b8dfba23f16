"""The KL of the RAM policy's anchor choice to the pretrained one (``ReferenceScores``, ``anchor_kl``), its
penalty in PPO (``PPOConfig.reference_kl``) and its log: zero at the start, the drift once the RAM
moved, a gradient that reaches only the RAM and pulls it back, and clear errors where it cannot apply."""

from __future__ import annotations

import pathlib

import pytest
import torch
from tensordict import TensorDict
from test_posttrain import pretrained  # noqa: F401 (a fixture)

from s2e.posttrain import PostTrainModule
from s2e.rl.actor import REFERENCE_SCORES_KEY, anchor_kl
from s2e.rl.ppo import REFERENCE_KL_KEY, PPOConfig

ANCHOR_PPO = PPOConfig(exploration_space="anchor", reference_kl=0.01)  # the shipped defaults, stated: what these tests rely on


def _rollout_sample(module: PostTrainModule, batch: int = 6) -> TensorDict:
    """What the collector stores for ``batch`` observations: context, the RAM's frozen half, the anchor choice."""
    policy = module.policy
    k, (h, w) = policy.config.context_frames, policy.config.image_size
    generator = torch.Generator().manual_seed(1)
    obs = TensorDict(
        {
            "frames": torch.randint(0, 256, (batch, k, 3, h, w), dtype=torch.uint8, generator=generator),
            "goal": torch.tensor([[8.0, 0.8, 0.6]]).expand(batch, 3),
        },
        batch_size=[batch],
    )
    with torch.no_grad():
        return module.agent.modules.drive(obs)


def _move_the_ram(module: PostTrainModule) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for gate in (module.policy.cross_attention.gate_in, module.policy.cross_attention.gate_out):
            gate.weight.normal_(0, 0.5)


def _kl(module: PostTrainModule, sample: TensorDict) -> torch.Tensor:
    """KL(current || pretrained) per sample, from the RAM decoder's scores and the stored reference."""
    modules = module.agent.modules
    sample = modules.reference_scores(sample.clone())
    scores = modules.actor.module[0](sample.clone())["scores"]  # the actor's decoder (ResidualDecoder)
    return anchor_kl(scores, sample[REFERENCE_SCORES_KEY])


def test_the_reference_kl_is_zero_at_the_start_and_measures_how_far_the_ram_moved(pretrained: pathlib.Path) -> None:  # noqa: F811
    module = PostTrainModule(str(pretrained), strategy="ram", ppo=ANCHOR_PPO)
    sample = _rollout_sample(module)
    assert torch.allclose(_kl(module, sample), torch.zeros(6), atol=1e-6)

    _move_the_ram(module)
    drift = _kl(module, sample)
    assert drift.shape == (6,) and (drift > 1e-4).all()

    frozen = {n: p.detach().clone() for n, p in module.policy.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in module.policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        _kl(module, sample).mean().backward()
        optimizer.step()
    assert _kl(module, sample).mean() < 0.5 * drift.mean()  # the penalty pulls the RAM back
    assert all(torch.equal(p, frozen[n]) for n, p in module.policy.named_parameters() if n in frozen)  # and nothing else moves


def test_the_ppo_loss_penalises_the_kl_of_its_own_forward_pass(pretrained: pathlib.Path) -> None:  # noqa: F811
    """``AnchoredClipPPOLoss`` takes the KL from the scores of the pass that gives the ratio: it equals
    the KL computed on its own, and its penalty term is the weight times it, with a gradient."""
    module = PostTrainModule(str(pretrained), strategy="ram", ppo=PPOConfig(reference_kl=0.25))
    _move_the_ram(module)
    sample = module.agent.modules.reference_scores(_rollout_sample(module))
    sample["advantage"] = torch.linspace(-1, 1, 6)[:, None]
    sample["value_target"] = torch.zeros(6, 1)
    sample["state_value"] = torch.zeros(6, 1)
    losses = module.agent.loss(sample)
    expected = _kl(module, sample).mean()
    assert torch.allclose(losses[REFERENCE_KL_KEY], expected, atol=1e-6) and expected > 1e-4
    assert torch.allclose(losses["loss_reference_kl"], 0.25 * expected, atol=1e-6) and losses["loss_reference_kl"].requires_grad
    del sample[REFERENCE_SCORES_KEY]  # no reference in the batch (another strategy): no term
    assert "loss_reference_kl" not in module.agent.loss(sample).keys()


def test_the_penalty_needs_the_ram_and_a_valid_weight(pretrained: pathlib.Path) -> None:  # noqa: F811
    for strategy in ("full", "decoder", "sft"):  # the default penalty too: the message says how to run without it
        with pytest.raises(ValueError, match=r"reference_kl 0.01 needs strategy 'ram'.*--model.init_args.ppo.reference_kl 0"):
            PostTrainModule(str(pretrained), strategy=strategy)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="reference_kl must be a finite number >= 0"):
            PPOConfig(reference_kl=bad)
    no_penalty = PPOConfig(reference_kl=0.0)
    assert PostTrainModule(str(pretrained), strategy="decoder", ppo=no_penalty).agent.modules.reference_scores is None  # no penalty asked: fine
