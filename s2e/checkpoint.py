"""The policy checkpoint: its schema, its one reader and its checks, without Lightning or TorchRL.

Every training stage saves a Lightning ``.ckpt`` (weights under ``state_dict``, the CLI's
``hyper_parameters``, loop state) and adds the entry this module defines, so the policy can be
rebuilt from the file alone, with no config, anchors file or training code:

* ``state_dict["policy.*"]``: the policy's weights and buffers (the anchors are buffers);
  pretraining also stores ``anchor_counts``;
* ``s2e_policy``: ``policy_config`` (:class:`PolicyConfig` as a dict) and ``timing``
  (:class:`TimingSpec` as a dict); post-training adds ``ram`` (:class:`RAMConfig` as a dict, or
  ``None`` without RAM) and ``strategy``.

Everything is tensors and plain types, read with ``torch.load(weights_only=True)`` only: nothing is
unpickled, and a file that is no checkpoint is named with what was expected, never answered with a
hint to load it unsafely. The exporter, the benchmark and robot-side tools read checkpoints through
this module, so it imports neither Lightning nor TorchRL (``tests/test_checkpoint.py`` checks).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from s2e.anchors import Anchors
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.model.ram import RAMConfig, ResidualAttentionModule, wrap_with_ram
from s2e.timing import TimingSpec

CHECKPOINT_KEY = "s2e_policy"
POLICY_PREFIX = "policy."  # the LightningModules hold the policy as ``self.policy``
PRETRAIN_CLASS = "s2e.pretrain.PretrainModule"
POSTTRAIN_CLASS = "s2e.posttrain.PostTrainModule"
EXPECTED_CHECKPOINT = "a .ckpt written by `python -m s2e fit` (PretrainModule or PostTrainModule)"


# ---------------------------------------------------------------------------- writing
def policy_ram(policy: S2EPolicy) -> Optional[RAMConfig]:
    """The RAM config of a policy whose cross-attention is a Residual Attention Module, else None."""
    block = policy.cross_attention
    return block.config if isinstance(block, ResidualAttentionModule) else None


def policy_entry(policy: S2EPolicy, timing: TimingSpec, strategy: Optional[str] = None) -> dict[str, Any]:
    """The ``s2e_policy`` entry: pretraining's without ``strategy``, post-training's with it (which
    also records the RAM config, so the reader wraps the policy before loading its weights)."""
    entry: dict[str, Any] = {"policy_config": policy.config.to_dict(), "timing": timing.to_dict()}
    if strategy is not None:
        ram = policy_ram(policy)
        entry.update(ram=ram.to_dict() if ram is not None else None, strategy=strategy)
    return entry


# ---------------------------------------------------------------------------- reading
def read_checkpoint(path: Union[str, Path], map_location: str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``, or a ValueError that names the file and what
    was expected. ``mmap`` maps the tensors instead of reading them (for a look at the entries only:
    the mapping breaks if the file is rewritten while its tensors are in use)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive; its directory is at the end
        raise ValueError(f"{path} is not a PyTorch checkpoint (empty, truncated or another kind of file); expected {EXPECTED_CHECKPOINT}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds objects other than tensors and plain values, which s2e never loads; expected {EXPECTED_CHECKPOINT}") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is a damaged PyTorch checkpoint ({str(err).splitlines()[0][:120]}); expected {EXPECTED_CHECKPOINT}") from None


def stored_policy(checkpoint: Mapping[str, Any], source: object) -> dict[str, Any]:
    """The checkpoint's ``s2e_policy`` entry; a ValueError naming ``source`` if it has none."""
    stored = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(stored, dict):
        raise ValueError(f"{source} is not an S2E policy checkpoint (it has no {CHECKPOINT_KEY!r} entry)")
    return stored


def checkpoint_stage(checkpoint: Mapping[str, Any]) -> Optional[str]:
    """The class path of the LightningModule that wrote ``checkpoint``: the CLI records it in the
    hyper-parameters; without it, the s2e policy entry tells (post-training stores its strategy)."""
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path:
        return str(class_path)
    stored = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(stored, dict):
        return None
    return POSTTRAIN_CLASS if "strategy" in stored else PRETRAIN_CLASS


