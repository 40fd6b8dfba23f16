"""Slice a splat scene (or a mesh) at walking height into the layout the simulator needs.

Anything with geometry between ``z_range`` (by default from knee to head height) blocks a robot,
so every Gaussian is sampled at its centre and up to +-1.5 sigma along its three axes and the samples
inside the slab mark their grid cells solid; sampling the extent, not just the centre, closes the
gaps a wall of sparse Gaussians would otherwise leave. Ground support comes from samples near
``ground_z``. The free, supported cells connected to the route (or to the largest free region) are
the walkable area; an automatic route joins the two cells farthest apart, keeping to the middle. Opacity gates which Gaussians count: floaters are faint, walls are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_closing, distance_transform_edt, label
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from s2e.splat.gaussians import Gaussians, quat_to_matrix
from s2e.splat.layout import SplatLayout, segment_points
from s2e.splat.ply import SplatFileError

_STEPS = (0.5, 1.0, 1.5)
_AXES = np.concatenate([np.zeros((1, 3))] + [sign * step * np.eye(3) for step in _STEPS for sign in (1, -1)]).astype(np.float32)


def gaussian_samples(g: Gaussians, min_opacity: float = 0.3, z_keep: tuple[float, float] | None = None, chunk: int = 1 << 18) -> np.ndarray:
    """World points [M, 3] at the centre and +-0.5, 1, 1.5 sigma along each axis of every Gaussian at least
    ``min_opacity`` opaque (samples half a sigma apart leave no gaps between neighbouring Gaussians),
    optionally only those with z inside ``z_keep`` (saves memory on large captures)."""
    keep = (g.opacities >= min_opacity).nonzero()[:, 0]
    axes = torch.from_numpy(_AXES)
    out = []
    for start in range(0, len(keep), chunk):
        idx = keep[start : start + chunk]
        rot = quat_to_matrix(g.quats[idx])
        points = (g.means[idx][:, None] + (axes[None] * g.scales[idx][:, None]) @ rot.transpose(-1, -2)).reshape(-1, 3)
        if z_keep is not None:
            points = points[(points[:, 2] >= z_keep[0]) & (points[:, 2] <= z_keep[1])]
        out.append(points.numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def load_mesh_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangle faces [F, 3] from an .npz with arrays ``vertices`` and ``faces``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # missing file, corrupt zip, object arrays refused
        raise SplatFileError(f"{path}: not a readable mesh .npz ({type(err).__name__}: {err})") from None
    missing = {"vertices", "faces"} - set(arrays)
    if missing:
        raise SplatFileError(f"{path}: mesh .npz lacks {sorted(missing)} (has {sorted(arrays)})")
    v, f = arrays["vertices"].astype(np.float64), arrays["faces"]
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise SplatFileError(f"{path}: vertices must be finite [V, 3], got shape {list(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= len(v):
        raise SplatFileError(f"{path}: faces must be integer [F, 3] indices into {len(v)} vertices")
    return v, f


def mesh_samples(vertices: np.ndarray, faces: np.ndarray, spacing: float, seed: int = 0) -> np.ndarray:
    """Points [M, 3] on the triangles, about one per (spacing / 3)^2 of area, plus the vertices."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    count = int(min(area.sum() / (spacing / 3) ** 2, 2e7))
    if count == 0 or area.sum() <= 0:
        return vertices
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tri[pick]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return np.concatenate([points, vertices])


def _counts(points: np.ndarray, origin: np.ndarray, resolution: float, shape: tuple[int, int]) -> np.ndarray:
    cell = np.floor((points[:, :2] - origin) / resolution).astype(np.int64)
    inside = (cell >= 0).all(1) & (cell[:, 0] < shape[1]) & (cell[:, 1] < shape[0])
    flat = cell[inside, 1] * shape[1] + cell[inside, 0]
    return np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)


