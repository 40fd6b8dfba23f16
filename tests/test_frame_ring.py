"""The context window ring shared by the simulator, the Isaac Lab adapter and the exported policy."""

from __future__ import annotations

import torch

from s2e.frame_ring import FrameRing, ring_window, window_length


def test_a_ring_reads_k_frames_stride_pushes_apart_with_the_first_frame_standing_in_before_it():
    k, stride, n = 3, 2, 2
    ring = FrameRing(n, k, stride, (1,), torch.long, "cpu")
    assert ring.frames.shape[1] == window_length(k, stride) == 5
    ring.restart(slice(None), torch.tensor([[0], [100]]))
    for t in range(1, 8):
        ring.push(torch.tensor([[t], [100 + t]]))
        expected = [max(0, t - lag) for lag in (4, 2, 0)]  # oldest first, the episode start before it
        assert ring.stacked()[:, :, 0].tolist() == [expected, [100 + e for e in expected]]
    ring.restart(torch.tensor([1]), torch.tensor([[50]]))  # a new episode in env 1 only
    assert ring.stacked()[:, :, 0].tolist() == [[3, 5, 7], [50, 50, 50]]


def test_ring_window_wraps_around_the_ring():
    ring = torch.arange(5).view(1, 5)
    assert ring_window(ring, newest=1, count=3, stride=2).tolist() == [[2, 4, 1]]
