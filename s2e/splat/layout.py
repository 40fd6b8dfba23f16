"""The layout file of a splat scene: where the capture sits in the world and where the robot may go.

A capture has no notion of sidewalk, wall or route; the layout supplies them. It is one JSON file
(never a pickle) plus, for grids, an ``.npz`` next to it read with ``allow_pickle=False``::

    {
      "format": "s2e-splat-layout", "version": 1,
      "world_from_splat": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]],   # similarity, .ply -> world (z up, metres)
      "grid": {"file": "street.grid.npz", "origin": [x, y], "resolution": 0.2},
      "routes": [[[x, y], [x, y], ...], ...],                          # world metres, on walkable cells
      "spawn_regions": [[[x, y], ...], ...],                           # optional polygons for obstacles/pedestrians
      "wall_height": 3.0                                               # optional, metres of solid cells
    }

Instead of ``grid`` a hand-written layout may give ``walkable_polygons`` (and optional
``solid_polygons``) with ``bounds`` [xmin, ymin, xmax, ymax] and ``resolution``; they are rasterised
at cell centres. The grid ``.npz`` holds ``walkable`` and ``solid`` (bool [H, W], row = y, column = x,
cell (0, 0) has its outer corner at ``origin``) and optionally ``height`` (float [H, W]).
``load_layout`` checks all of it and raises ``SplatFileError`` saying what is wrong and where.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.path import Path as PolygonPath

from s2e.splat.ply import SplatFileError

FORMAT = "s2e-splat-layout"
VERSION = 1
_KEYS = {
    "format",
    "version",
    "world_from_splat",
    "grid",
    "walkable_polygons",
    "solid_polygons",
    "bounds",
    "resolution",
    "routes",
    "spawn_regions",
    "wall_height",
}
_MAX_CELLS = 4096


def segment_points(route: np.ndarray, spacing: float) -> list[np.ndarray]:
    """Points [S_j, 2] along each segment j of a polyline, at most ``spacing`` apart, both ends included."""
    out = []
    for a, b in zip(route[:-1], route[1:]):
        steps = np.linspace(0.0, 1.0, max(2, int(np.ceil(np.linalg.norm(b - a) / spacing)) + 1))
        out.append(a + steps[:, None] * (b - a))
    return out


@dataclass
class SplatLayout:
    """A validated layout in world coordinates (see the module docstring for the file form).

    Attributes:
        walkable: bool [H, W] cells the robot may drive on.
        solid: bool [H, W] cells it collides with (walls, poles, parked cars).
        height: float [H, W] metres of solid geometry per cell (0 where not solid).
        origin: float [2] world (x, y) of the outer corner of cell (0, 0).
        resolution: metres per cell.
        routes: polylines [R_i, 2] of world points, start first.
        spawn_regions: polygons [V_i, 2] where obstacles and pedestrians may be placed (empty: anywhere walkable).
        world_from_splat: float [4, 4] similarity from .ply coordinates to the world.
    """

    walkable: np.ndarray
    solid: np.ndarray
    height: np.ndarray
    origin: np.ndarray
    resolution: float
    routes: list[np.ndarray]
    spawn_regions: list[np.ndarray] = field(default_factory=list)
    world_from_splat: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.walkable.shape)  # type: ignore[return-value]

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Integer (row, column) [..., 2] of world points [..., 2] (may lie outside the grid)."""
        cell = np.floor((np.asarray(xy, np.float64) - self.origin) / self.resolution).astype(np.int64)
        return cell[..., ::-1]

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """World x [W] and y [H] of the cell centres."""
        h, w = self.shape
        return (self.origin[0] + (np.arange(w) + 0.5) * self.resolution, self.origin[1] + (np.arange(h) + 0.5) * self.resolution)

    def in_spawn_region(self, xy: np.ndarray) -> np.ndarray:
        """bool [...] whether world points [..., 2] may hold an obstacle or pedestrian."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if not self.spawn_regions:
            return np.ones(len(xy), bool)
        return np.any([PolygonPath(p).contains_points(xy) for p in self.spawn_regions], axis=0)

    def validate(self, source: str = "layout") -> "SplatLayout":
        """Raise ``SplatFileError`` unless grids, routes and regions are consistent; returns self."""
        if self.walkable.ndim != 2 or self.walkable.shape != self.solid.shape or self.walkable.shape != self.height.shape:
            raise SplatFileError(
                f"{source}: walkable, solid and height must be 2D grids of one shape, got {self.walkable.shape}, {self.solid.shape}, {self.height.shape}"
            )
        h, w = self.shape
        if min(h, w) < 2 or max(h, w) > _MAX_CELLS:
            raise SplatFileError(f"{source}: grid must be between 2 and {_MAX_CELLS} cells per side, got {h}x{w}")
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise SplatFileError(f"{source}: resolution must be a positive number of metres, got {self.resolution}")
        if not np.isfinite(self.height).all() or not np.isfinite(self.origin).all():
            raise SplatFileError(f"{source}: grid origin and heights must be finite")
        both = self.walkable & self.solid
        if both.any():
            r, c = np.argwhere(both)[0]
            raise SplatFileError(f"{source}: {int(both.sum())} cells are both walkable and solid (first: row {r}, column {c})")
        if not self.walkable.any():
            raise SplatFileError(f"{source}: no cell is walkable")
        if not self.routes:
            raise SplatFileError(f"{source}: at least one route is needed (routes: [[[x, y], [x, y], ...]])")
        for i, route in enumerate(self.routes):
            cells = self.cell_of(route)
            inside = (cells >= 0).all(-1) & (cells[:, 0] < h) & (cells[:, 1] < w)
            for j, (ok, (r, c)) in enumerate(zip(inside, cells)):
                if not ok or not self.walkable[r, c]:
                    where = "outside the grid" if not ok else ("on a solid cell" if self.solid[r, c] else "on a cell that is not walkable")
                    raise SplatFileError(f"{source}: route {i} vertex {j} at {route[j].tolist()} is {where}")
            if np.linalg.norm(np.diff(route, axis=0), axis=1).sum() < 1.0:
                raise SplatFileError(f"{source}: route {i} is shorter than 1 m")
            for j, points in enumerate(segment_points(route, 0.25 * self.resolution)):
                r, c = self.cell_of(points).T
                hit = self.solid[r.clip(0, h - 1), c.clip(0, w - 1)]
                if hit.any():
                    raise SplatFileError(f"{source}: route {i} segment {j} crosses a solid cell at {np.round(points[hit.argmax()], 2).tolist()}")
        return self


def _array(value: Any, name: str, source: str, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SplatFileError(f"{source}: {name} must be numbers, got {json.dumps(value)[:80]}") from None
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "x".join("N" if s is None else str(s) for s in shape)
        raise SplatFileError(f"{source}: {name} must have shape {want}, got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise SplatFileError(f"{source}: {name} has non-finite values")
    return arr


def _polylines(value: Any, name: str, source: str, min_points: int) -> list[np.ndarray]:
    if not isinstance(value, list):
        raise SplatFileError(f"{source}: {name} must be a list of point lists")
    out = []
    for i, item in enumerate(value):
        arr = _array(item, f"{name}[{i}]", source, (None, 2))
        if len(arr) < min_points:
            raise SplatFileError(f"{source}: {name}[{i}] needs at least {min_points} points, got {len(arr)}")
        out.append(arr)
    return out


def _grid_from_file(spec: Any, base: Path, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    if not isinstance(spec, dict) or set(spec) - {"file", "origin", "resolution"} or "file" not in spec:
        raise SplatFileError(f'{source}: grid must be {{"file": ..., "origin": [x, y], "resolution": r}}, got {json.dumps(spec)[:120]}')
    path = base / str(spec["file"])
    if not path.is_file():
        raise SplatFileError(f"{source}: grid file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # zip and format errors of a corrupt npz
        raise SplatFileError(f"{source}: grid file {path} is not a readable .npz ({type(err).__name__}: {err})") from None
    for key in ("walkable", "solid"):
        if key not in arrays:
            raise SplatFileError(f"{source}: grid file {path} lacks the array {key!r} (has {sorted(arrays)})")
        if arrays[key].dtype != bool:
            raise SplatFileError(f"{source}: grid array {key!r} must be bool, got {arrays[key].dtype}")
    solid = arrays["solid"]
    height = arrays.get("height", None)
    height = solid.astype(np.float32) * 3.0 if height is None else np.asarray(height, np.float32)
    origin = _array(spec.get("origin"), "grid.origin", source, (2,))
    resolution = float(_array(spec.get("resolution"), "grid.resolution", source, ()))
    return arrays["walkable"], solid, height, origin, resolution


def _grid_from_polygons(raw: dict, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    if "bounds" not in raw or "resolution" not in raw:
        raise SplatFileError(f"{source}: walkable_polygons need 'bounds' [xmin, ymin, xmax, ymax] and 'resolution'")
    x0, y0, x1, y1 = _array(raw["bounds"], "bounds", source, (4,))
    res = float(_array(raw["resolution"], "resolution", source, ()))
    if not (x1 > x0 and y1 > y0 and res > 0):
        raise SplatFileError(f"{source}: bounds must have xmax > xmin, ymax > ymin and resolution > 0")
    w, h = int(math.ceil((x1 - x0) / res)), int(math.ceil((y1 - y0) / res))
    if max(w, h) > _MAX_CELLS:
        raise SplatFileError(f"{source}: bounds at this resolution give {h}x{w} cells; at most {_MAX_CELLS} per side")
    cx, cy = np.meshgrid(x0 + (np.arange(w) + 0.5) * res, y0 + (np.arange(h) + 0.5) * res)
    centres = np.stack([cx.ravel(), cy.ravel()], -1)

    def fill(polygons: list[np.ndarray]) -> np.ndarray:
        mask = np.zeros(len(centres), bool)
        for p in polygons:
            mask |= PolygonPath(p).contains_points(centres)
        return mask.reshape(h, w)

    solid = fill(_polylines(raw.get("solid_polygons", []), "solid_polygons", source, 3))
    walkable = fill(_polylines(raw["walkable_polygons"], "walkable_polygons", source, 3)) & ~solid
    return walkable, solid, solid.astype(np.float32) * 3.0, np.array([x0, y0]), res


def load_layout(path: str | Path) -> SplatLayout:
    """Read and validate a layout file; ``SplatFileError`` says what is wrong."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SplatFileError(f"{source}: no such layout file")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SplatFileError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise SplatFileError(f"{source}: the layout must be a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise SplatFileError(f"{source}: unknown keys {sorted(unknown)}; known keys: {sorted(_KEYS)}")
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise SplatFileError(f'{source}: expected "format": "{FORMAT}" and "version": {VERSION}, got {raw.get("format")!r} and {raw.get("version")!r}')
    if ("grid" in raw) == ("walkable_polygons" in raw):
        raise SplatFileError(f"{source}: give exactly one of 'grid' (an .npz occupancy grid) or 'walkable_polygons'")
    if "grid" in raw:
        walkable, solid, height, origin, res = _grid_from_file(raw["grid"], path.parent, source)
    else:
        walkable, solid, height, origin, res = _grid_from_polygons(raw, source)
    if "wall_height" in raw:
        wall = float(_array(raw["wall_height"], "wall_height", source, ()))
        if wall <= 0:
            raise SplatFileError(f"{source}: wall_height must be positive, got {wall}")
        height = np.where(solid, wall, 0.0).astype(np.float32)
    world = _array(raw.get("world_from_splat", np.eye(4).tolist()), "world_from_splat", source, (4, 4))
    if not np.allclose(world[3], [0, 0, 0, 1]):
        raise SplatFileError(f"{source}: world_from_splat's last row must be [0, 0, 0, 1], got {world[3].tolist()}")
    if "routes" not in raw:
        raise SplatFileError(f"{source}: missing 'routes' (a list of polylines [[x, y], ...] in world metres)")
    layout = SplatLayout(
        walkable=walkable,
        solid=solid,
        height=np.where(solid, height, 0.0).astype(np.float32),
        origin=origin,
        resolution=res,
        routes=_polylines(raw["routes"], "routes", source, 2),
        spawn_regions=_polylines(raw.get("spawn_regions", []), "spawn_regions", source, 3),
        world_from_splat=world,
    )
    return layout.validate(source)


def save_layout(path: str | Path, layout: SplatLayout) -> Path:
    """Write a layout as JSON plus ``<stem>.grid.npz`` next to it (the form ``load_layout`` reads)."""
    layout.validate("layout to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = path.with_name(path.stem + ".grid.npz")
    np.savez_compressed(grid, walkable=layout.walkable, solid=layout.solid, height=layout.height.astype(np.float32))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "world_from_splat": np.asarray(layout.world_from_splat).tolist(),
        "grid": {"file": grid.name, "origin": [float(v) for v in layout.origin], "resolution": float(layout.resolution)},
        "routes": [np.round(r, 4).tolist() for r in layout.routes],
        "spawn_regions": [np.round(p, 4).tolist() for p in layout.spawn_regions],
    }
    path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n")  # one key per line
    return path
