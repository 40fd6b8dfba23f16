"""Layouts from splat scenes: the slicer recovers a known wall, layout files round-trip, bad ones say why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s2e.splat.gaussians import Gaussians
from s2e.splat.layout import SplatLayout, load_layout, save_layout, segment_points
from s2e.splat.ply import SplatFileError, save_ply
from s2e.splat.slicer import auto_route, gaussian_samples, layout_from_points, mesh_samples, occupancy
from s2e.splat.synthetic import gaussian_ground, gaussian_wall

RES = 0.2
BOUNDS = (-4.0, -4.0, 4.0, 4.0)


def _scene() -> Gaussians:
    """Ground over the 8 x 8 m square and one 3 m wall along x = 1 from y = -3 to y = 3."""
    return Gaussians.cat([gaussian_ground((-4, 4), (-4, 4), 0.25), gaussian_wall((1.0, -3.0), (1.0, 3.0), 3.0, 0.25)])


def _cells_x(solid: np.ndarray) -> np.ndarray:
    return BOUNDS[0] + (np.argwhere(solid)[:, 1] + 0.5) * RES


def test_slicer_recovers_a_known_wall_of_gaussians():
    points = gaussian_samples(_scene())
    solid, origin = occupancy(points, BOUNDS, RES, (0.3, 1.6))
    assert solid.shape == (40, 40) and np.allclose(origin, [-4, -4])
    xs = _cells_x(solid)
    ys = BOUNDS[1] + (np.argwhere(solid)[:, 0] + 0.5) * RES
    assert np.abs(xs - 1.0).max() <= RES  # every solid cell touches the wall line
    # The wall is continuous from y = -3 to 3 (no gaps a robot could slip through) and stops there.
    column = solid[:, int((1.0 - BOUNDS[0]) / RES)] | solid[:, int((1.0 - BOUNDS[0]) / RES) - 1]
    rows_in_wall = (np.arange(40) + 0.5) * RES + BOUNDS[1]
    assert column[(rows_in_wall > -2.9) & (rows_in_wall < 2.9)].all()
    assert ys.min() > -3.4 and ys.max() < 3.4
    # The ground (z ~ 0) never counts as an obstacle.
    assert not occupancy(gaussian_samples(gaussian_ground((-4, 4), (-4, 4), 0.25)), BOUNDS, RES, (0.3, 1.6))[0].any()


def test_layout_from_slice_walls_off_the_far_side_and_routes_around_the_wall():
    layout = layout_from_points(gaussian_samples(_scene()), BOUNDS, RES, robot_radius=0.3)
    assert not (layout.walkable & layout.solid).any()
    assert layout.walkable.sum() > 0.8 * (layout.walkable.size - layout.solid.sum())  # the wall is open at both ends
    route = layout.routes[0]
    length = np.linalg.norm(np.diff(route, axis=0), axis=1).sum()
    assert length > 6.0
    cells = layout.cell_of(route)
    assert layout.walkable[cells[:, 0], cells[:, 1]].all()


def test_mesh_slice_finds_the_same_wall():
    # Two triangles: a vertical quad in the plane x = 1, y in [-3, 3], z in [0, 3].
    vertices = np.array([[1.0, -3.0, 0.0], [1.0, 3.0, 0.0], [1.0, 3.0, 3.0], [1.0, -3.0, 3.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    solid, _ = occupancy(mesh_samples(vertices, faces, RES), BOUNDS, RES, (0.3, 1.6))
    xs = _cells_x(solid)
    assert np.abs(xs - 1.0).max() <= RES and solid.sum() >= 30


def _layout() -> SplatLayout:
    walkable = np.zeros((20, 30), bool)
    walkable[5:15, 2:28] = True
    solid = np.zeros_like(walkable)
    solid[4, :] = True
    return SplatLayout(
        walkable=walkable,
        solid=solid,
        height=solid * 4.0,
        origin=np.array([-3.0, -2.0]),
        resolution=0.2,
        routes=[np.array([[-2.2, 0.0], [2.2, 0.0]])],
        spawn_regions=[np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]])],
    )


def test_layout_file_round_trips(tmp_path):
    path = save_layout(tmp_path / "scene.layout.json", _layout())
    back = load_layout(path)
    original = _layout()
    assert np.array_equal(back.walkable, original.walkable) and np.array_equal(back.solid, original.solid)
    assert np.allclose(back.height, original.height) and np.allclose(back.origin, original.origin)
    assert back.resolution == pytest.approx(0.2)
    assert np.allclose(back.routes[0], original.routes[0]) and np.allclose(back.spawn_regions[0], original.spawn_regions[0])
    assert back.in_spawn_region(np.array([[0.0, 0.0], [2.0, 0.0]])).tolist() == [True, False]


def test_polygon_layout_is_rasterised_at_cell_centres(tmp_path):
    doc = {
        "format": "s2e-splat-layout",
        "version": 1,
        "bounds": [0, 0, 4, 2],
        "resolution": 0.5,
        "walkable_polygons": [[[0, 0], [4, 0], [4, 1], [0, 1]]],
        "solid_polygons": [[[0, 1], [4, 1], [4, 2], [0, 2]]],
        "routes": [[[0.25, 0.25], [3.75, 0.75]]],
        "wall_height": 2.5,
    }
    path = tmp_path / "poly.json"
    path.write_text(json.dumps(doc))
    layout = load_layout(path)
    assert layout.shape == (4, 8)
    assert layout.walkable[:2].all() and not layout.walkable[2:].any() and layout.solid[2:].all()
    assert (layout.height[2:] == 2.5).all() and (layout.height[:2] == 0).all()


def _broken(tmp_path, kind: str):
    path = save_layout(tmp_path / "s.layout.json", _layout())
    doc = json.loads(path.read_text())
    grid = tmp_path / "s.layout.grid.npz"
    if kind == "json":
        path.write_text("{not json")
        return path
    if kind == "unknown_key":
        doc["walls"] = []
    elif kind == "version":
        doc["version"] = 7
    elif kind == "no_routes":
        del doc["routes"]
    elif kind == "route_on_wall":
        doc["routes"] = [[[-2.2, 0.0], [0.0, -1.1]]]  # row 4 is the solid row: y in [-1.2, -1.0)
    elif kind == "route_through_wall":
        walkable = _layout().walkable.copy()
        walkable[:4] = True  # walkable on both sides of the solid row 4 (y in [-1.2, -1.0))
        np.savez(grid, walkable=walkable, solid=_layout().solid)
        doc["routes"] = [[[-2.2, -0.5], [-2.2, -1.5]]]  # both ends walkable, the segment crosses the solid row
    elif kind == "route_outside":
        doc["routes"] = [[[-2.2, 0.0], [9.0, 0.0]]]
    elif kind == "route_point":
        doc["routes"] = [[[-2.2, 0.0, 1.0], [2.0, 0.0, 1.0]]]
    elif kind == "transform":
        doc["world_from_splat"][3] = [0, 0, 1, 1]
    elif kind == "grid_missing":
        grid.unlink()
    elif kind == "grid_array":
        np.savez(grid, walkable=np.ones((20, 30), bool))
    elif kind == "grid_both":
        np.savez(grid, walkable=np.ones((20, 30), bool), solid=np.ones((20, 30), bool))
    elif kind == "two_sources":
        doc["walkable_polygons"] = [[[0, 0], [1, 0], [1, 1]]]
    elif kind == "nan_origin":
        doc["grid"]["origin"] = [float("nan"), 0.0]
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("json", r"not valid JSON"),
        ("unknown_key", r"unknown keys \['walls'\]"),
        ("version", r"expected \"format\": \"s2e-splat-layout\" and \"version\": 1"),
        ("no_routes", r"missing 'routes'"),
        ("route_on_wall", r"route 0 vertex 1 at \[0.0, -1.1\] is on a solid cell"),
        ("route_outside", r"route 0 vertex 1 at \[9.0, 0.0\] is outside the grid"),
        ("route_through_wall", r"route 0 segment 0 crosses a solid cell at \[-2.2, -1.0"),
        ("route_point", r"routes\[0\] must have shape Nx2, got \[2, 3\]"),
        ("transform", r"world_from_splat's last row must be \[0, 0, 0, 1\]"),
        ("grid_missing", r"grid file .* not found"),
        ("grid_array", r"lacks the array 'solid'"),
        ("grid_both", r"cells are both walkable and solid \(first: row 0, column 0\)"),
        ("two_sources", r"exactly one of 'grid'"),
        ("nan_origin", r"grid.origin has non-finite values"),
    ],
)
def test_malformed_layout_files_say_what_is_wrong(tmp_path, kind, message):
    with pytest.raises(SplatFileError, match=message):
        load_layout(_broken(tmp_path, kind))


def test_layout_tool_writes_a_loadable_layout_and_png(tmp_path):
    from s2e.scripts.splat_layout import run

    ply = save_ply(tmp_path / "scene.ply", _scene())
    summary = run(["--ply", str(ply), "--out", str(tmp_path / "scene.layout.json"), "--bounds", *map(str, BOUNDS)])
    layout = load_layout(summary["layout"])
    assert layout.solid.sum() > 0 and summary["route_m"] > 6.0
    png = tmp_path / "scene.layout.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    ego = np.asarray(Image.open(summary["ego_png"]))
    assert ego.shape == (72, 128, 3) and ego.std() > 5  # the camera sees the scene, not just sky
    # A world transform moves the scene: rotating it 90 degrees about z turns the wall x = 1 into y = 1.
    rot = ["0", "-1", "0", "0", "1", "0", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1"]
    turned = run(["--ply", str(ply), "--out", str(tmp_path / "t.layout.json"), "--bounds", *map(str, BOUNDS), "--world-from-splat", *rot])
    solid_rows = np.argwhere(load_layout(turned["layout"]).solid)[:, 0]
    assert np.abs(BOUNDS[1] + (solid_rows + 0.5) * RES - 1.0).max() <= RES
    torch.testing.assert_close(torch.tensor(load_layout(turned["layout"]).world_from_splat).float(), torch.tensor([float(v) for v in rot]).reshape(4, 4))
    # A capture whose ground is at z = 1.5: --ground-z finds the wall and the stored transform lowers the ground to 0.
    lifted = torch.eye(4)
    lifted[2, 3] = 1.5
    high = save_ply(tmp_path / "high.ply", _scene().transformed(lifted))
    raised = run(["--ply", str(high), "--out", str(tmp_path / "h.layout.json"), "--bounds", *map(str, BOUNDS), "--ground-z", "1.5"])
    layout = load_layout(raised["layout"])
    assert np.abs(_cells_x(layout.solid) - 1.0).max() <= RES and layout.world_from_splat[2, 3] == pytest.approx(-1.5)


def test_auto_route_keeps_the_corner_rather_than_cutting_through_the_wall():
    walkable = np.zeros((60, 60), bool)
    walkable[2:14, 2:58] = True  # an L: a corridor along x, then one up along y at the far end
    walkable[2:58, 46:58] = True
    route = auto_route(walkable, np.zeros(2), 0.2, clearance=0.5, max_vertices=2)
    assert len(route) >= 3  # two vertices would cut the corner
    length = np.linalg.norm(np.diff(route, axis=0), axis=1).sum()
    assert length > 15.0
    for points in segment_points(route, 0.05):
        cells = np.floor(points / 0.2).astype(int)
        assert walkable[cells[:, 1], cells[:, 0]].all()
