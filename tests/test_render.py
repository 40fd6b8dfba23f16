"""Raycaster geometry on a hand-built scene (known distances), determinism, domains and input checks."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch

from s2e.sim.compiled import CompilePolicy, stage_name
from s2e.sim.render import Raycaster
from s2e.sim.scene import ObstacleKind, ObstacleShape, SceneBatch, Surface

RES, CELLS = 0.2, 100  # a 20 m square grid centred on the origin
W, H, HFOV, CAM_H = 64, 48, 90.0, 1.0
FOCAL = 0.5 * W / math.tan(math.radians(HFOV) / 2)
END_WALL_X = 6.0  # building face across the corridor's +x end
MAX_DISTANCE = 40.0


def _corridor(obstacles: list[list[float]] = (), pedestrians: list[list[float]] = (), seed: int = 7) -> SceneBatch:
    """Sidewalk corridor |y| < 3 between 8 m buildings, closed at x >= 6, open towards -x; grass at 1 <= x < 2."""
    centres = -CELLS * RES / 2 + (torch.arange(CELLS) + 0.5) * RES
    x, y = centres.view(1, -1).expand(CELLS, CELLS), centres.view(-1, 1).expand(CELLS, CELLS)  # row = y
    surface = torch.full((CELLS, CELLS), int(Surface.SIDEWALK), dtype=torch.uint8)
    surface[(x >= 1.0) & (x < 2.0)] = int(Surface.GRASS)
    solid = (y.abs() > 3.0) | (x > END_WALL_X)
    surface[solid] = int(Surface.BUILDING)
    height = torch.where(solid, 8.0, 0.0)
    obs = torch.tensor(list(obstacles) or [[0.0] * 8], dtype=torch.float32).view(1, -1, 8)
    peds = torch.tensor(list(pedestrians) or [[0.0] * 6], dtype=torch.float32).view(1, -1, 6)
    return SceneBatch(
        surface=surface.unsqueeze(0),
        height=height.unsqueeze(0),
        distance=torch.ones(1, CELLS, CELLS),
        origin=torch.tensor([[-CELLS * RES / 2, -CELLS * RES / 2]]),
        resolution=RES,
        obstacles=obs,
        obstacle_mask=torch.tensor([[len(obstacles) > 0] * obs.shape[1]]),
        pedestrians=peds,
        pedestrian_mask=torch.tensor([[len(pedestrians) > 0] * peds.shape[1]]),
        route=torch.tensor([[[0.0, 0.0], [5.0, 0.0]]]),
        route_length=torch.tensor([2]),
        style_seed=torch.tensor([seed]),
    )


def _render(scene: SceneBatch, yaw: float = 0.0, domain: str = "sim", generator=None):
    caster = Raycaster(W, H, domain=domain, max_distance=MAX_DISTANCE)
    return caster.render(scene, torch.zeros(1, 2), torch.tensor([yaw]), CAM_H, HFOV, with_depth=True, noise_generator=generator)


def _row_at_height(z: float, distance: float) -> int:
    """Image row that sees height z (metres) at z-depth ``distance`` straight ahead."""
    return int(H / 2 - (z - CAM_H) / distance * FOCAL)


def _column_towards(x: float, y: float) -> int:
    return int(W / 2 - (y / x) * FOCAL)


CENTRE = W // 2


def test_wall_straight_ahead_at_known_depth_and_sky_above_open_end():
    rgb, depth = _render(_corridor())
    assert rgb.shape == (1, 3, H, W) and rgb.dtype == torch.uint8
    assert depth.shape == (1, 1, H, W)
    for z in (0.1, 1.0, 3.0):  # facade rows from its foot to above the camera
        assert depth[0, 0, _row_at_height(z, END_WALL_X), CENTRE].item() == pytest.approx(END_WALL_X, abs=RES)
    # Turned around, the corridor is open: sky on top (max range, blue), no wall at the horizon.
    rgb_back, depth_back = _render(_corridor(), yaw=math.pi)
    assert depth_back[0, 0, 0, CENTRE].item() == MAX_DISTANCE
    r, g, b = rgb_back[0, :, 0, CENTRE].tolist()
    assert b > r and b > 100
    assert depth_back[0, 0, H // 2 - 1, CENTRE].item() > 2 * END_WALL_X


def test_floor_rows_show_the_surface_class_under_them():
    rgb, depth = _render(_corridor())
    bottom = H - 1
    t_bottom = CAM_H / ((bottom + 0.5 - H / 2) / FOCAL)
    assert 1.0 <= t_bottom < 2.0  # the grass band
    assert depth[0, 0, bottom, CENTRE].item() == pytest.approx(t_bottom, rel=1e-4)
    r, g, b = rgb[0, :, bottom, CENTRE].tolist()
    assert g > r + 30 and g > b + 30  # green grass
    sidewalk_row = int(H / 2 + CAM_H / 3.5 * FOCAL)  # floor 3.5 m ahead: sidewalk
    r, g, b = rgb[0, :, sidewalk_row, CENTRE].tolist()
    assert max(r, g, b) - min(r, g, b) < 40 and r > 80  # light grey paving (the sim camera is slightly cool)


def _box(x, y, height, half_length=0.3, half_width=0.5, kind=ObstacleKind.BOX):
    return [x, y, 0.0, half_length, half_width, height, float(ObstacleShape.BOX), float(kind)]


def test_tall_box_occludes_the_wall_at_its_distance():
    _, depth = _render(_corridor([_box(3.0, 0.0, 2.0)]))
    front = 3.0 - 0.3
    for z in (0.2, 1.0, 1.8):
        assert depth[0, 0, _row_at_height(z, front), CENTRE].item() == pytest.approx(front, abs=0.02)
    assert depth[0, 0, _row_at_height(5.0, END_WALL_X), CENTRE].item() == pytest.approx(END_WALL_X, abs=RES)  # above it
    # Columns beside the box still see the far wall.
    side = _column_towards(END_WALL_X, 1.5)
    assert depth[0, 0, _row_at_height(1.0, END_WALL_X), side].item() == pytest.approx(END_WALL_X, abs=RES)


def test_low_obstacle_leaves_the_wall_visible_above_it():
    _, depth = _render(_corridor([_box(3.0, 0.0, 0.4, kind=ObstacleKind.BENCH)]))
    column = depth[0, 0, :, CENTRE]
    front, back = 2.7, 3.3
    assert column[: H // 2].sub(END_WALL_X).abs().max().item() <= RES  # every row above the horizon: the wall
    assert column[_row_at_height(0.2, front)].item() == pytest.approx(front, abs=0.02)  # its side
    top_row = _row_at_height(0.4, (front + back) / 2)  # looking down onto its seat
    assert front - 0.05 <= column[top_row].item() <= back + 0.05


def test_circle_obstacle_depth():
    pole = [4.0, 0.0, 0.0, 0.25, 0.0, 3.0, float(ObstacleShape.CIRCLE), float(ObstacleKind.BIN)]
    _, depth = _render(_corridor([pole]))
    assert depth[0, 0, H // 2, CENTRE].item() == pytest.approx(3.75, abs=0.03)


def test_pedestrian_torso_occludes_and_legs_leave_a_gap():
    col, ped_x, radius = 44, 4.0, 0.3
    ped_y = ped_x * (W / 2 - col - 0.5) / FOCAL  # the pixel column's ray passes through the body axis
    rgb, depth = _render(_corridor(pedestrians=[[ped_x, ped_y, 0.0, 0.0, radius, 1.7]]))
    _, empty = _render(_corridor())
    front = ped_x - radius  # z-depth of the near surface, roughly
    torso = _row_at_height(1.1, front)
    assert front - 0.1 <= depth[0, 0, torso, col].item() <= ped_x
    assert depth[0, 0, torso, col].item() < empty[0, 0, torso, col].item() - 1.0
    # Between the legs (on the axis, near the ground) the ray passes through: background depth.
    knee = _row_at_height(0.15, ped_x)
    assert depth[0, 0, knee, col].item() == pytest.approx(empty[0, 0, knee, col].item())
    # Above the head: background again.
    assert depth[0, 0, _row_at_height(2.0, front), col].item() == pytest.approx(empty[0, 0, _row_at_height(2.0, front), col].item())


def test_nearer_object_wins_per_pixel():
    near, far = _box(2.0, 0.0, 2.0, 0.2, 0.2), _box(4.0, 0.0, 2.0, 0.5, 1.0)
    _, depth = _render(_corridor([far, near]))  # listed far first: order must come from depth
    assert depth[0, 0, H // 2, CENTRE].item() == pytest.approx(1.8, abs=0.02)
    beside = _column_towards(3.5, 0.7)  # misses the small near box, hits the wide far one
    assert depth[0, 0, H // 2, beside].item() == pytest.approx(3.5, abs=0.05)


def test_cpu_output_is_deterministic_and_noise_follows_the_generator():
    scene = _corridor([_box(3.0, 0.0, 0.4)], [[4.0, -1.5, 0.0, 0.0, 0.3, 1.7]])
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, _ = _render(scene, domain="recorded", generator=seeded(1))
    b, _ = _render(scene, domain="recorded", generator=seeded(1))
    c, _ = _render(scene, domain="recorded", generator=seeded(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a.float() - c.float()).abs().mean() < 10  # only noise differs
    assert torch.equal(_render(scene, domain="recorded")[0], _render(scene, domain="recorded")[0])


def test_domains_look_different_and_style_seed_varies_textures_not_geometry():
    scene = _corridor([_box(3.0, 0.0, 0.4)])
    sim, sim_depth = _render(scene, domain="sim")
    recorded, recorded_depth = _render(scene, domain="recorded")
    assert torch.equal(sim_depth, recorded_depth)
    assert (sim.float() - recorded.float()).abs().mean() > 10
    other, other_depth = _render(replace(scene, style_seed=torch.tensor([12345])), domain="sim")
    assert torch.equal(other_depth, sim_depth)
    assert not torch.equal(other, sim)


def test_batch_renders_each_scene_like_alone():
    a, b = _corridor([_box(3.0, 0.0, 2.0)], seed=1), _corridor(pedestrians=[[4.0, 1.0, 0.0, 0.0, 0.3, 1.7]], seed=2)
    both = SceneBatch(
        **{f: (torch.cat([getattr(a, f), getattr(b, f)]) if isinstance(getattr(a, f), torch.Tensor) else getattr(a, f)) for f in a.__dataclass_fields__}
    )
    caster = Raycaster(W, H, domain="sim")
    yaw = torch.tensor([0.0, 0.3])
    rgb, depth = caster.render(both, torch.zeros(2, 2), yaw, torch.tensor([1.0, 0.7]), torch.tensor([90.0, 70.0]), True)
    for i, scene in enumerate((a, b)):
        one, one_depth = caster.render(scene, torch.zeros(1, 2), yaw[i : i + 1], [1.0, 0.7][i], [90.0, 70.0][i], True)
        assert torch.equal(rgb[i : i + 1], one)
        assert torch.allclose(depth[i : i + 1], one_depth)


def test_generated_scenes_render_identically_for_the_same_seed():
    from s2e.sim.generator import SceneConfig, generate_world
    from s2e.sim.robots import get_robot

    robot = get_robot("quadruped")
    caster = Raycaster(48, 32, domain="recorded")
    images = []
    for seeds in ([3, 4], [3, 4], [5, 6]):
        scene = generate_world(seeds, SceneConfig(), robot).scene
        start, ahead = scene.route[:, 0], scene.route[:, 1]
        yaw = torch.atan2(ahead[:, 1] - start[:, 1], ahead[:, 0] - start[:, 0])
        rgb, _ = caster.render(scene, start, yaw, robot.camera_height, robot.hfov_deg, noise_generator=torch.Generator().manual_seed(0))
        images.append(rgb)
    assert torch.equal(images[0], images[1])
    assert not torch.equal(images[0], images[2])
    assert images[0].float().std() > 10  # a real picture, not a flat fill


def test_bad_inputs_raise_clear_errors():
    scene = _corridor()
    caster = Raycaster(W, H)
    with pytest.raises(ValueError, match="camera_xy"):
        caster.render(scene, torch.zeros(1, 3), torch.zeros(1), CAM_H, HFOV)
    with pytest.raises(ValueError, match="camera_yaw"):
        caster.render(scene, torch.zeros(1, 2), torch.zeros(2), CAM_H, HFOV)
    with pytest.raises(ValueError, match="obstacles"):
        caster.render(replace(scene, obstacles=torch.zeros(1, 1, 7)), torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV)
    with pytest.raises(ValueError, match="scene.height"):
        caster.render(replace(scene, height=torch.zeros(1, 5, 5)), torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV)
    with pytest.raises(ValueError, match="camera_height"):
        caster.render(scene, torch.zeros(1, 2), torch.zeros(1), torch.ones(3), HFOV)
    with pytest.raises(ValueError, match="hfov_deg"):
        caster.render(scene, torch.zeros(1, 2), torch.zeros(1), CAM_H, 180.0)
    with pytest.raises(ValueError, match="image size"):
        Raycaster(1, 48)


def test_scene_without_obstacle_or_pedestrian_rows_renders_the_walls():
    empty = replace(
        _corridor(),
        obstacles=torch.zeros(1, 0, 8),
        obstacle_mask=torch.zeros(1, 0, dtype=torch.bool),
        pedestrians=torch.zeros(1, 0, 6),
        pedestrian_mask=torch.zeros(1, 0, dtype=torch.bool),
    )
    rgb, depth = _render(empty)
    padded, padded_depth = _render(_corridor())  # same geometry with masked-out padding rows
    assert torch.equal(depth, padded_depth) and torch.equal(rgb, padded)
    assert depth[0, 0, _row_at_height(1.0, END_WALL_X), CENTRE].item() == pytest.approx(END_WALL_X, abs=RES)


def _street_batch(count: int, seed: int = 3):
    from s2e.sim.generator import SceneConfig, generate_world
    from s2e.sim.robots import get_robot

    robot = get_robot("wheeled")
    scene = generate_world(list(range(seed, seed + count)), SceneConfig(), robot).scene
    start, ahead = scene.route[:, 0], scene.route[:, 1]
    return scene, start, torch.atan2(ahead[:, 1] - start[:, 1], ahead[:, 0] - start[:, 0]), robot


def test_failed_compilation_falls_back_to_eager_once_and_auto_compiles_only_large_batches(monkeypatch):
    def no_toolchain(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_toolchain)
    policy = CompilePolicy(min_pixels=2 * W * H, after_eager_s=0.0)  # a long run: compiling pays
    scene = _corridor([_box(3.0, 0.0, 0.4)], [[4.0, -1.5, 0.0, 0.0, 0.3, 1.7]])
    expected = Raycaster(W, H, compiled=False).render(scene, torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV, True)
    auto = Raycaster(W, H, compile_policy=policy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one frame is below COMPILE_MIN_PIXELS: no compilation tried
        small = auto.render(scene, torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV, True)
    pair = SceneBatch(
        **{f: (torch.cat([getattr(scene, f)] * 2) if isinstance(getattr(scene, f), torch.Tensor) else getattr(scene, f)) for f in scene.__dataclass_fields__}
    )
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        large = auto.render(pair, torch.zeros(2, 2), torch.zeros(2), CAM_H, HFOV, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: later calls render eagerly, silently
        again = Raycaster(W, H, compiled=True, compile_policy=policy).render(scene, torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV, True)
    for got in (small, again):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(large[0], torch.cat([expected[0]] * 2))
    report = policy.report()
    failed = {name for name, stage in report["stages"].items() if "no C++ compiler found" in (stage["error"] or "")}
    assert report["state"] == "eager" and {"render._object_spans", "render._shade_pixels"} <= failed
    assert "render._object_spans failed to compile (RuntimeError: no C++ compiler found)" in CompilePolicy.describe(report)


def _refuses_sin(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
    """A torch.compile backend that fails on graphs computing a sine and runs the others as traced."""
    if "sin" in str(graph_module.graph):
        raise RuntimeError("no kernel for sin")
    return graph_module.forward


def _wavy(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 2


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x * 3 + 1


def test_a_stage_that_fails_to_compile_runs_eagerly_and_the_others_still_compile():
    """Compilation is decided per stage: a failure warns once, records its reason and leaves that stage eager,
    the other stages keep compiling, and the report says which ran how."""
    policy = CompilePolicy(backend=_refuses_sin)
    x = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match=rf"{stage_name(_wavy)} failed.* no kernel for sin"):
        assert torch.equal(policy.run(_wavy, False, True, x), torch.sin(x) * 2)
    first = policy.report()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second attempt, no second warning
        for _ in range(2):
            assert torch.equal(policy.run(_linear, False, True, x), x * 3 + 1)
            assert torch.equal(policy.run(_wavy, False, True, x), torch.sin(x) * 2)
    report = policy.report()
    assert report["stages"][stage_name(_linear)] == {"compiled_calls": 2, "eager_calls": 0, "error": None}
    wavy = report["stages"][stage_name(_wavy)]
    assert (wavy["compiled_calls"], wavy["eager_calls"]) == (0, 3) and "no kernel for sin" in wavy["error"]
    assert report["state"] == "partly compiled"
    assert CompilePolicy.describe(report).startswith(f"partly compiled; {stage_name(_wavy)} failed to compile (")
    assert policy.report(since=first)["stages"][stage_name(_wavy)]["eager_calls"] == 2  # calls after `first` only
    assert CompilePolicy().report() == {"state": "unused", "stages": {}}


def test_auto_compiles_large_batches_only_after_enough_eager_rendering(monkeypatch):
    """Short runs never pay for compilation: large calls stay eager until they have cost
    COMPILE_AFTER_EAGER_S seconds under the policy; small calls never count or compile."""
    tried = []

    def record(fn, **kwargs):
        tried.append(fn.__name__)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", record)
    policy = CompilePolicy(min_pixels=2 * W * H, after_eager_s=3600.0)
    scene = _corridor([_box(3.0, 0.0, 0.4)])
    pair = SceneBatch(
        **{f: (torch.cat([getattr(scene, f)] * 2) if isinstance(getattr(scene, f), torch.Tensor) else getattr(scene, f)) for f in scene.__dataclass_fields__}
    )
    caster = Raycaster(W, H, compile_policy=policy)
    caster.render(scene, torch.zeros(1, 2), torch.zeros(1), CAM_H, HFOV)
    assert policy.eager_large_s == 0.0  # small calls do not count
    for _ in range(2):
        caster.render(pair, torch.zeros(2, 2), torch.zeros(2), CAM_H, HFOV)
    assert tried == [] and policy.eager_large_s > 0  # large calls count, but far below the price
    policy.after_eager_s = policy.eager_large_s
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        caster.render(pair, torch.zeros(2, 2), torch.zeros(2), CAM_H, HFOV)
    assert tried  # the price is reached: the next large call compiles


def test_fixed_shape_stages_compile_for_a_few_shapes_then_run_eagerly(monkeypatch):
    """Each new shape of a fixed-shape stage costs a compilation: past static_shapes of them the stage runs
    eagerly (same picture) instead of compiling without end, e.g. for every reset batch size."""
    calls = []

    def traced(fn, **kwargs):
        def run(*args):
            calls.append((fn.__name__, kwargs["dynamic"], args[1].shape[0] if fn.__name__ == "_object_spans" else None))
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", traced)
    policy = CompilePolicy(static_shapes=1)
    scene, start, yaw, robot = _street_batch(3)
    caster = Raycaster(48, 27, compiled=True, compile_policy=policy)
    for count in (3, 3, 2):
        caster.render(scene.index(slice(0, count)), start[:count], yaw[:count], robot.camera_height, robot.hfov_deg)
    spans = [c for c in calls if c[0] == "_object_spans"]
    assert spans == [("_object_spans", False, 3)] * 2  # the 2-scene batch ran eagerly
    assert {c[0] for c in calls} >= {"_object_spans", "facade_hits", "_shade_pixels"}
    assert all(c[1] is False for c in calls)  # fixed-shape stages never compile shape-generically


@pytest.mark.slow
@pytest.mark.heavy
def test_compiled_stages_render_like_eager():
    """The torch.compile'd stages (default for large batches) draw the eager picture up to float rounding."""
    scene, start, yaw, robot = _street_batch(3)
    pictures = []
    policy = CompilePolicy()
    for compiled in (False, True):
        caster = Raycaster(64, 36, domain="recorded", compiled=compiled, compile_policy=policy)
        for count in (3, 2):  # a second batch size: fixed-shape stages compile for it too
            part = scene.index(slice(0, count))
            pictures.append(
                caster.render(
                    part, start[:count], yaw[:count], robot.camera_height, robot.hfov_deg, with_depth=True, noise_generator=torch.Generator().manual_seed(0)
                )
            )
    assert all(stage["error"] is None for stage in policy.report()["stages"].values())
    for (eager_rgb, eager_depth), (fast_rgb, fast_depth) in zip(pictures[:2], pictures[2:]):
        diff = (eager_rgb.int() - fast_rgb.int()).abs()
        assert (diff > 1).float().mean() < 1e-3  # a texel boundary may round the other way, nothing more
        assert torch.allclose(eager_depth, fast_depth, rtol=1e-4, atol=1e-4)
    assert pictures[0][0].float().std() > 10


