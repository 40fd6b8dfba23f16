"""The batched scene state: the contract between scene generation, physics, crowd and renderers.

Collision and appearance are separate layers (as in URBAN-SIM and Vid2Sim): physics reads the grid,
its distance field, the obstacle shapes and the pedestrian discs; renderers read the same tensors
plus per-scene style seeds and draw them in an appearance domain. Every tensor is batched over B
scenes (one per environment) and padded to a common size with masks, so every consumer is
vectorized over environments with no per-env Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import IntEnum

import torch


class Surface(IntEnum):
    """Ground classes of the occupancy grid."""

    SIDEWALK = 0
    ROAD = 1
    CURB = 2
    GRASS = 3
    BUILDING = 4
    PLAZA = 5


#: Surfaces the robot may drive on. Curb, road and grass are not walls, but the reward penalizes
#: leaving the walkable area and the distance field measures the margin to it.
WALKABLE = (Surface.SIDEWALK, Surface.PLAZA)


class ObstacleShape(IntEnum):
    CIRCLE = 0  # half_length is the radius; half_width is ignored
    BOX = 1  # oriented rectangle with half extents (half_length along yaw, half_width across)


class ObstacleKind(IntEnum):
    """What a static obstacle looks like (renderers pick colour/texture from it)."""

    BENCH = 0
    POLE = 1
    BIN = 2
    BOX = 3
    SCOOTER = 4
    PLANTER = 5


#: Column layout of ``SceneBatch.obstacles``.
OBSTACLE_FIELDS = ("x", "y", "yaw", "half_length", "half_width", "height", "shape", "kind")
#: Column layout of ``SceneBatch.pedestrians``.
PEDESTRIAN_FIELDS = ("x", "y", "vx", "vy", "radius", "height")


@dataclass
class SceneBatch:
    """B scenes as padded tensors.

    Attributes:
        surface: uint8 [B, H, W] ``Surface`` per grid cell; row index = y, column index = x.
        height: float [B, H, W] metres of solid geometry standing on the cell (buildings, walls); 0 elsewhere.
        distance: float [B, H, W] metres from the cell centre to the nearest cell that is not walkable
            or is solid (positive inside the walkable area, <= 0 outside it).
        origin: float [B, 2] world (x, y) of the outer corner of cell (0, 0).
        resolution: metres per cell (shared by the batch).
        obstacles: float [B, O, 8] static obstacles, columns ``OBSTACLE_FIELDS``.
        obstacle_mask: bool [B, O] which obstacle rows are real.
        pedestrians: float [B, P, 6] current crowd state, columns ``PEDESTRIAN_FIELDS``.
        pedestrian_mask: bool [B, P] which pedestrian rows are real.
        route: float [B, R, 2] polyline from start to goal (world metres), padded by repeating the goal.
        route_length: long [B] number of real route vertices (>= 2).
        style_seed: long [B] seed renderers use for textures and colours of this scene.
    """

    surface: torch.Tensor
    height: torch.Tensor
    distance: torch.Tensor
    origin: torch.Tensor
    resolution: float
    obstacles: torch.Tensor
    obstacle_mask: torch.Tensor
    pedestrians: torch.Tensor
    pedestrian_mask: torch.Tensor
    route: torch.Tensor
    route_length: torch.Tensor
    style_seed: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.surface.shape[0])

    @property
    def device(self) -> torch.device:
        return self.surface.device

    @property
    def start(self) -> torch.Tensor:
        return self.route[:, 0]

    @property
    def goal(self) -> torch.Tensor:
        idx = (self.route_length - 1).clamp_min(0)
        return self.route[torch.arange(self.batch_size, device=self.device), idx]

    def to(self, device: torch.device | str) -> "SceneBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def index(self, idx: torch.Tensor | slice) -> "SceneBatch":
        """The sub-batch at ``idx`` (used to reset a subset of environments)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[idx] for k, v in values.items() if isinstance(v, torch.Tensor)})
