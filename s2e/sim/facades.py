"""Building facades as axis-aligned segments, and the ray test that finds the first one per column.

Why segments: buildings are extruded grid cells, so everything a ray can hit first is a cell face
between an empty cell and a building cell, and along a street those faces merge into a few long
runs (a generated street has 4 to 24 per scene). Testing every column's ray against every run is
dense arithmetic over [B, S, W] with no data-dependent loop, which ``torch.compile`` turns into one
vectorized pass; marching the grid cell by cell (``Raycaster``'s DDA, kept for layouts with very
many faces) needs rounds of gathers whose count depends on the scene.

Coordinates are padded grid cells (the renderer pads every grid by one empty cell): cell (r, c)
covers x in [c, c + 1) and y in [r, r + 1). A segment is a row of ``FACADE_FIELDS``: it lies on
the gridline ``line`` of ``axis`` (0: a line x = const, 1: y = const), spans [lo, hi] along the
other axis, faces the side given by ``facing`` (the sign of its outward normal along ``axis``) and
belongs to a building ``height`` metres tall. Only a ray travelling against the normal enters the
building there, so only such rays hit it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FACADE_FIELDS = ("line", "lo", "hi", "axis", "facing", "height")
_BUCKET = 16  # segment capacity is a multiple of this: few distinct shapes for compiled code


def _runs(faces: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Maximal runs of equal positive values along the last dim of ``faces`` [B, L, A] (0 = no face):
    (scene, line, first, one past last, value), one entry per run, in (scene, line, first) order."""
    pad = torch.zeros_like(faces[..., :1])
    present = faces > 0
    starts = (present & (faces != torch.cat([pad, faces[..., :-1]], -1))).nonzero()
    ends = (present & (faces != torch.cat([faces[..., 1:], pad], -1))).nonzero()
    scene, line, first = starts.unbind(-1)
    return scene, line, first, ends[:, 2] + 1, faces[scene, line, first]


def extract_facades(wall_height: Tensor) -> tuple[Tensor, Tensor]:
    """Facade segments of padded wall-height grids [B, R, C] (> 0 = building): (scene index [N],
    segments [N, len(FACADE_FIELDS)] float), merged along each gridline where the building height
    stays the same."""
    solid = wall_height > 0
    scenes, rows = [], []
    # Lines x = j between columns j-1 and j: runs go along y, so put rows last.
    left, right = solid[:, :, :-1], solid[:, :, 1:]
    vertical = ((-1.0, ~left & right, wall_height[:, :, 1:]), (1.0, left & ~right, wall_height[:, :, :-1]))
    below, above = solid[:, :-1], solid[:, 1:]
    horizontal = ((-1.0, ~below & above, wall_height[:, 1:]), (1.0, below & ~above, wall_height[:, :-1]))
    for axis, sides in ((0, vertical), (1, horizontal)):
        for facing, face, height in sides:
            faces = torch.where(face, height, 0.0)
            scene, line, first, last, value = _runs(faces.transpose(1, 2) if axis == 0 else faces)
            constant = torch.tensor([axis, facing], dtype=torch.float32, device=wall_height.device).expand(len(scene), 2)
            rows.append(torch.cat([torch.stack([line + 1.0, first.float(), last.float()], -1), constant, value.unsqueeze(-1).float()], -1))
            scenes.append(scene)
    return torch.cat(scenes), torch.cat(rows)


def facade_capacity(count: int) -> int:
    """Segments per scene to allocate for ``count``: rounded up to a bucket, so that compiled code
    sees few distinct shapes as scenes change."""
    return max(_BUCKET, -(-count // _BUCKET) * _BUCKET)


def pack_facades(scene: Tensor, segments: Tensor, batch: int, capacity: int) -> Tensor:
    """Scatter per-scene segment lists into a padded [batch, capacity, len(FACADE_FIELDS)] table
    (padding rows have height 0 and never hit)."""
    out = torch.zeros(batch, capacity, len(FACADE_FIELDS), device=segments.device)
    if scene.numel():
        order = torch.argsort(scene, stable=True)
        scene, segments = scene[order], segments[order]
        counts = torch.bincount(scene, minlength=batch)
        slot = torch.arange(scene.numel(), device=scene.device) - (counts.cumsum(0) - counts)[scene]
        out[scene, slot] = segments
    return out


def facade_hits(segments: Tensor, g0: Tensor, rays: Tensor, t_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """First facade along each ray: (t [B, W] (inf where none up to ``t_max``), height [B, W], axis [B, W]).

    Args:
        segments: [B, S, len(FACADE_FIELDS)] padded tables (``pack_facades``).
        g0: [B, 2, 1] ray origins in padded cells (x, y); rays: [B, 2, W] cells per unit t.
    """
    line, lo, hi, axis, facing, height = (f.unsqueeze(-1) for f in segments.unbind(-1))  # [B, S, 1]
    on_x = axis == 0
    gx, gy = g0[:, 0:1], g0[:, 1:2]  # [B, 1, 1]
    dx, dy = rays[:, 0:1], rays[:, 1:2]  # [B, 1, W]
    inv_x = 1 / torch.where(dx.abs() < 1e-9, 1e-9, dx)
    inv_y = 1 / torch.where(dy.abs() < 1e-9, 1e-9, dy)
    t = (line - torch.where(on_x, gx, gy)) * torch.where(on_x, inv_x, inv_y)  # [B, S, W]
    along = torch.where(on_x, gy, gx) + t * torch.where(on_x, dy, dx)
    entering = torch.where(on_x, dx, dy) * facing < 0
    hit = entering & (t > 0) & (t <= t_max) & (along >= lo) & (along <= hi) & (height > 0)
    best, index = torch.where(hit, t, math.inf).min(1)  # [B, W]
    pick = index.unsqueeze(1)
    return best, height.expand_as(t).gather(1, pick).squeeze(1), axis.expand_as(t).gather(1, pick).squeeze(1)