def test_sparse_eager_pixel_stage_paints_what_the_dense_stage_paints(monkeypatch):
    """Eager rendering paints object layers on their own columns only; the picture must be the dense one's."""
    import s2e.sim.render as render

    scene, start, yaw, robot = _street_batch(4)
    caster = Raycaster(64, 36, domain="recorded", compiled=False)
    args = (scene, start, yaw, robot.camera_height, robot.hfov_deg)
    sparse_rgb, sparse_depth = caster.render(*args, with_depth=True)
    monkeypatch.setattr(render, "_shade_pixels_sparse", render._shade_pixels)
    dense_rgb, dense_depth = caster.render(*args, with_depth=True)
    assert torch.equal(sparse_rgb, dense_rgb) and torch.equal(sparse_depth, dense_depth)
    near = sparse_depth < caster.max_distance
    assert near.float().mean() > 0.3  # a real street view: objects and walls, not only sky


def test_pedestrians_and_obstacles_change_the_sparse_eager_picture():
    """The sparse object pass really paints: removing every object changes the picture where they stood."""
    scene, start, yaw, robot = _street_batch(4)
    caster = Raycaster(64, 36, domain="recorded", compiled=False)
    with_objects, _ = caster.render(scene, start, yaw, robot.camera_height, robot.hfov_deg)
    empty = replace(scene, obstacle_mask=torch.zeros_like(scene.obstacle_mask), pedestrian_mask=torch.zeros_like(scene.pedestrian_mask))
    without, _ = caster.render(empty, start, yaw, robot.camera_height, robot.hfov_deg)
    assert (with_objects != without).any(1).float().mean() > 0.005