def bounds_of(points: np.ndarray, margin: float = 1.0, quantile: float = 0.005) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of points [M, 3], ignoring the farthest ``quantile`` (floaters) each side."""
    lo, hi = np.quantile(points[:, :2], [quantile, 1 - quantile], axis=0)
    return float(lo[0] - margin), float(lo[1] - margin), float(hi[0] + margin), float(hi[1] + margin)


def occupancy(
    points: np.ndarray, bounds: tuple[float, float, float, float], resolution: float, z_range: tuple[float, float], min_hits: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """bool [H, W] cells holding at least ``min_hits`` points with z in ``z_range``, and the grid origin [2]."""
    x0, y0, x1, y1 = bounds
    if not (x1 > x0 and y1 > y0 and resolution > 0 and z_range[1] > z_range[0]):
        raise ValueError(f"need xmax > xmin, ymax > ymin, resolution > 0 and z_range low < high; got {bounds}, {resolution}, {z_range}")
    shape = (int(np.ceil((y1 - y0) / resolution)), int(np.ceil((x1 - x0) / resolution)))
    origin = np.array([x0, y0])
    slab = points[(points[:, 2] >= z_range[0]) & (points[:, 2] <= z_range[1])]
    return _counts(slab, origin, resolution, shape) >= min_hits, origin


def _grid_graph(room: np.ndarray, cost: np.ndarray) -> tuple[csr_matrix, np.ndarray]:
    """8-connected graph over ``room`` cells; an edge costs its length (cells) times the mean per-cell cost."""
    index = np.full(room.shape, -1, np.int64)
    index[room] = np.arange(int(room.sum()))
    rows, cols, weights = [], [], []
    h, w = room.shape
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, h - dr), slice(max(0, -dc), w - max(0, dc)))
        b = (slice(dr, h), slice(max(0, dc), w - max(0, -dc) if dc < 0 else w))
        both = room[a] & room[b]
        rows.append(index[a][both])
        cols.append(index[b][both])
        weights.append(np.hypot(dr, dc) * 0.5 * (cost[a][both] + cost[b][both]))
    n = int(room.sum())
    graph = csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return graph, np.argwhere(room)


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker: drop vertices closer than ``tolerance`` to the chord of their neighbours."""
    if len(points) < 3:
        return points
    a, b = points[0], points[-1]
    d = b - a
    norm = max(np.linalg.norm(d), 1e-12)
    off = np.abs(d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])) / norm
    i = int(np.argmax(off))
    if off[i] <= tolerance:
        return np.stack([a, b])
    return np.concatenate([_simplify(points[: i + 1], tolerance)[:-1], _simplify(points[i:], tolerance)])


def auto_route(walkable: np.ndarray, origin: np.ndarray, resolution: float, clearance: float, max_vertices: int = 6) -> np.ndarray:
    """A long route [R, 2] (world metres) through walkable cells at least ``clearance`` from the edge.

    Its ends are the two cells farthest apart (a double sweep of shortest paths) among those with at
    least half the widest clearance; between them it follows the path that trades length for clearance (each metre costs
    1 + 1 m / clearance), so it keeps to the middle of a sidewalk instead of hugging an edge. The
    path is simplified towards ``max_vertices`` vertices, never by a shortcut off the walkable area.
    """
    distance = distance_transform_edt(walkable) * resolution
    room = distance >= clearance
    if not room.any():
        raise ValueError(f"no walkable cell has {clearance:.2f} m of clearance: the robot fits nowhere")
    labels, _ = label(room, structure=np.ones((3, 3)))
    room = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    # Ends: the farthest-apart cells of the core (at least half the widest clearance), so they sit mid-sidewalk.
    core = room & (distance >= 0.5 * distance[room].max())
    labels, _ = label(core, structure=np.ones((3, 3)))
    core = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    length_graph, core_cells = _grid_graph(core, np.ones(core.shape))
    far = lambda start: int(np.argmax(np.where(np.isfinite(d := dijkstra(length_graph, directed=False, indices=start)), d, -1)))  # noqa: E731
    end_a = far(0)
    end_b = far(end_a)
    safe_graph, cells = _grid_graph(room, 1.0 + 1.0 / np.maximum(distance, resolution))
    index = np.full(room.shape, -1, np.int64)
    index[room] = np.arange(len(cells))  # the graph numbers room cells in row-major order
    a, b = (int(index[tuple(core_cells[e])]) for e in (end_a, end_b))
    _, pred = dijkstra(safe_graph, directed=False, indices=a, return_predecessors=True)
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    rc = cells[path[::-1]].astype(np.float64)
    xy = origin + (rc[:, ::-1] + 0.5) * resolution
    tolerance = resolution
    route = _simplify(xy, tolerance)
    while len(route) > max_vertices:  # coarser, unless a shortcut would leave the walkable area
        tolerance *= 1.5
        coarser = _simplify(xy, tolerance)
        if not _inside(coarser, walkable, origin, resolution):
            break
        route = coarser
    return route


