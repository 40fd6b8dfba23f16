"""The context window as a ring: the newest frames (or their features), one per step, read k at a time.

A policy sees k frames ``frame_dt`` apart, but frames arrive every step (a control period, or a
held command's worth of them), so whoever feeds a policy keeps the last
``(k - 1) * stride + 1`` of them and reads every ``stride``-th: the simulator (``NavEnv``), the
Isaac Lab adapter and the exported policy's streaming ``step``. A ring (a fixed buffer and the slot
of the newest entry) does that without copying the window every step. Before an episode has filled
it, its first frame stands in for the older ones: the robot stood still before it started.

:func:`ring_window` is plain TorchScript-compatible torch, so the exported policy reads its feature
cache with the very function the simulator reads its frames with.
"""

from __future__ import annotations

import torch
from torch import Tensor


def window_length(context_frames: int, stride: int) -> int:
    """Entries a ring keeps to read ``context_frames`` of them ``stride`` apart (the oldest to the newest)."""
    return (context_frames - 1) * stride + 1


def ring_window(ring: Tensor, newest: int, count: int, stride: int) -> Tensor:
    """``count`` entries of ``ring`` [N, L, ...] (dim 1 a ring whose newest entry is at slot ``newest``),
    ``stride`` slots apart, oldest first: [N, count, ...]."""
    order = (newest - torch.arange(count - 1, -1, -1, device=ring.device) * stride) % ring.shape[1]
    return ring.index_select(1, order)  # far faster than ring[:, order] on a uint8 ring (docs/experiments.md)


class FrameRing:
    """The last ``window_length(context_frames, stride)`` frames of N envs, one pushed per step.

    Args:
        num_envs: rows (envs) of the ring.
        context_frames: k, frames per context.
        stride: pushes between consecutive context frames.
        frame_shape: shape of one env's frame, e.g. (3, H, W).
        dtype, device: of the stored frames.
    """

    def __init__(self, num_envs: int, context_frames: int, stride: int, frame_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> None:
        self.context_frames, self.stride = int(context_frames), int(stride)
        length = window_length(self.context_frames, self.stride)
        self.frames = torch.zeros(num_envs, length, *frame_shape, dtype=dtype, device=device)
        self.head = 0  # slot of the next push

    def restart(self, rows: Tensor | slice, frames: Tensor) -> None:
        """Start the episodes of ``rows`` from ``frames`` [n, ...]: every slot holds it (the robot stood still before)."""
        self.frames[rows] = frames[:, None]

    def push(self, frames: Tensor) -> None:
        """Every env's newest frame [N, ...]."""
        self.frames[:, self.head] = frames
        self.head = (self.head + 1) % self.frames.shape[1]

    def stacked(self) -> Tensor:
        """The context [N, k, ...]: k frames ``stride`` pushes apart, the newest last."""
        return ring_window(self.frames, (self.head - 1) % self.frames.shape[1], self.context_frames, self.stride)
