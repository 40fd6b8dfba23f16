"""Facade segments (the renderer's wall test) and the per-scene grid cache that keeps them current."""

from __future__ import annotations

import math

import pytest
import torch

import s2e.sim.render as render
import s2e.sim.scene_grids as scene_grids
from s2e.sim.facades import FACADE_FIELDS, extract_facades, facade_capacity, pack_facades
from s2e.sim.generator import SceneConfig, generate_world
from s2e.sim.render import Raycaster
from s2e.sim.robots import get_robot
from s2e.sim.scene import SceneBatch, Surface


def _segments(grid: list[list[float]]) -> set[tuple]:
    owner, rows = extract_facades(torch.tensor([grid], dtype=torch.float32))
    assert owner.tolist() == [0] * len(rows)
    return {tuple(round(v, 3) for v in row.tolist()) for row in rows}


def test_one_building_block_has_its_four_outer_faces_only():
    grid = [[0, 0, 0, 0, 0], [0, 5, 5, 5, 0], [0, 5, 5, 5, 0], [0, 0, 0, 0, 0]]
    # (line, lo, hi, axis, facing, height): x = 1 faces -x, x = 4 faces +x, y = 1 faces -y, y = 3 faces +y
    assert _segments(grid) == {(1, 1, 3, 0, -1, 5), (4, 1, 3, 0, 1, 5), (1, 1, 4, 1, -1, 5), (3, 1, 4, 1, 1, 5)}


def test_a_facade_splits_where_the_building_height_changes_and_inner_walls_are_not_faces():
    grid = [[0, 0, 0, 0], [0, 5, 9, 0], [0, 0, 0, 0]]
    segs = _segments(grid)
    assert (1, 1, 2, 1, -1, 5) in segs and (1, 2, 3, 1, -1, 9) in segs  # the south face, in two heights
    assert not any(s[3] == 0 and s[0] == 2 for s in segs)  # no face between the two buildings


def test_packing_pads_every_scene_to_a_bucketed_capacity():
    grids = torch.zeros(3, 6, 6)
    grids[0, 2:4, 2:4] = 4.0  # one block: 4 faces; scene 1 empty; scene 2 two blocks: 8 faces
    grids[2, 1, 1] = grids[2, 4, 4] = 3.0
    owner, rows = extract_facades(grids)
    capacity = facade_capacity(8)
    table = pack_facades(owner, rows, 3, capacity)
    assert table.shape == (3, capacity, len(FACADE_FIELDS)) and capacity % 16 == 0
    counts = (table[..., FACADE_FIELDS.index("height")] > 0).sum(1)
    assert counts.tolist() == [4, 0, 8]


def _street_batch(count: int, seed: int = 11):
    robot = get_robot("wheeled")
    scene = generate_world(list(range(seed, seed + count)), SceneConfig(), robot).scene
    start, ahead = scene.route[:, 0], scene.route[:, 1]
    return scene, start, torch.atan2(ahead[:, 1] - start[:, 1], ahead[:, 0] - start[:, 0]), robot


def test_facade_test_renders_exactly_what_the_grid_dda_renders(monkeypatch):
    """The segment test replaces the DDA for ordinary layouts: both must draw the same walls."""
    scene, start, yaw, robot = _street_batch(6)
    pictures = []
    for limit in (scene_grids.MAX_FACADES, 0):  # 0: every scene has "too many" faces -> DDA
        monkeypatch.setattr(scene_grids, "MAX_FACADES", limit)
        caster = Raycaster(96, 54, compiled=False)
        for turn in (0.0, 1.1, 2.7):  # along the street and across it
            pictures.append(caster.render(scene, start, yaw + turn, robot.camera_height, robot.hfov_deg, with_depth=True))
        assert (caster._grids.get(scene).facades is None) == (limit == 0)
    for (rgb_a, depth_a), (rgb_b, depth_b) in zip(pictures[:3], pictures[3:]):
        assert torch.allclose(depth_a, depth_b, atol=1e-3)
        assert ((rgb_a.int() - rgb_b.int()).abs() > 1).float().mean() < 1e-3  # a texel edge may round apart
    walls = torch.cat([d for _, d in pictures[:3]]) < 40.0
    assert walls.float().mean() > 0.5  # the views really show buildings


