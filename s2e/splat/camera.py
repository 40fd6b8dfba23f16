"""Robot cameras as the 4x4 view matrices and 3x3 intrinsics splat renderers take.

The world is z-up with the robot on the ground plane (REP-103, as everywhere in s2e); renderers
work in the OpenCV camera frame (x right, y down, z forward). The camera is level (pitch 0) with
square pixels and a centred principal point, the same pinhole the raycaster draws, so a policy
sees the same geometry whichever renderer made its frames.
"""

from __future__ import annotations

import torch
from torch import Tensor


def level_viewmats(xy: Tensor, yaw: Tensor, height: Tensor) -> Tensor:
    """World-to-camera matrices [B, 4, 4] of level cameras at (x, y, height) looking along yaw."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rot = torch.stack(
        [
            torch.stack([s, -c, zero], -1),  # camera x: the robot's right
            torch.stack([zero, zero, -one], -1),  # camera y: down
            torch.stack([c, s, zero], -1),  # camera z: forward
        ],
        -2,
    )
    position = torch.cat([xy, height[:, None]], -1)
    view = torch.zeros(xy.shape[0], 4, 4, dtype=xy.dtype, device=xy.device)
    view[:, :3, :3] = rot
    view[:, :3, 3] = -(rot @ position[:, :, None])[..., 0]
    view[:, 3, 3] = 1.0
    return view


def pinhole_intrinsics(hfov_deg: Tensor, width: int, height: int) -> Tensor:
    """Intrinsics [B, 3, 3] for horizontal fields of view [B] (square pixels, centred principal point)."""
    focal = 0.5 * width / torch.tan(torch.deg2rad(hfov_deg) / 2)
    k = torch.zeros(hfov_deg.shape[0], 3, 3, dtype=hfov_deg.dtype, device=hfov_deg.device)
    k[:, 0, 0], k[:, 1, 1] = focal, focal
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = width / 2, height / 2, 1.0
    return k


def camera_positions(viewmats: Tensor) -> Tensor:
    """World positions [C, 3] of cameras with world-to-camera matrices [C, 4, 4]."""
    rot, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -(rot.transpose(-1, -2) @ t[:, :, None])[..., 0]
