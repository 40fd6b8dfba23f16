"""The renderer's per-scene lookup grids, kept up to date one scene at a time.

The raycaster needs, per scene, grids derived from the layout alone: wall heights padded by one
empty cell (and max-pooled, for the DDA), the ground material of every cell (lane marks and the
scene's atlas offset folded in, so a floor pixel needs one gather) and the facade segments
(``s2e.sim.facades``). Deriving them for a 64-scene batch costs as much as rendering several
frames, while a batched environment replaces only the few scenes whose episode ended: so the cache
compares the layout tensors with copies of what it derived from, per scene, and redoes only the
scenes that changed. Unchanged tensors are recognised without comparing (same tensor objects, same
in-place version counters), so a step with no reset costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from s2e.sim.facades import extract_facades, facade_capacity, pack_facades
from s2e.sim.scene import SceneBatch, Surface
from s2e.sim.textures import MAT_LANE, NUM_MATERIALS

COARSE = 8  # fine cells per coarse DDA block side
#: More facade segments than this in one scene and the batch is rendered by the grid DDA instead:
#: the segment test costs O(segments) per column, the DDA O(cells crossed).
MAX_FACADES = 512
_LANE_DASH = 3.0  # metres per dash period (half painted)
_LAYOUT = ("surface", "height", "distance", "origin")


@dataclass
class SceneGrids:
    """Lookup grids of a scene batch (padded by one cell; flat where gathered from)."""

    wall: Tensor  # float [B * (H+2) * (W+2)] building height, 0 elsewhere
    coarse: Tensor  # float flat, ``wall`` max-pooled by COARSE and padded again
    material: Tensor  # int32 flat: material index incl. the scene's atlas offset
    facades: Tensor | None  # [B, S, 6] segment tables, None when a scene has more than MAX_FACADES


def _derive(layout: dict[str, Tensor], resolution: float, lane_offset: float, scene_ids: Tensor):
    """Grids [n, ...] of n scenes (``scene_ids``: their batch positions, for the atlas offsets) and
    their facade segments (batch position [N], segments [N, 6])."""
    surface = layout["surface"].long()
    n, gh, gw = surface.shape
    dev = surface.device
    wall = torch.where(surface == int(Surface.BUILDING), layout["height"].to(torch.float32), 0.0)
    centres = (torch.arange(max(gh, gw), device=dev, dtype=torch.float32) + 0.5) * resolution
    origin = layout["origin"].to(torch.float32)
    wx = origin[:, 0].view(n, 1, 1) + centres[:gw].view(1, 1, gw)
    wy = origin[:, 1].view(n, 1, 1) + centres[:gh].view(1, gh, 1)
    margin = -layout["distance"].to(torch.float32)
    lane = (surface == int(Surface.ROAD)) & ((margin - lane_offset).abs() <= resolution / 2)
    lane = lane & (((wx + wy) / _LANE_DASH).frac() < 0.5)
    material = F.pad(torch.where(lane, MAT_LANE, surface), (1, 1, 1, 1), value=int(Surface.ROAD))
    material = (material + (scene_ids * NUM_MATERIALS).view(n, 1, 1)).to(torch.int32)
    padded = F.pad(wall, (1, 1, 1, 1))
    coarse = F.pad(F.max_pool2d(padded.unsqueeze(1), COARSE, ceil_mode=True).squeeze(1), (1, 1, 1, 1))
    owner, segments = extract_facades(padded)
    return padded, coarse, material, scene_ids[owner], segments


class SceneGridCache:
    """``SceneGrids`` of the scene batches a renderer is shown, updated per changed scene.

    Holds a few batches (an environment renders its full batch every step and sub-batches on
    resets); each entry keeps the layout tensors it saw (so their ids stay unique), their version
    counters, copies of their contents and the derived grids per scene.
    """

    def __init__(self, lane_offset: float, entries: int = 3) -> None:
        self.lane_offset = lane_offset
        self.entries = entries
        self._cache: list[dict] = []

    def get(self, scene: SceneBatch) -> SceneGrids:
        layout = {name: getattr(scene, name) for name in _LAYOUT}
        for i, entry in enumerate(self._cache):
            if all(entry["tensors"][k] is v for k, v in layout.items()):
                self._cache.insert(0, self._cache.pop(i))
                if not _same_versions(entry, layout):
                    self._refresh(entry, layout, scene.resolution)
                return entry["grids"]
        entry = self._build(layout, scene.resolution)
        self._cache = [entry] + self._cache[: self.entries - 1]
        return entry["grids"]

    def _build(self, layout: dict[str, Tensor], resolution: float) -> dict:
        b = layout["surface"].shape[0]
        ids = torch.arange(b, device=layout["surface"].device)
        wall, coarse, material, owner, segments = _derive(layout, resolution, self.lane_offset, ids)
        entry = {
            "tensors": layout,
            "copies": {k: v.clone() for k, v in layout.items()},
            "versions": _versions(layout),
            "wall": wall,
            "coarse": coarse,
            "material": material,
            "owner": owner,
            "segments": segments,
            "capacity": 0,
        }
        entry["grids"] = self._grids(entry)
        return entry

    def _refresh(self, entry: dict, layout: dict[str, Tensor], resolution: float) -> None:
        """Re-derive the scenes whose layout differs from the copies (in place, e.g. a partial reset)."""
        changed = torch.zeros(layout["surface"].shape[0], dtype=torch.bool, device=layout["surface"].device)
        for k, v in layout.items():
            changed |= (entry["copies"][k] != v).flatten(1).any(1)
        entry["versions"] = _versions(layout)
        ids = changed.nonzero().squeeze(-1)
        if ids.numel() == 0:
            return
        part = {k: v.index_select(0, ids) for k, v in layout.items()}
        for k in layout:
            entry["copies"][k][ids] = part[k]
        wall, coarse, material, owner, segments = _derive(part, resolution, self.lane_offset, ids)
        entry["wall"][ids], entry["coarse"][ids], entry["material"][ids] = wall, coarse, material
        keep = ~changed[entry["owner"]]
        entry["owner"] = torch.cat([entry["owner"][keep], owner])
        entry["segments"] = torch.cat([entry["segments"][keep], segments])
        entry["grids"] = self._grids(entry)

    @staticmethod
    def _grids(entry: dict) -> SceneGrids:
        b = entry["wall"].shape[0]
        most = int(torch.bincount(entry["owner"], minlength=b).max()) if entry["owner"].numel() else 0
        # Capacity only grows: compiled stages see one table shape for the life of a batch.
        entry["capacity"] = max(entry["capacity"], facade_capacity(most))
        facades = None
        if most <= MAX_FACADES:
            facades = pack_facades(entry["owner"], entry["segments"], b, entry["capacity"])
        return SceneGrids(entry["wall"].reshape(-1), entry["coarse"].reshape(-1), entry["material"].reshape(-1), facades)


def _versions(layout: dict[str, Tensor]) -> tuple | None:
    """In-place version counters of the layout tensors; None for inference tensors, which have
    none (their contents are then compared on every call)."""
    if any(v.is_inference() for v in layout.values()):
        return None
    return tuple(v._version for v in layout.values())


def _same_versions(entry: dict, layout: dict[str, Tensor]) -> bool:
    versions = _versions(layout)
    return versions is not None and versions == entry["versions"]