def test_grid_cache_redoes_only_scenes_changed_in_place(monkeypatch):
    """A partial reset overwrites some scenes in place: their grids are re-derived, the others kept,
    and an untouched batch is recognised without deriving anything."""
    scene, *_ = _street_batch(4)
    other, *_ = _street_batch(4, seed=40)
    cache = scene_grids.SceneGridCache(lane_offset=0.5)
    cache.get(scene)
    derived = []
    real = scene_grids._derive
    monkeypatch.setattr(scene_grids, "_derive", lambda layout, *a: derived.append(layout["surface"].shape[0]) or real(layout, *a))
    cache.get(scene)
    assert derived == []  # same tensors, same versions: nothing to do
    for name in ("surface", "height", "distance", "origin"):
        getattr(scene, name)[2] = getattr(other, name)[2]
    updated = cache.get(scene)
    assert derived == [1]  # one scene changed
    fresh = scene_grids.SceneGridCache(lane_offset=0.5).get(
        SceneBatch(**{f: (getattr(scene, f).clone() if isinstance(getattr(scene, f), torch.Tensor) else getattr(scene, f)) for f in scene.__dataclass_fields__})
    )
    for name in ("wall", "coarse", "material"):
        assert torch.equal(getattr(updated, name), getattr(fresh, name)), name
    key = lambda t: sorted(map(tuple, t[t[..., -1] > 0].tolist()))  # noqa: E731 - facade rows, order-free
    assert all(key(updated.facades[i]) == key(fresh.facades[i]) for i in range(4))


def test_rendering_under_inference_mode_sees_in_place_scene_changes():
    """Inference tensors have no version counter: the cache compares contents instead (it used to fail)."""
    scene, start, yaw, robot = _street_batch(2)
    other, *_ = _street_batch(2, seed=40)
    caster = Raycaster(64, 36, compiled=False)
    with torch.inference_mode():
        scene = SceneBatch(
            **{f: (getattr(scene, f).clone() if isinstance(getattr(scene, f), torch.Tensor) else getattr(scene, f)) for f in scene.__dataclass_fields__}
        )
        before, _ = caster.render(scene, start, yaw, robot.camera_height, robot.hfov_deg)
        for name in ("surface", "height", "distance", "origin"):
            getattr(scene, name)[1] = getattr(other, name)[1]
        after, _ = caster.render(scene, start, yaw, robot.camera_height, robot.hfov_deg)
        expected, _ = Raycaster(64, 36, compiled=False).render(scene, start, yaw, robot.camera_height, robot.hfov_deg)
    assert torch.equal(after, expected) and torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


@pytest.mark.parametrize("max_facades", [scene_grids.MAX_FACADES, 0])
def test_a_camera_inside_a_building_sees_its_wall_not_through_it(monkeypatch, max_facades):
    monkeypatch.setattr(scene_grids, "MAX_FACADES", max_facades)
    scene, *_ = _street_batch(1)
    inside = (scene.surface[0] == int(Surface.BUILDING)).nonzero()
    assert len(inside)
    row, col = inside[len(inside) // 2].tolist()
    cam = scene.origin + (torch.tensor([[col, row]]) + 0.5) * scene.resolution
    _, depth = Raycaster(32, 18, compiled=False).render(scene, cam, torch.zeros(1), 1.0, 90.0, with_depth=True)
    assert depth[0, 0, 9, :].max() < 0.2  # the whole horizon row is wall at arm's length
    assert math.isclose(float(depth[0, 0, 9, 16]), render._NEAR, rel_tol=1e-3)
