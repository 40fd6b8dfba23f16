"""Obstacles and pedestrians of a ``SceneBatch`` as Gaussians, to splat into a captured scene.

A capture is static; the benchmark tasks add benches, bins and a moving crowd. Each obstacle row
becomes a small lattice of opaque Gaussians filling its footprint and height, each pedestrian a
seven-Gaussian figure (two legs, a three-part torso, two-tone head) facing its walking direction, built from
the same columns physics reads, so what the robot sees is what it collides with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2e.sim.scene import ObstacleKind, SceneBatch
from s2e.splat.gaussians import Gaussians, rgb_to_sh0

#: Colour per ``ObstacleKind`` (RGB in [0, 1]).
OBSTACLE_COLOURS = {
    ObstacleKind.BENCH: (0.45, 0.30, 0.18),
    ObstacleKind.POLE: (0.35, 0.37, 0.40),
    ObstacleKind.BIN: (0.15, 0.35, 0.20),
    ObstacleKind.BOX: (0.70, 0.55, 0.35),
    ObstacleKind.SCOOTER: (0.80, 0.20, 0.15),
    ObstacleKind.PLANTER: (0.25, 0.45, 0.20),
}
_CLOTHES = torch.tensor([[0.15, 0.20, 0.45], [0.55, 0.10, 0.10], [0.20, 0.20, 0.20], [0.85, 0.80, 0.70], [0.25, 0.45, 0.30]])
_SKIN = (0.80, 0.62, 0.50)
_OPAQUE = 8.0  # opacity logit: solid (renderers cap alpha at 0.99)
_LATTICE = torch.stack(
    torch.meshgrid(torch.linspace(-2 / 3, 2 / 3, 3), torch.linspace(-2 / 3, 2 / 3, 3), torch.linspace(1 / 6, 5 / 6, 3), indexing="ij"), -1
).reshape(-1, 3)
# Pedestrian parts: (lateral offset / radius, height fraction, scale across / radius, scale along / radius, scale up / height):
# two legs, a torso of three overlapping Gaussians (so its middle is opaque), head, hair.
_PED_PARTS = torch.tensor(
    [
        [-0.4, 0.24, 0.30, 0.35, 0.13],
        [0.4, 0.24, 0.30, 0.35, 0.13],
        [-0.45, 0.62, 0.45, 0.55, 0.17],
        [0.0, 0.62, 0.50, 0.55, 0.17],
        [0.45, 0.62, 0.45, 0.55, 0.17],
        [0.0, 0.90, 0.35, 0.35, 0.06],
        [0.0, 0.95, 0.37, 0.37, 0.03],
    ]
)


def _yaw_quats(yaw: Tensor) -> Tensor:
    half = 0.5 * yaw
    zero = torch.zeros_like(half)
    return torch.stack([torch.cos(half), zero, zero, torch.sin(half)], -1)


def _local_to_world(xy: Tensor, yaw: Tensor, local: Tensor) -> Tensor:
    """Points local [M, G, 3] (x along yaw, y left, z up) of objects at xy [M, 2] with yaw [M] -> world."""
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    x = xy[:, None, 0] + c * local[..., 0] - s * local[..., 1]
    y = xy[:, None, 1] + s * local[..., 0] + c * local[..., 1]
    return torch.stack([x, y, local[..., 2]], -1)


def obstacle_gaussians(obstacles: Tensor) -> Gaussians:
    """27 Gaussians per obstacle row [M, 8] (``OBSTACLE_FIELDS``) filling its footprint and height."""
    m, dev = obstacles.shape[0], obstacles.device
    half = torch.stack([obstacles[:, 3], torch.where(obstacles[:, 6] == 0, obstacles[:, 3], obstacles[:, 4]), obstacles[:, 5]], -1)
    lattice = _LATTICE.to(dev)
    local = lattice[None] * torch.stack([half[:, 0], half[:, 1], half[:, 2]], -1)[:, None]
    means = _local_to_world(obstacles[:, :2], obstacles[:, 2], local)
    g = lattice.shape[0]
    scale = (half * torch.tensor([1 / 3, 1 / 3, 1 / 6], device=dev)).clamp_min(0.02)
    palette = torch.tensor([OBSTACLE_COLOURS[k] for k in ObstacleKind], device=dev)
    colour = palette[obstacles[:, 7].long().clamp(0, len(ObstacleKind) - 1)]
    return Gaussians(
        means=means.reshape(-1, 3),
        quats=_yaw_quats(obstacles[:, 2]).repeat_interleave(g, 0),
        log_scales=scale.log().repeat_interleave(g, 0),
        opacity_logits=torch.full((m * g,), _OPAQUE, device=dev),
        sh=rgb_to_sh0(colour).repeat_interleave(g, 0)[:, None],
    )


def pedestrian_gaussians(pedestrians: Tensor, ids: Tensor) -> Gaussians:
    """Seven Gaussians per pedestrian row [M, 6] (``PEDESTRIAN_FIELDS``), clothes picked by ``ids`` [M]."""
    m, dev = pedestrians.shape[0], pedestrians.device
    parts = _PED_PARTS.to(dev)
    radius, height = pedestrians[:, 4:5], pedestrians[:, 5:6]
    yaw = torch.atan2(pedestrians[:, 3], pedestrians[:, 2])
    local = torch.stack([torch.zeros_like(radius * parts[:, 0]), radius * parts[:, 0], height * parts[:, 1]], -1)
    means = _local_to_world(pedestrians[:, :2], yaw, local)
    scale = torch.stack([radius * parts[:, 3], radius * parts[:, 2], height * parts[:, 4]], -1)
    clothes = _CLOTHES.to(dev)[ids.long() % len(_CLOTHES)]
    colour = torch.stack([clothes * 0.6, clothes * 0.6, clothes, clothes, clothes, torch.tensor(_SKIN, device=dev).expand(m, 3), clothes * 0.3], 1)
    g = parts.shape[0]
    return Gaussians(
        means=means.reshape(-1, 3),
        quats=_yaw_quats(yaw).repeat_interleave(g, 0),
        log_scales=scale.reshape(-1, 3).log(),
        opacity_logits=torch.full((m * g,), _OPAQUE, device=dev),
        sh=rgb_to_sh0(colour.reshape(-1, 3))[:, None],
    )


def scene_assets(scene: SceneBatch, env: int) -> Gaussians:
    """The obstacles and pedestrians of one environment of a batch, at their current positions."""
    obstacles = scene.obstacles[env][scene.obstacle_mask[env]]
    ped_ids = scene.pedestrian_mask[env].nonzero()[:, 0]
    return Gaussians.cat([obstacle_gaussians(obstacles), pedestrian_gaussians(scene.pedestrians[env][ped_ids], ped_ids)])
