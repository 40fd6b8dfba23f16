"""Collision geometry and robot motion: disc footprints against walls, obstacles and pedestrians.

Everything is a signed distance: the robot is a disc, walls come from the solid-cell distance field,
obstacles are circles or oriented boxes, pedestrians are discs. A commanded motion is integrated in
substeps and a substep that would push the footprint deeper into anything is refused, so the robot
cannot pass through a wall or an obstacle however fast it is commanded, yet can always back out of a
contact. Contact *events* (not steps in contact) are what the benchmark counts as collisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2e.sim.scene import ObstacleShape

#: Signed distance reported for padded (absent) obstacles and pedestrians.
FAR = 1e4


def sample_field(field: torch.Tensor, origin: torch.Tensor, resolution: float, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of per-scene grids field [B, H, W] at world points xy [B, K, 2] -> [B, K].

    Cells are sampled at their centres; points off the grid read the nearest border cell.
    """
    b, h, w = field.shape
    cell = (xy - origin[:, None, :]) / resolution - 0.5
    col = cell[..., 0].clamp(0, w - 1)
    row = cell[..., 1].clamp(0, h - 1)
    c0, r0 = col.floor().long().clamp(max=w - 2), row.floor().long().clamp(max=h - 2)
    fc, fr = col - c0, row - r0
    flat = field.reshape(b, h * w)
    base = r0 * w + c0
    v00 = flat.gather(1, base)
    v01 = flat.gather(1, base + 1)
    v10 = flat.gather(1, base + w)
    v11 = flat.gather(1, base + w + 1)
    return (v00 * (1 - fc) + v01 * fc) * (1 - fr) + (v10 * (1 - fc) + v11 * fc) * fr


def obstacle_distance(obstacles: torch.Tensor, mask: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Signed distance from points xy [B, K, 2] to each obstacle surface -> [B, K, O] (FAR if padded)."""
    centre = obstacles[:, None, :, 0:2]
    yaw = obstacles[:, None, :, 2]
    d = xy[:, :, None, :] - centre
    c, s = torch.cos(yaw), torch.sin(yaw)
    local = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1).abs()
    half = obstacles[:, None, :, 3:5]
    q = local - half
    box = q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)
    circle = d.norm(dim=-1) - obstacles[:, None, :, 3]
    dist = torch.where(obstacles[:, None, :, 6] == float(ObstacleShape.CIRCLE), circle, box)
    return dist.masked_fill(~mask[:, None, :], FAR)


def pedestrian_distance(pedestrians: torch.Tensor, mask: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Distance from points xy [B, K, 2] to each pedestrian disc's edge -> [B, K, P] (FAR if padded)."""
    d = (xy[:, :, None, :] - pedestrians[:, None, :, 0:2]).norm(dim=-1) - pedestrians[:, None, :, 4]
    return d.masked_fill(~mask[:, None, :], FAR)


@dataclass
class Clearance:
    """Footprint clearance [B, K] to each kind of thing (negative = overlapping)."""

    wall: torch.Tensor
    obstacle: torch.Tensor
    pedestrian: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return torch.minimum(torch.minimum(self.wall, self.obstacle), self.pedestrian)


def footprint_clearance(world, xy: torch.Tensor, radius: float, with_pedestrians: bool = True) -> Clearance:
    """Clearance of discs of ``radius`` at points xy [B, K, 2] against the world's solid geometry."""
    scene = world.scene
    wall = sample_field(world.solid_distance, scene.origin, scene.resolution, xy) - radius
    obstacle = obstacle_distance(scene.obstacles, scene.obstacle_mask, xy).min(-1).values - radius
    if with_pedestrians and scene.pedestrians.shape[1]:
        ped = pedestrian_distance(scene.pedestrians, scene.pedestrian_mask, xy).min(-1).values - radius
    else:
        ped = torch.full_like(wall, FAR)
    return Clearance(wall=wall, obstacle=obstacle, pedestrian=ped)


def integrate_unicycle(
    world, xy: torch.Tensor, yaw: torch.Tensor, v: torch.Tensor, omega: torch.Tensor, dt: float, substeps: int, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold (v, omega) for ``dt`` in ``substeps`` blocked-motion substeps.

    Returns the new xy [B, 2], yaw [B] and ``blocked`` [B] (a substep was refused: the robot pushed
    into something). Turning in place never changes a disc footprint, so yaw always integrates.
    """
    h = dt / substeps
    blocked = torch.zeros_like(v, dtype=torch.bool)
    before = footprint_clearance(world, xy[:, None], radius).total[:, 0]
    for _ in range(substeps):
        mid = yaw + 0.5 * omega * h
        proposal = xy + torch.stack([torch.cos(mid), torch.sin(mid)], -1) * (v * h)[:, None]
        after = footprint_clearance(world, proposal[:, None], radius).total[:, 0]
        accept = (after >= 0) | (after >= before)
        xy = torch.where(accept[:, None], proposal, xy)
        before = torch.where(accept, after, before)
        blocked |= ~accept
        yaw = yaw + omega * h
    return xy, torch.remainder(yaw + torch.pi, 2 * torch.pi) - torch.pi, blocked


class ContactTracker:
    """Counts contact events: a new touch counts once, however many steps the contact lasts.

    A contact starts when a move is refused or the footprint overlaps something; it ends only once
    the clearance exceeds ``release`` metres, so a robot blocked against a wall (which stops up to
    one substep short of it) stays in the same contact instead of re-counting every step.
    """

    def __init__(self, batch: int, device: torch.device, release: float = 0.05) -> None:
        self.release = release
        self.in_contact = torch.zeros(batch, dtype=torch.bool, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def update(self, blocked: torch.Tensor, clearance: torch.Tensor) -> torch.Tensor:
        """Update with this step's refusals and clearance [B]; returns new-contact events [B] bool."""
        touched = blocked | (clearance <= 1e-4)
        new = touched & ~self.in_contact
        self.in_contact = touched | (self.in_contact & (clearance < self.release))
        self.count += new.long()
        return new

    def reset(self, idx: torch.Tensor) -> None:
        self.in_contact[idx] = False
        self.count[idx] = 0
