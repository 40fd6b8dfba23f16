"""Shared test helpers: real mp4 episodes whose frames carry their own index.

Each frame paints its index as a row of 12 black/white blocks (binary, MSB first) across the top
band, large enough to survive H.264 compression and resizing, so a test can decode a frame and
check that it is the frame it should be.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch

from datamodules.episode import Trajectory
from s2e.video_io import write_mp4

INDEX_BITS = 12


def frame_with_index(index: int, height: int = 96, width: int = 128) -> np.ndarray:
    """An RGB frame whose top half encodes ``index`` in binary blocks; the bottom half is a gradient."""
    frame = np.zeros((height, width, 3), np.uint8)
    for bit in range(INDEX_BITS):
        if (index >> (INDEX_BITS - 1 - bit)) & 1:
            frame[: height // 2, int(bit * width / INDEX_BITS) : int((bit + 1) * width / INDEX_BITS)] = 255
    frame[height // 2 :, :, 1] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of :func:`frame_with_index` for a (possibly resized) HxWx3 or 3xHxW uint8 frame."""
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    height, width = frame.shape[:2]
    top = frame[: height // 2].astype(np.float32).mean(axis=(0, 2))
    value = 0
    for bit in range(INDEX_BITS):
        lo, hi = int(bit * width / INDEX_BITS), int((bit + 1) * width / INDEX_BITS)
        centre = top[lo + (hi - lo) // 4 : hi - (hi - lo) // 4]
        value = (value << 1) | int(centre.mean() > 127)
    return value


def encode_indexed_video(num_frames: int, fps: float | Fraction = 10, *, bframes: int = 0, height: int = 96, width: int = 128) -> bytes:
    buf = io.BytesIO()
    write_mp4(buf, (frame_with_index(i, height, width) for i in range(num_frames)), fps, bframes=bframes)
    return buf.getvalue()


def curved_trajectory(num_frames: int, fps: float, speed: float = 1.2, turn_rate: float = 0.15) -> Trajectory:
    """A robot driving along an arc at constant speed, one pose per frame."""
    t = np.arange(num_frames) / float(fps)
    yaw = 0.3 + turn_rate * t
    # integrate the unicycle exactly on an arc
    x = speed / turn_rate * (np.sin(yaw) - np.sin(yaw[0]))
    y = -speed / turn_rate * (np.cos(yaw) - np.cos(yaw[0]))
    return Trajectory(t=t, xy=np.stack([x, y], -1), yaw=yaw, speed=np.full(num_frames, speed))


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Tests share 2 cores with each other's subprocesses; one intra-op thread keeps them predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
