"""s2e.checkpoint: the policy checkpoint's one writer, reader and checks, importable without Lightning
or TorchRL; what it reads back is what was written, and what it refuses is named."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch

from s2e.checkpoint import (
    CHECKPOINT_KEY,
    POSTTRAIN_CLASS,
    PRETRAIN_CLASS,
    check_resumable,
    checkpoint_stage,
    load_policy_from_checkpoint,
    policy_entry,
    read_checkpoint,
)
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.model.ram import RAMConfig, ResidualAttentionModule, wrap_with_ram
from s2e.timing import TimingMismatchError, TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {"d_model": 32, "cnn_channels": [8, 16, 16, 32], "fusion_heads": 2, "fusion_depth": 1, "num_anchors": 3, "image_size": (32, 32)}


def _tiny_policy(ram: bool = False, **overrides) -> S2EPolicy:
    """A random tiny policy; with ``ram``, its cross-attention wrapped (and the branch moved off zero)."""
    torch.manual_seed(0)
    config = PolicyConfig.preset("small", **{**TINY, **overrides})
    trajectories = torch.cumsum(torch.rand(config.num_anchors, config.num_waypoints, 2), 1)
    policy = S2EPolicy(config, trajectories[:, -1], trajectories)
    if ram:
        block = wrap_with_ram(policy, RAMConfig())
        with torch.no_grad():
            for param in block.gate_out.parameters():
                param.add_(0.1)
    return policy.eval()


def _checkpoint(policy, strategy=None) -> dict:
    """What the LightningModules save: the weights under ``policy.`` plus the entry."""
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    return {"state_dict": state, CHECKPOINT_KEY: policy_entry(policy, TimingSpec(), strategy)}


def test_importing_it_loads_neither_lightning_nor_torchrl() -> None:
    script = "import sys, s2e.checkpoint; print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'torchrl', 'tensordict'}))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_what_is_written_is_read_back_and_names_its_stage(tmp_path: pathlib.Path) -> None:
    pre = _tiny_policy()
    post = _tiny_policy(ram=True)
    for policy, strategy, stage in ((pre, None, PRETRAIN_CLASS), (post, "ram", POSTTRAIN_CLASS)):
        path = tmp_path / f"{stage}.ckpt"
        torch.save(_checkpoint(policy, strategy), path)
        assert checkpoint_stage(read_checkpoint(path, mmap=True)) == stage
        loaded, timing, anchors = load_policy_from_checkpoint(path)
        assert timing == TimingSpec() and anchors.num_anchors == policy.config.num_anchors
        assert isinstance(loaded.cross_attention, ResidualAttentionModule) == (strategy is not None)
        for name, value in policy.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name
    assert policy_entry(post, TimingSpec(), "ram")["ram"] == RAMConfig().to_dict()
    assert policy_entry(pre, TimingSpec(), "full")["ram"] is None


def test_what_is_no_policy_checkpoint_is_named(tmp_path: pathlib.Path) -> None:
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_policy_from_checkpoint(noise)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not an S2E policy checkpoint"):
        load_policy_from_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_policy_from_checkpoint(tmp_path / "missing.ckpt")


def test_resuming_needs_the_same_timing_architecture_and_ram() -> None:
    pre, post = _tiny_policy(), _tiny_policy(ram=True)
    check_resumable(_checkpoint(post, "ram"), TimingSpec(), run="this run", policy=post, strategy="ram")
    with pytest.raises(TimingMismatchError, match="control_dt"):
        check_resumable(_checkpoint(pre), TimingSpec(control_dt=0.05), run="this run")
    with pytest.raises(ValueError, match="trained with RAM but this run's policy is not RAM-wrapped"):
        check_resumable(_checkpoint(post, "ram"), TimingSpec(), run="this run", policy=pre, strategy="full")
    with pytest.raises(ValueError, match="policy architecture differs"):
        check_resumable(_checkpoint(pre), TimingSpec(), run="this run", policy=_tiny_policy(d_model=16))
