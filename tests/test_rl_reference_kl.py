"""The KL of the RAM policy's anchor choice to the pretrained one (``AnchorReferenceKL``), its
penalty in PPO (``PPOConfig.reference_kl``) and its log: zero at the start, the drift once the RAM
moved, a gradient that reaches only the RAM and pulls it back, and clear errors where it cannot apply."""

from __future__ import annotations

import pathlib

import pytest
import torch
from tensordict import TensorDict
from test_posttrain import pretrained  # noqa: F401 (a fixture)

from s2e.posttrain import PostTrainModule
from s2e.rl.actor import REFERENCE_KL_KEY
from s2e.rl.ppo import PPOConfig

ANCHOR_PPO = PPOConfig(exploration_space="anchor")


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


def test_the_reference_kl_is_zero_at_the_start_and_measures_how_far_the_ram_moved(pretrained: pathlib.Path) -> None:  # noqa: F811
    module = PostTrainModule(str(pretrained), strategy="ram", ppo=ANCHOR_PPO)
    reference_kl = module.agent.modules.reference_kl
    sample = _rollout_sample(module)
    assert torch.allclose(reference_kl(sample.clone())[REFERENCE_KL_KEY], torch.zeros(6), atol=1e-6)

    _move_the_ram(module)
    drift = reference_kl(sample.clone())[REFERENCE_KL_KEY]
    assert drift.shape == (6,) and (drift > 1e-4).all()

    frozen = {n: p.detach().clone() for n, p in module.policy.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in module.policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        reference_kl(sample.clone())[REFERENCE_KL_KEY].mean().backward()
        optimizer.step()
    assert reference_kl(sample.clone())[REFERENCE_KL_KEY].mean() < 0.5 * drift.mean()  # the penalty pulls the RAM back
    assert all(torch.equal(p, frozen[n]) for n, p in module.policy.named_parameters() if n in frozen)  # and nothing else moves


def test_the_penalty_needs_the_ram_and_a_valid_weight(pretrained: pathlib.Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="reference_kl needs strategy 'ram'"):
        PostTrainModule(str(pretrained), strategy="full", ppo=PPOConfig(exploration_space="anchor", reference_kl=0.1))
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="reference_kl must be a finite number >= 0"):
            PPOConfig(reference_kl=bad)
    assert PostTrainModule(str(pretrained), strategy="decoder", ppo=ANCHOR_PPO).agent.modules.reference_kl is None  # no penalty asked: fine