def _inside(route: np.ndarray, mask: np.ndarray, origin: np.ndarray, resolution: float) -> bool:
    """Whether every point along the polyline (sampled every quarter cell) lies on a ``mask`` cell."""
    for points in segment_points(route, 0.25 * resolution):
        col, row = np.floor((points - origin) / resolution).astype(np.int64).T
        ok = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
        if not ok.all() or not mask[row, col].all():
            return False
    return True


def layout_from_points(
    solid_points: np.ndarray,
    bounds: tuple[float, float, float, float],
    resolution: float = 0.2,
    z_range: tuple[float, float] = (0.3, 1.6),
    ground_z: float | None = 0.0,
    robot_radius: float = 0.35,
    routes: list[np.ndarray] | None = None,
    wall_height: float = 3.0,
) -> SplatLayout:
    """A layout from scene samples [M, 3] (world frame, z up): occupancy slab -> solid, supported free cells -> walkable.

    With ``ground_z`` set, only cells with samples within 0.15 m of it count as walkable (no walking
    off the capture); ``None`` treats every free cell as ground. Without ``routes`` one is found by
    ``auto_route``.
    """
    solid, origin = occupancy(solid_points, bounds, resolution, z_range)
    solid = binary_closing(solid, iterations=1) | solid
    free = ~solid
    if ground_z is not None:
        ground, _ = occupancy(solid_points, bounds, resolution, (ground_z - 0.15, ground_z + 0.15))
        free &= binary_closing(ground, iterations=1) | ground
    labels, n = label(free, structure=np.ones((3, 3)))
    if n == 0:
        raise ValueError("the slice leaves no free cell: check z_range, ground_z and the world transform")
    biggest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    walkable = labels == biggest
    if routes is None:
        routes = [auto_route(walkable, origin, resolution, robot_radius * 1.5)]
    height = np.where(solid, wall_height, 0.0).astype(np.float32)
    return SplatLayout(walkable=walkable, solid=solid, height=height, origin=origin, resolution=resolution, routes=list(routes))


def walkable_polygons(layout: SplatLayout) -> list[np.ndarray]:
    """Outlines [V, 2] (world metres) of the walkable area, from a marching-squares contour of the grid."""
    import contourpy

    xs, ys = layout.cell_centres()
    padded = np.pad(layout.walkable.astype(np.float64), 1)
    step = layout.resolution
    gx = np.concatenate([[xs[0] - step], xs, [xs[-1] + step]])
    gy = np.concatenate([[ys[0] - step], ys, [ys[-1] + step]])
    lines = contourpy.contour_generator(gx, gy, padded).lines(0.5)
    return [np.asarray(line) for line in lines if len(line) >= 3]


def draw_top_down(layout: SplatLayout, path: str | Path, points: np.ndarray | None = None) -> Path:
    """A top-down PNG: solid cells dark, walkable light green, outlines, routes (start dot) and spawn regions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = layout.shape
    x0, y0 = layout.origin
    extent = (x0, x0 + w * layout.resolution, y0, y0 + h * layout.resolution)
    image = np.ones((h, w, 3)) * 0.85
    image[layout.walkable] = (0.70, 0.88, 0.65)
    image[layout.solid] = (0.20, 0.20, 0.25)
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1) + 0.5), dpi=100)
    if points is not None and len(points):
        sub = points[:: max(1, len(points) // 200_000)]
        ax.scatter(sub[:, 0], sub[:, 1], s=0.2, c="0.5", alpha=0.3, zorder=0)
    ax.imshow(image, origin="lower", extent=extent, interpolation="nearest", zorder=1, alpha=0.9)
    for poly in walkable_polygons(layout):
        ax.plot(poly[:, 0], poly[:, 1], color="green", lw=1, zorder=2)
    for poly in layout.spawn_regions:
        closed = np.vstack([poly, poly[:1]])
        ax.plot(closed[:, 0], closed[:, 1], color="orange", lw=1, ls="--", zorder=2)
    for route in layout.routes:
        ax.plot(route[:, 0], route[:, 1], color="crimson", lw=2, zorder=3)
        ax.scatter(route[:1, 0], route[:1, 1], color="crimson", s=30, zorder=4)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
