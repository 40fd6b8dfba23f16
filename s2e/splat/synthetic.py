"""Synthetic splat geometry with known layout: walls and ground planes made of Gaussians.

Real captures are too big for tests and cannot ship in git; a street built from Gaussians whose
walls and sidewalk are known exactly lets tests check the slicer (does it find the wall?), the
renderers (is the wall where it should be in the image?) and ``NavEnv`` on a splat scene
(does the robot stop at the wall?). ``tools/make_splat_scene.py`` writes one as a ``.ply``.
"""

from __future__ import annotations

import math

import torch

from s2e.splat.gaussians import Gaussians, rgb_to_sh0


def _flat_gaussians(points: torch.Tensor, normal_axis: int, spacing: float, rgb: torch.Tensor, quats: torch.Tensor) -> Gaussians:
    """Opaque Gaussians at points [N, 3], wide (0.6 spacing) in-plane and thin along ``normal_axis``."""
    scale = torch.full((len(points), 3), 0.6 * spacing)
    scale[:, normal_axis] = 0.02
    return Gaussians(means=points, quats=quats, log_scales=scale.log(), opacity_logits=torch.full((len(points),), 4.0), sh=rgb_to_sh0(rgb)[:, None])


def gaussian_wall(
    start: tuple[float, float],
    end: tuple[float, float],
    height: float,
    spacing: float = 0.2,
    rgb: tuple[float, float, float] = (0.65, 0.45, 0.35),
    seed: int = 0,
) -> Gaussians:
    """A vertical wall of Gaussians from ground ``start`` to ``end`` (x, y), ``height`` metres tall."""
    gen = torch.Generator().manual_seed(seed)
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    if length <= 0 or height <= 0 or spacing <= 0:
        raise ValueError("a wall needs a positive length, height and spacing")
    s, z = torch.meshgrid(torch.arange(0.5 * spacing, length, spacing), torch.arange(0.5 * spacing, height, spacing), indexing="ij")
    s, z = s.reshape(-1), z.reshape(-1)
    points = torch.stack([x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length, z], -1)
    yaw = math.atan2(y1 - y0, x1 - x0)
    quats = torch.tensor([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]).expand(len(points), 4).clone()
    shade = 1.0 + 0.15 * (torch.rand(len(points), 1, generator=gen) - 0.5)
    return _flat_gaussians(points, 1, spacing, (torch.tensor(rgb) * shade).clamp(0, 1), quats)  # local y is the wall normal


def gaussian_ground(
    x_range: tuple[float, float], y_range: tuple[float, float], spacing: float = 0.25, rgb: tuple[float, float, float] = (0.55, 0.55, 0.52), seed: int = 0
) -> Gaussians:
    """A flat ground patch of Gaussians at z = 0 over the given x and y ranges."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.meshgrid(
        torch.arange(x_range[0] + spacing / 2, x_range[1], spacing), torch.arange(y_range[0] + spacing / 2, y_range[1], spacing), indexing="ij"
    )
    points = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(x.numel())], -1)
    shade = 1.0 + 0.2 * (torch.rand(len(points), 1, generator=gen) - 0.5)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(points), 4).clone()
    return _flat_gaussians(points, 2, spacing, (torch.tensor(rgb) * shade).clamp(0, 1), quats)


def synthetic_street(length: float = 30.0, width: float = 6.0, wall_height: float = 3.0, spacing: float = 0.25, seed: int = 0) -> Gaussians:
    """A straight street along x: ground for |x| <= length/2 between facades at y = +-width/2 (which run
    0.5 m past the ground's ends), and an end wall at x = +length/2 closing the street on that side."""
    half, end = width / 2, length / 2
    parts = [
        gaussian_ground((-end, end), (-half, half), spacing, seed=seed),
        gaussian_wall((-end - 0.5, half), (end + 0.5, half), wall_height, spacing, rgb=(0.70, 0.45, 0.35), seed=seed + 1),
        gaussian_wall((-end - 0.5, -half), (end + 0.5, -half), wall_height, spacing, rgb=(0.45, 0.50, 0.65), seed=seed + 2),
        gaussian_wall((end, -half), (end, half), wall_height, spacing, rgb=(0.85, 0.80, 0.55), seed=seed + 3),
    ]
    return Gaussians.cat(parts)
