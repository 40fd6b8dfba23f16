"""Frozen-encoder features of the env's stacked frames, one new frame encoded per env and step.

``NavEnv`` shows the policy its last k frames, ``stride`` control steps apart (``TimingSpec.
frame_stride``), from a ring of the last ``(k - 1) * stride + 1`` rendered frames; a reset fills that
env's history with its first frame. While the frame encoder is frozen (strategies ``ram`` and
``decoder``), re-encoding all k frames of every env at every step is k-fold waste: each frame's
feature is the same at every step it stays in the stack (``S2EPolicy.encode_frames`` encodes frames
independently).

:class:`FrameFeatures` is an env transform that keeps a feature ring of the same length and head
as the env's frame ring, one row per env, and replaces the observation ``frames`` [N, k, 3, H, W] by
``frame_features`` [N, k, D]. What it encodes comes from the observation itself: it tracks which
ring slots hold a known feature, and encodes exactly the stacked frames whose slot is unknown.

* step: every env's ring moves on by one slot; the new slot (the newest frame) is unknown, so one
  frame per env is encoded.
* reset (whole or partial, ``_reset`` mask): every slot of the reset envs becomes unknown, so their
  k stacked frames are encoded from the reset observation. The ring slots between the stacked ones
  (stride > 1) are encoded when they enter the stack over the next ``stride - 1`` steps, again from
  the observation, so the cache never assumes how the env pads a new episode's history.

The only assumption is the env's sliding window itself: the frame rendered l steps ago is, a step
later, the one rendered l + 1 steps ago, unless the env reset; ``tests/test_rl_features.py`` checks
the features against encoding every stacked frame, over steps that include partial resets. (NavBench's
agents cache from the policy side instead, ``s2e.bench.agents.FrameFeatureCache``, and so keep and
compare frames byte for byte; an env transform sees every reset and step and needs neither.)
Dropping ``frames`` also keeps k raw images per step (twice: observation and next observation) out
of the rollout batch, which PPO on stored contexts never reads.
"""

from __future__ import annotations

from typing import Optional

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import Transform

from s2e.frame_ring import window_length
from s2e.model.policy import S2EPolicy

FRAMES_KEY = "frames"
FEATURES_KEY = "frame_features"


class FrameFeatures(Transform):
    """``frames`` -> ``frame_features`` through ``policy.encode_frames``, with a per-env feature ring.

    Args:
        policy: the policy whose (frozen) ``encode_frames`` gives the features, on any device (frames
            go there and features come back). :func:`s2e.rl.collect.env_factory` hands it a frozen copy.
        stride: env steps between stacked frames (the env's ``stride``, :func:`s2e.sim.env.decision_stride`).
    """

    def __init__(self, policy: S2EPolicy, stride: int) -> None:
        super().__init__(in_keys=[FRAMES_KEY], out_keys=[FEATURES_KEY])
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.__dict__["policy"] = policy  # not a submodule: the env never owns or moves the policy's weights
        self.stride = int(stride)
        self._ring: Optional[torch.Tensor] = None  # [N, L, D] features by ring slot
        self._known: Optional[torch.Tensor] = None  # [N, L] whether a slot's feature is that of the frame there
        self._head = 0  # ring slot of the newest frame
        self.encoded_frames = 0  # frames encoded so far (for benchmarks and tests)

    # ------------------------------------------------------------------ the ring
    def _slots(self, k: int) -> torch.Tensor:
        """Ring slots of the k stacked frames, oldest first (the order of ``s2e.frame_ring.ring_window``)."""
        length = self._ring.shape[1]
        return (self._head - torch.arange(k - 1, -1, -1) * self.stride) % length

    def _allocate(self, frames: torch.Tensor) -> None:
        n, k = frames.shape[:2]
        length = window_length(k, self.stride)
        dim = self.policy.config.d_model
        self._ring = torch.zeros(n, length, dim, device=frames.device)
        self._known = torch.zeros(n, length, dtype=torch.bool, device=frames.device)
        self._head = 0

    @torch.no_grad()
    def _features(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode the stacked frames whose slots are unknown, then read the stack from the ring."""
        k = frames.shape[1]
        slots = self._slots(k).to(frames.device)
        rows, lags = (~self._known[:, slots]).nonzero(as_tuple=True)  # steady state: every env's newest frame
        if len(rows):
            cells = (rows, slots[lags])
            todo = frames[rows, lags][:, None].to(self.policy.anchor_points.device)
            self._ring[cells] = self.policy.encode_frames(todo)[:, 0].to(self._ring)
            self._known[cells] = True
            self.encoded_frames += len(rows)
        return self._ring.index_select(1, slots)

    def _replace(self, tensordict: TensorDictBase) -> TensorDictBase:
        frames = tensordict.pop(FRAMES_KEY)
        tensordict.set(FEATURES_KEY, self._features(frames))
        return tensordict

    # ------------------------------------------------------------------ TorchRL hooks
    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        frames = tensordict_reset.get(FRAMES_KEY)
        n, k = frames.shape[:2]
        if self._ring is None or self._ring.shape[0] != n or self._ring.shape[1] != window_length(k, self.stride):
            self._allocate(frames)
        else:
            reset = tensordict.get("_reset", None)  # absent: the whole batch resets
            self._known[slice(None) if reset is None else reset.reshape(n).to(self._known.device)] = False
        return self._replace(tensordict_reset)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        if self._ring is None:
            raise RuntimeError("FrameFeatures: the env was stepped before its first reset")
        self._head = (self._head + 1) % self._ring.shape[1]
        self._known[:, self._head] = False
        return self._replace(next_tensordict)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise RuntimeError("FrameFeatures is stateful: it runs inside env.reset / env.step only")

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise RuntimeError("FrameFeatures is stateful: it runs inside env.reset / env.step only")

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        frames = observation_spec[FRAMES_KEY]
        n, k = frames.shape[0], frames.shape[1]
        del observation_spec[FRAMES_KEY]
        observation_spec[FEATURES_KEY] = Unbounded(shape=(n, k, self.policy.config.d_model), dtype=torch.float32, device=frames.device)
        return observation_spec