def load_policy_from_checkpoint(path: Union[str, Path], map_location: str = "cpu") -> tuple[S2EPolicy, TimingSpec, Anchors]:
    """Rebuild the trained policy from a PretrainModule or PostTrainModule checkpoint alone (no
    anchors file, no config). A post-trained checkpoint with ``s2e_policy["ram"]`` gives a policy
    whose ``cross_attention`` is the Residual Attention Module; its outputs have the same form.

    Returns the policy (eval mode), its TimingSpec and its Anchors.
    """
    checkpoint = read_checkpoint(path, map_location)
    stored = stored_policy(checkpoint, path)
    config = PolicyConfig.from_dict(stored["policy_config"])
    timing = TimingSpec.from_dict(stored["timing"])
    weights = checkpoint["state_dict"]
    state = {k[len(POLICY_PREFIX) :]: v for k, v in weights.items() if k.startswith(POLICY_PREFIX)}
    policy = S2EPolicy(config, state["anchor_points"], state["anchor_trajectories"])
    if stored.get("ram"):  # wrap before loading, so the RAM's keys find their modules
        wrap_with_ram(policy, RAMConfig.from_dict(stored["ram"]))
    policy.load_state_dict(state)
    policy.eval()
    counts = weights.get("anchor_counts", torch.zeros(config.num_anchors, dtype=torch.int64))
    anchors = Anchors(
        points=state["anchor_points"].numpy(),
        trajectories=state["anchor_trajectories"].numpy(),
        timing=timing,
        counts=counts.numpy(),
    )
    return policy, timing, anchors


# ---------------------------------------------------------------------------- checks
def check_resumable(
    checkpoint: Mapping[str, Any],
    timing: TimingSpec,
    *,
    run: str,
    policy: Optional[S2EPolicy] = None,
    strategy: Optional[str] = None,
) -> None:
    """Refuse to resume (or fine-tune) a run from ``checkpoint`` unless it has the run's TimingSpec;
    with ``policy``, also the same architecture and the same RAM wrapping and config. ``run`` names
    the run in the messages, ``strategy`` says why it is (not) RAM-wrapped."""
    stored = stored_policy(checkpoint, "the checkpoint")
    timing.check_compatible(TimingSpec.from_dict(stored["timing"]), this=run, that="checkpoint")
    if policy is None:
        return
    if PolicyConfig.from_dict(stored["policy_config"]) != policy.config:
        raise ValueError(f"the checkpoint's policy architecture differs from {run}'s pretrained policy")
    ram = policy_ram(policy)
    had_ram, has_ram = bool(stored.get("ram")), ram is not None
    if had_ram != has_ram:
        raise ValueError(
            f"the checkpoint was trained {'with' if had_ram else 'without'} RAM but {run}'s policy is "
            f"{'' if has_ram else 'not '}RAM-wrapped (strategy {strategy!r})"
        )
    if had_ram and RAMConfig.from_dict(stored["ram"]) != ram:
        raise ValueError(
            f"the checkpoint's RAM {RAMConfig.from_dict(stored['ram'])} differs from {run}'s {ram}; "
            "resume with the same model.ram (older checkpoints have branch_input 'gated')"
        )


def check_experiment_matches(
    config: PolicyConfig,
    checkpoint_timing: TimingSpec,
    checkpoint_anchors: Anchors,
    timing: Optional[dict[str, Any]],
    image_size: Optional[tuple[int, int]],
    anchors_path: Optional[str],
    source: str,
) -> None:
    """What an experiment states about timing, image size or anchors must be what the checkpoint holds.

    The env is built from the checkpoint's TimingSpec and image size, so these statements are
    assertions: a config written for another model fails here with every difference named.
    """
    if timing is not None:
        TimingSpec.from_dict(timing).check_compatible(checkpoint_timing, this="model.timing (the env)", that=f"checkpoint {source}")
    if image_size is not None and tuple(int(s) for s in image_size) != config.image_size:
        raise ValueError(f"model.image_size {tuple(image_size)} differs from the checkpoint's {config.image_size} ({source})")
    if anchors_path is not None:
        anchors = Anchors.load(anchors_path)
        anchors.timing.check_compatible(checkpoint_timing, this=f"anchors {anchors_path}", that=f"checkpoint {source}")
        same = anchors.points.shape == checkpoint_anchors.points.shape and np.allclose(anchors.points, checkpoint_anchors.points, atol=1e-5)
        if not same or not np.allclose(anchors.trajectories, checkpoint_anchors.trajectories, atol=1e-5):
            raise ValueError(
                f"anchors {anchors_path} ({anchors.num_anchors} anchors) are not the anchors the checkpoint {source} was "
                f"trained with ({checkpoint_anchors.num_anchors}); post-training keeps the pretrained anchors"
            )
