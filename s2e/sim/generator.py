"""Procedural street scenes: layout grid, distance fields, obstacles, routes and crowd spawns, from a seed.

Each scene is one of four layouts seen from above (straight sidewalk, corner, intersection, plaza)
built in a canonical frame and then rotated by a multiple of 90 degrees and possibly mirrored, so a
handful of templates gives many distinct streets. Widths, grass margins, building heights, obstacle
kinds and pedestrian behaviours are drawn from ``SceneConfig`` ranges with a per-scene numpy
generator: the same seed always yields the same scene, whatever else is in the batch.

Generation runs at reset (not per step), so it works scene by scene in numpy and then pads and
stacks the results into the batched tensors of ``SceneBatch`` that the per-step code consumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from s2e.sim.crowd import CrowdState
from s2e.sim.robots import RobotProfile
from s2e.sim.scene import ObstacleKind, ObstacleShape, SceneBatch, Surface

LAYOUTS = ("straight", "corner", "intersection", "plaza")

#: Pedestrian behaviours and how often each is drawn.
_BEHAVIOURS = ("along", "across", "standing")
_BEHAVIOUR_P = (0.55, 0.25, 0.20)


@dataclass(frozen=True)
class SceneConfig:
    """Ranges the generator draws scenes from (``(low, high)`` pairs are inclusive ranges).

    Attributes:
        extent: side of the square world, metres.
        resolution: metres per grid cell.
        layouts: which layout templates to draw from.
        sidewalk_width: sidewalk width range, metres (must fit the robot with margin).
        grass_margin: grass strip between sidewalk and facades, metres.
        building_height: facade height range, metres.
        route_length: target route length range, metres (clipped to what the layout offers).
        num_obstacles: static obstacle count range per scene.
        num_pedestrians: pedestrian count range per scene.
        max_route_vertices: padding size of ``SceneBatch.route``.
        obstacle_passage: free width kept beside every obstacle, in robot diameters, so a route is
            never fully blocked.
    """

    extent: float = 40.0
    resolution: float = 0.2
    layouts: tuple[str, ...] = LAYOUTS
    sidewalk_width: tuple[float, float] = (2.5, 5.0)
    grass_margin: tuple[float, float] = (0.0, 1.5)
    building_height: tuple[float, float] = (6.0, 20.0)
    route_length: tuple[float, float] = (15.0, 28.0)
    num_obstacles: tuple[int, int] = (3, 6)
    num_pedestrians: tuple[int, int] = (4, 10)
    max_route_vertices: int = 6
    obstacle_passage: float = 1.6

    def validate(self, robot: RobotProfile) -> "SceneConfig":
        """Raise a clear ValueError for parameters no valid scene can satisfy; returns self."""
        for name in ("sidewalk_width", "grass_margin", "building_height", "route_length", "num_obstacles", "num_pedestrians"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"SceneConfig.{name} must be a (low, high) range with 0 <= low <= high, got {(lo, hi)}")
        unknown = set(self.layouts) - set(LAYOUTS)
        if not self.layouts or unknown:
            raise ValueError(f"SceneConfig.layouts must be a non-empty subset of {LAYOUTS}, got {self.layouts}")
        need = 2 * robot.radius * self.obstacle_passage
        if self.sidewalk_width[0] < need:
            raise ValueError(
                f"SceneConfig.sidewalk_width low {self.sidewalk_width[0]} m is below what robot {robot.name!r} "
                f"(footprint radius {robot.radius} m) needs to pass obstacles: {need:.2f} m"
            )
        if not 0 < self.resolution <= 0.5:
            raise ValueError(f"SceneConfig.resolution must be in (0, 0.5] m, got {self.resolution}")
        if self.extent < 20 or self.extent / self.resolution > 1024:
            raise ValueError(f"SceneConfig.extent must be >= 20 m and at most 1024 cells wide, got {self.extent} m")
        if self.route_length[0] < 4 or self.route_length[1] > self.extent:
            raise ValueError(f"SceneConfig.route_length must lie in [4, extent={self.extent}] m, got {self.route_length}")
        if self.max_route_vertices < 4:
            raise ValueError(f"SceneConfig.max_route_vertices must be >= 4, got {self.max_route_vertices}")
        return self

    @property
    def grid_cells(self) -> int:
        return int(round(self.extent / self.resolution))


@dataclass
class World:
    """A scene batch plus the per-scene quantities physics, crowd and rewards need.

    Attributes:
        scene: the batched scene (the renderer contract).
        solid_distance: float [B, H, W] metres from each cell centre to the nearest solid (building)
            cell boundary; the robot collides with walls when this is below its radius.
        half_width: float [B] half the sidewalk width: the clearance at the sidewalk centre.
        route_cumlen: float [B, R] arc length at each route vertex (constant after the last real one).
        crowd: per-pedestrian goals and desired speeds.
    """

    scene: SceneBatch
    solid_distance: torch.Tensor
    half_width: torch.Tensor
    route_cumlen: torch.Tensor
    crowd: CrowdState

    @property
    def route_total(self) -> torch.Tensor:
        return self.route_cumlen[:, -1]

    def assign(self, idx: torch.Tensor, other: "World") -> None:
        """Overwrite the scenes at ``idx`` with ``other`` (same padding) in place: a partial reset."""
        for holder, src in ((self.scene, other.scene), (self, other), (self.crowd, other.crowd)):
            for f in fields(holder):
                value = getattr(holder, f.name)
                if isinstance(value, torch.Tensor):
                    value[idx] = getattr(src, f.name)


def _transform(k: int, mirror: bool) -> np.ndarray:
    """2x2 matrix: mirror across x (optional) then rotate by k * 90 degrees."""
    c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return rot @ np.diag([1.0, -1.0 if mirror else 1.0])


def polyline_cumlen(points: np.ndarray) -> np.ndarray:
    """Arc length at each vertex of a polyline [n, 2] (starts at 0)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _interp_polyline(points: np.ndarray, cum: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points and unit tangents at arc lengths ``s`` along a polyline."""
    s = np.clip(s, 0.0, cum[-1])
    seg = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(points) - 2)
    d = points[seg + 1] - points[seg]
    length = np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    tangent = d / length
    return points[seg] + tangent * (s - cum[seg])[..., None], tangent


def _sub_polyline(points: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of a polyline between arc lengths s0 < s1 (inner vertices kept)."""
    cum = polyline_cumlen(points)
    inner = [p for p, c in zip(points, cum) if s0 < c < s1]
    a, _ = _interp_polyline(points, cum, np.array([s0]))
    b, _ = _interp_polyline(points, cum, np.array([s1]))
    return np.vstack([a, *inner, b]) if inner else np.vstack([a, b])


class _Canvas:
    """One scene's grid under construction, addressed in the layout's canonical frame."""

    def __init__(self, config: SceneConfig, transform: np.ndarray) -> None:
        n = config.grid_cells
        self.res = config.resolution
        self.origin = np.array([-config.extent / 2, -config.extent / 2])
        centres = -config.extent / 2 + (np.arange(n) + 0.5) * self.res
        wx, wy = np.meshgrid(centres, centres)  # row = y, column = x
        canon = np.stack([wx, wy], -1) @ transform  # world -> canonical (transform is orthogonal)
        self.qx, self.qy = canon[..., 0], canon[..., 1]
        self.surface = np.full((n, n), Surface.ROAD, dtype=np.uint8)
        self.height = np.zeros((n, n), dtype=np.float32)

    def rect(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        return (self.qx >= x0) & (self.qx <= x1) & (self.qy >= y0) & (self.qy <= y1)

    def block(self, x0: float, x1: float, y0: float, y1: float, margin: float, height: float) -> None:
        """A building block: grass (or planting) margin around a solid facade."""
        self.surface[self.rect(x0, x1, y0, y1)] = Surface.GRASS
        inner = self.rect(x0 + margin, x1 - margin, y0 + margin, y1 - margin)
        self.surface[inner] = Surface.BUILDING
        self.height[inner] = height

    def pave(self, x0: float, x1: float, y0: float, y1: float, surface: Surface = Surface.SIDEWALK) -> None:
        mask = self.rect(x0, x1, y0, y1)
        self.surface[mask] = surface
        self.height[mask] = 0.0


def _layout(canvas: _Canvas, kind: str, hw: float, rng: np.random.Generator, config: SceneConfig) -> list[np.ndarray]:
    """Draw one layout in canonical coordinates; returns candidate walking paths (polylines)."""
    big = config.extent  # beyond the world edge
    edge = config.extent / 2 - 1.0
    margin = lambda: rng.uniform(*config.grass_margin)  # noqa: E731
    tall = lambda: rng.uniform(*config.building_height)  # noqa: E731
    if kind == "straight":
        canvas.block(-big, big, hw, big, margin(), tall())
        canvas.pave(-big, big, -hw, hw)
        return [np.array([[-edge, 0.0], [edge, 0.0]])]
    if kind == "corner":
        canvas.block(-big, -hw, hw, big, margin(), tall())
        canvas.pave(-big, hw, -hw, hw)
        canvas.pave(-hw, hw, -hw, big)
        return [np.array([[-edge, 0.0], [0.0, 0.0], [0.0, edge]])]
    arms = {"W": np.array([-edge, 0.0]), "E": np.array([edge, 0.0]), "S": np.array([0.0, -edge]), "N": np.array([0.0, edge])}
    if kind == "intersection":
        for sx, sy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            if rng.random() < 0.6:  # a building block in this quadrant, else road behind a curb
                x0, x1 = (hw, big) if sx > 0 else (-big, -hw)
                y0, y1 = (hw, big) if sy > 0 else (-big, -hw)
                canvas.block(x0, x1, y0, y1, margin(), tall())
        canvas.pave(-big, big, -hw, hw)
        canvas.pave(-hw, hw, -big, big)
        centre = np.zeros(2)
    elif kind == "plaza":
        half = rng.uniform(5.0, 8.0)
        for sx, sy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            x0, x1 = (hw, big) if sx > 0 else (-big, -hw)
            y0, y1 = (hw, big) if sy > 0 else (-big, -hw)
            canvas.block(x0, x1, y0, y1, margin(), tall())
        canvas.pave(-big, big, -hw, hw)
        canvas.pave(-hw, hw, -big, big)
        canvas.pave(-half, half, -half, half, Surface.PLAZA)
        # Walk along an arm's centre line into the plaza, then cut across it via a random point.
        inside = rng.uniform(-half + 2.0, half - 2.0, size=2)
        return [np.vstack([arms[a], arms[a] * (half - 0.5) / edge, inside, arms[b] * (half - 0.5) / edge, arms[b]]) for a in arms for b in arms if a != b]
    else:
        raise ValueError(f"unknown layout {kind!r}; known layouts: {LAYOUTS}")
    return [np.vstack([arms[a], centre, arms[b]]) for a in arms for b in arms if a != b]


def signed_distance(walkable: np.ndarray, res: float) -> np.ndarray:
    """Metres to the walkable boundary: positive inside, negative outside (cell-centre convention)."""
    inside = distance_transform_edt(walkable) * res - res / 2
    outside = distance_transform_edt(~walkable) * res - res / 2
    return np.where(walkable, inside, -outside).astype(np.float32)


def _add_curbs(canvas: _Canvas, walkable: np.ndarray, curb_width: float = 0.3) -> None:
    to_walk = distance_transform_edt(~walkable) * canvas.res
    canvas.surface[(canvas.surface == Surface.ROAD) & (to_walk <= curb_width + 1e-6)] = Surface.CURB


_OBSTACLE_SIZES = {  # kind: (shape, half_length range, half_width range, height range)
    ObstacleKind.BENCH: (ObstacleShape.BOX, (0.7, 0.9), (0.25, 0.35), (0.45, 0.9)),
    ObstacleKind.POLE: (ObstacleShape.CIRCLE, (0.08, 0.15), (0.0, 0.0), (2.5, 4.0)),
    ObstacleKind.BIN: (ObstacleShape.CIRCLE, (0.25, 0.35), (0.0, 0.0), (0.8, 1.1)),
    ObstacleKind.BOX: (ObstacleShape.BOX, (0.25, 0.5), (0.25, 0.5), (0.4, 1.0)),
    ObstacleKind.SCOOTER: (ObstacleShape.BOX, (0.5, 0.65), (0.15, 0.25), (0.9, 1.2)),
    ObstacleKind.PLANTER: (ObstacleShape.CIRCLE, (0.35, 0.6), (0.0, 0.0), (0.6, 1.0)),
}


def place_obstacles(
    rng: np.random.Generator,
    count: int,
    route: np.ndarray,
    cum: np.ndarray,
    clearance_at: Callable[[np.ndarray], float],
    robot: RobotProfile,
    config: SceneConfig,
) -> np.ndarray:
    """Obstacles on the walkable area along the route, each leaving a passage on one side."""
    need = 2 * robot.radius * config.obstacle_passage
    placed: list[np.ndarray] = []
    used_s: list[float] = []
    corners = cum[1:-1]
    if cum[-1] <= 6.0:  # obstacles keep 3 m from start and goal: a short route has no room for any
        return np.zeros((0, 8), np.float32)
    for _ in range(count * 8):
        if len(placed) == count:
            break
        s = rng.uniform(3.0, cum[-1] - 3.0)
        if any(abs(s - u) < 3.0 for u in used_s) or any(abs(s - c) < 1.5 for c in corners):
            continue
        kind = ObstacleKind(int(rng.integers(len(ObstacleKind))))
        shape, hl_r, hw_r, h_r = _OBSTACLE_SIZES[kind]
        hl, hwid, height = rng.uniform(*hl_r), rng.uniform(*hw_r), rng.uniform(*h_r)
        point, tangent = _interp_polyline(route, cum, np.array([s]))
        point, tangent = point[0], tangent[0]
        normal = np.array([-tangent[1], tangent[0]])
        yaw = math.atan2(tangent[1], tangent[0]) + (rng.uniform(-math.pi, math.pi) if kind == ObstacleKind.BOX else rng.normal(0, 0.15))
        extent = hl if shape == ObstacleShape.CIRCLE else math.hypot(hl, hwid)
        room = min(clearance_at(point), 3.5)  # half the free width across the route here
        if 2 * room - 2 * extent < need:
            continue
        offset = rng.uniform(-room + extent, room - extent)
        gap_left, gap_right = room - (offset + extent), room + (offset - extent)  # free width each side
        if max(gap_left, gap_right) < need:  # push it against the edge it is nearer: the other side frees up
            offset = math.copysign(room - extent, offset)
        xy = point + normal * offset
        placed.append(np.array([xy[0], xy[1], yaw, hl, hwid, height, float(shape), float(kind)], dtype=np.float32))
        used_s.append(s)
    return np.stack(placed) if placed else np.zeros((0, 8), np.float32)


def spawn_pedestrians(
    rng: np.random.Generator,
    count: int,
    route: np.ndarray,
    cum: np.ndarray,
    clearance_at: Callable[[np.ndarray], float],
    start: np.ndarray,
    robot: RobotProfile,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pedestrian discs along the route corridor with ping-pong goals (along, across or standing)."""
    peds, goals_a, goals_b, speeds = [], [], [], []
    seg_len = np.diff(cum)
    for _ in range(count * 10):
        if len(peds) == count:
            break
        seg = int(rng.choice(len(seg_len), p=seg_len / seg_len.sum()))
        s = cum[seg] + rng.uniform(0.5, max(seg_len[seg] - 0.5, 0.6))
        point, tangent = _interp_polyline(route, cum, np.array([s]))
        point, tangent = point[0], tangent[0]
        normal = np.array([-tangent[1], tangent[0]])
        radius = rng.uniform(0.22, 0.3)
        room = max(min(clearance_at(point), 4.0) - radius - 0.15, 0.0)
        xy = point + normal * rng.uniform(-room, room)
        if np.linalg.norm(xy - start) < 2.5 + robot.radius or any(np.hypot(*(xy - p[:2])) < radius + p[4] + 0.3 for p in peds):
            continue
        behaviour = _BEHAVIOURS[int(rng.choice(3, p=_BEHAVIOUR_P))]
        speed = float(np.clip(rng.normal(1.2, 0.2), 0.6, 1.6))
        if behaviour == "along":
            s_b = np.clip(s + rng.choice([-1, 1]) * rng.uniform(6.0, 14.0), cum[seg] + 0.3, cum[seg + 1] - 0.3)
            target, _ = _interp_polyline(route, cum, np.array([s_b]))
            goal = target[0] + normal * rng.uniform(-room, room)
        elif behaviour == "across":
            goal = point - normal * np.sign(np.dot(xy - point, normal) + 1e-6) * room
        else:
            goal, speed = xy.copy(), 0.0
        heading = goal - xy
        heading = heading / max(np.linalg.norm(heading), 1e-6) * speed
        peds.append(np.array([xy[0], xy[1], heading[0], heading[1], radius, rng.uniform(1.55, 1.9)], dtype=np.float32))
        goals_a.append(xy.astype(np.float32))
        goals_b.append(np.asarray(goal, np.float32))
        speeds.append(speed)
    if not peds:
        return np.zeros((0, 6), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(peds), np.stack(goals_a), np.stack(goals_b), np.asarray(speeds, np.float32)


def generate_scene_arrays(seed: int, config: SceneConfig, robot: RobotProfile) -> dict[str, np.ndarray]:
    """One scene as numpy arrays (the unbatched form ``stack_scenes`` pads): grid layers, route, obstacles, crowd.

    Callers that build scenes some other way (benchmark suites, splat layouts) produce the same keys.
    """
    rng = np.random.default_rng(seed)
    transform = _transform(int(rng.integers(4)), bool(rng.integers(2)))
    canvas = _Canvas(config, transform)
    kind = config.layouts[int(rng.integers(len(config.layouts)))]
    hw = rng.uniform(*config.sidewalk_width) / 2
    paths = _layout(canvas, kind, hw, rng, config)
    walkable = np.isin(canvas.surface, (Surface.SIDEWALK, Surface.PLAZA))
    _add_curbs(canvas, walkable)
    distance = signed_distance(walkable, canvas.res)
    solid = canvas.height > 0
    solid_distance = (distance_transform_edt(~solid) * canvas.res - canvas.res / 2).astype(np.float32) if solid.any() else np.full_like(distance, config.extent)

    path = paths[int(rng.integers(len(paths)))] @ transform.T  # canonical -> world
    path_cum = polyline_cumlen(path)
    length = min(rng.uniform(*config.route_length), path_cum[-1] - 0.5)
    s0 = rng.uniform(0.0, path_cum[-1] - length)
    route = _sub_polyline(path, s0, s0 + length)
    if rng.random() < 0.5:
        route = route[::-1].copy()
    cum = polyline_cumlen(route)

    def clearance_at(point: np.ndarray) -> float:
        col, row = ((point - canvas.origin) / canvas.res).astype(int).clip(0, distance.shape[0] - 1)
        return float(distance[row, col])

    n_obs = int(rng.integers(config.num_obstacles[0], config.num_obstacles[1] + 1))
    n_ped = int(rng.integers(config.num_pedestrians[0], config.num_pedestrians[1] + 1))
    obstacles = place_obstacles(rng, n_obs, route, cum, clearance_at, robot, config)
    peds, goal_a, goal_b, speeds = spawn_pedestrians(rng, n_ped, route, cum, clearance_at, route[0], robot)
    return {
        "surface": canvas.surface,
        "height": canvas.height,
        "distance": distance,
        "solid_distance": solid_distance,
        "origin": canvas.origin.astype(np.float32),
        "obstacles": obstacles,
        "pedestrians": peds,
        "goal_a": goal_a,
        "goal_b": goal_b,
        "speeds": speeds,
        "route": route.astype(np.float32),
        "cum": cum.astype(np.float32),
        "half_width": np.float32(hw),
        "style_seed": int(rng.integers(2**31 - 1)),
    }


def _pad(arrays: list[np.ndarray], size: int, fill_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stack [n_i, ...] arrays into [B, size, ...] plus a mask; padding repeats the last row if asked."""
    out = np.zeros((len(arrays), size) + arrays[0].shape[1:], np.float32)
    mask = np.zeros((len(arrays), size), bool)
    for i, a in enumerate(arrays):
        n = min(len(a), size)
        out[i, :n] = a[:n]
        mask[i, :n] = True
        if fill_last and n:
            out[i, n:] = a[n - 1]
    return out, mask


def generate_world(seeds: Sequence[int], config: SceneConfig, robot: RobotProfile, device: str | torch.device = "cpu") -> World:
    """Generate one scene per seed, padded to the config's maximum counts, as a batched ``World``."""
    config.validate(robot)
    return stack_scenes([generate_scene_arrays(int(s), config, robot) for s in seeds], config, device)


def stack_scenes(scenes: Sequence[dict[str, np.ndarray]], config: SceneConfig, device: str | torch.device = "cpu") -> World:
    """Pad per-scene arrays (see ``generate_scene_arrays``) to the config's maximum counts and batch them.

    All scenes must share one grid shape (the config's extent and resolution).
    """
    if not scenes:
        raise ValueError("stack_scenes needs at least one scene")
    shapes = {tuple(s["surface"].shape) for s in scenes}
    if len(shapes) != 1:
        raise ValueError(f"all scenes of a batch must share one grid shape, got {sorted(shapes)}")
    t = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    obstacles, obstacle_mask = _pad([s["obstacles"] for s in scenes], max(config.num_obstacles[1], 1))
    peds, ped_mask = _pad([s["pedestrians"] for s in scenes], max(config.num_pedestrians[1], 1))
    goal_a, _ = _pad([s["goal_a"] for s in scenes], peds.shape[1])
    goal_b, _ = _pad([s["goal_b"] for s in scenes], peds.shape[1])
    speeds, _ = _pad([s["speeds"][:, None] for s in scenes], peds.shape[1])
    route, _ = _pad([s["route"] for s in scenes], config.max_route_vertices, fill_last=True)
    cum, _ = _pad([s["cum"][:, None] for s in scenes], config.max_route_vertices, fill_last=True)
    scene = SceneBatch(
        surface=t(np.stack([s["surface"] for s in scenes]), torch.uint8),
        height=t(np.stack([s["height"] for s in scenes])),
        distance=t(np.stack([s["distance"] for s in scenes])),
        origin=t(np.stack([s["origin"] for s in scenes])),
        resolution=config.resolution,
        obstacles=t(obstacles),
        obstacle_mask=t(obstacle_mask, torch.bool),
        pedestrians=t(peds),
        pedestrian_mask=t(ped_mask, torch.bool),
        route=t(route),
        route_length=t([min(len(s["route"]), config.max_route_vertices) for s in scenes], torch.long),
        style_seed=t([s["style_seed"] for s in scenes], torch.long),
    )
    crowd = CrowdState(
        goal_a=t(goal_a), goal_b=t(goal_b), desired_speed=t(speeds[..., 0]), toward_b=torch.ones(peds.shape[:2], dtype=torch.bool, device=device)
    )
    return World(
        scene=scene,
        solid_distance=t(np.stack([s["solid_distance"] for s in scenes])),
        half_width=t([s["half_width"] for s in scenes]),
        route_cumlen=t(cum[..., 0]),
        crowd=crowd,
    )
