"""The Residual Attention Module: exact identity at step 0, where gradients go, re-ranking anchors from the
first updates, checkpoints (including the pre-2026-12 gated form) and export."""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_rl_distribution import _observation, _tiny_policy

from s2e.anchors import Anchors
from s2e.checkpoint import load_policy_from_checkpoint
from s2e.control import ControllerLimits
from s2e.export import DeployablePolicy, export_policy
from s2e.model.decoder import AnchorCrossAttention
from s2e.model.ram import RAMConfig, ResidualAttentionModule, wrap_with_ram
from s2e.timing import TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _outputs(policy, obs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = policy(obs["frames"], obs["goal"])
    return {k: out[k] for k in ("scores", "mean", "log_std", "rho", "scale", "anchor_features")}


def test_ram_policy_equals_the_pretrained_policy_bit_for_bit_at_step_zero() -> None:
    pretrained = _tiny_policy()
    wrapped = copy.deepcopy(pretrained)
    ram = wrap_with_ram(wrapped, RAMConfig())
    assert wrapped.cross_attention is ram and isinstance(ram.frozen, AnchorCrossAttention)
    obs = _observation()
    before, after = _outputs(pretrained, obs), _outputs(wrapped, obs)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # the residual copy starts as the pretrained block, not as noise
    for (name, frozen), (_, copy_) in zip(ram.frozen.named_parameters(), ram.residual.named_parameters()):
        assert torch.equal(frozen, copy_), name


def test_only_the_residual_branch_gets_gradients_and_the_output_gate_wakes_first() -> None:
    policy = _tiny_policy()
    ram = wrap_with_ram(policy)
    for param in policy.parameters():
        param.requires_grad_(False)
    for param in ram.trainable_parameters():
        param.requires_grad_(True)
    obs = _observation()
    out = policy(obs["frames"], obs["goal"])
    (out["mean"].square().mean() + out["scores"].logsumexp(-1).mean()).backward()
    assert all(p.grad is None for p in ram.frozen.parameters())
    assert ram.gate_out.weight.grad.abs().sum() > 0  # d/dZ_out = residual output, non-zero
    assert ram.gate_in.weight.grad.abs().sum() == 0  # blocked by Z_out = 0 until Z_out moves
    # after the output gate moves, the branch changes the policy's outputs
    with torch.no_grad():
        ram.gate_out.weight.normal_(std=0.1)
        changed = _outputs(policy, obs)
    assert not torch.equal(changed["scores"], _outputs(_tiny_policy(), obs)["scores"])


def _frozen_ram_policy(branch_input: str):
    policy = _tiny_policy()
    ram = wrap_with_ram(policy, RAMConfig(branch_input=branch_input))
    for param in policy.parameters():
        param.requires_grad_(False)
    for param in ram.trainable_parameters():
        param.requires_grad_(True)
    return policy, ram


def test_a_few_ram_updates_re_rank_the_anchors_and_leave_every_frozen_weight_bit_identical() -> None:
    """Cross-entropy towards the anchor the pretrained policy likes least, only RAM parameters in the
    optimizer: the branch reads the real anchor queries, so the argmax moves to that anchor within a
    few steps. The pre-2026-12 gated form (the copy reads Z_in(Q) = 0) gets the same first step but
    adds one vector to every anchor: the anchor probabilities do not move at all."""
    obs = _observation(1)
    first_step = {}
    for branch_input in ("queries", "gated"):
        policy, ram = _frozen_ram_policy(branch_input)
        frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
        with torch.no_grad():
            start = policy(obs["frames"], obs["goal"])["scores"].log_softmax(-1)
        target = start.argmin(-1)
        assert target != start.argmax(-1)
        optimizer = torch.optim.Adam(ram.trainable_parameters(), lr=1e-2)
        argmax = []
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(policy(obs["frames"], obs["goal"])["scores"], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                scores = policy(obs["frames"], obs["goal"])["scores"].log_softmax(-1)
            first_step.setdefault(branch_input, scores - start)
            argmax.append(int(scores.argmax(-1)))
        for name, param in policy.named_parameters():
            if name in frozen:
                assert torch.equal(param, frozen[name]), f"frozen {name} moved"
        if branch_input == "queries":
            assert argmax[-1] == int(target), argmax
    assert first_step["gated"].abs().max() < 1e-5  # one shared vector: the same shift of every score
    assert first_step["queries"][0, target] > 0.01  # the target anchor gained after one update


def test_wrapping_refuses_a_second_ram_and_foreign_blocks() -> None:
    policy = _tiny_policy()
    wrap_with_ram(policy)
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_with_ram(policy)
    with pytest.raises(TypeError, match="AnchorCrossAttention"):
        ResidualAttentionModule(torch.nn.Linear(4, 4))
    assert RAMConfig.from_options({"gate_bias": False}) == RAMConfig(gate_bias=False)
    assert RAMConfig.from_dict(RAMConfig(gate_bias=False).to_dict()) == RAMConfig(gate_bias=False)
    assert RAMConfig.from_dict({"gate_bias": False}) == RAMConfig(gate_bias=False, branch_input="gated")  # a pre-2026-12 checkpoint
    with pytest.raises((TypeError, ValueError)):
        RAMConfig.from_dict({"gate_bias": True, "depth": 2})
    with pytest.raises(ValueError, match="branch_input"):
        RAMConfig(branch_input="zero")


def _moved_ram_policy():
    policy = _tiny_policy()
    ram = wrap_with_ram(policy)
    torch.manual_seed(7)
    with torch.no_grad():
        for param in ram.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return policy


def test_a_ram_policy_exports_to_torchscript_that_matches_eager_in_a_fresh_process(tmp_path: pathlib.Path) -> None:
    policy = _moved_ram_policy()
    anchors_traj = policy.anchor_trajectories.numpy()
    anchors = Anchors(points=anchors_traj[:, -1], trajectories=anchors_traj, timing=TimingSpec(), counts=np.ones(3, np.int64))
    export_policy(policy, TimingSpec(), anchors, tmp_path / "export", ControllerLimits())
    obs = _observation(2)
    goal_xy = obs["goal"][:, :1] * obs["goal"][:, 1:]
    torch.save({"frames": obs["frames"], "goal": goal_xy}, tmp_path / "inputs.pt")
    with torch.no_grad():
        eager = DeployablePolicy(policy, TimingSpec(), ControllerLimits()).eval()(obs["frames"], goal_xy)
    script = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(tmp_path / 'export' / 'policy.ts')!r})\n"
        f"x = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)\n"
        "out = m(x['frames'], x['goal'])\n"
        f"torch.save(list(out), {str(tmp_path / 'outputs.pt')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    scripted = torch.load(tmp_path / "outputs.pt", weights_only=True)
    for got, want in zip(scripted, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the RAM changed what the exported policy plans
    with torch.no_grad():
        plain = DeployablePolicy(_tiny_policy(), TimingSpec(), ControllerLimits()).eval()(obs["frames"], goal_xy)
    assert not torch.allclose(plain[2], eager[2])


def test_load_policy_from_checkpoint_rebuilds_a_ram_policy(tmp_path: pathlib.Path) -> None:
    """The checkpoint contract of post-training, written by hand: ``s2e_policy`` with ``ram`` and the
    weights under ``policy.*`` (tests/test_posttrain.py checks a real PostTrainModule checkpoint)."""
    policy = _moved_ram_policy()
    checkpoint = {
        "s2e_policy": {"policy_config": policy.config.to_dict(), "timing": TimingSpec().to_dict(), "ram": RAMConfig().to_dict()},
        "state_dict": {f"policy.{k}": v for k, v in policy.state_dict().items()},
    }
    torch.save(checkpoint, tmp_path / "post.ckpt")
    loaded, timing, anchors = load_policy_from_checkpoint(tmp_path / "post.ckpt")
    assert isinstance(loaded.cross_attention, ResidualAttentionModule) and timing == TimingSpec() and anchors.num_anchors == 3
    obs = _observation()
    for key, value in _outputs(policy, obs).items():
        assert torch.equal(value, _outputs(loaded, obs)[key]), key


def test_a_pre_2026_12_post_trained_checkpoint_loads_as_the_gated_ram_it_was_trained_with(tmp_path: pathlib.Path) -> None:
    """Same state-dict keys, older ``ram`` entry (no ``branch_input``): the loaded RAM feeds the copy
    Z_in(Q) as it did when trained, so the policy's outputs are the ones it was trained to give."""
    policy = _tiny_policy()
    ram = wrap_with_ram(policy, RAMConfig(branch_input="gated"))
    torch.manual_seed(3)
    with torch.no_grad():
        for param in ram.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.05)
    checkpoint = {
        "s2e_policy": {"policy_config": policy.config.to_dict(), "timing": TimingSpec().to_dict(), "ram": {"gate_bias": True}},
        "state_dict": {f"policy.{k}": v for k, v in policy.state_dict().items()},
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded, _, _ = load_policy_from_checkpoint(tmp_path / "old.ckpt")
    assert loaded.cross_attention.config == RAMConfig(branch_input="gated")
    obs = _observation()
    for key, value in _outputs(policy, obs).items():
        assert torch.equal(value, _outputs(loaded, obs)[key]), key
