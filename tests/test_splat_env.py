"""NavEnv on a splat scene: same keys, tasks, rewards and metrics; frames move with the robot; the sliced wall stops it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from s2e.sim.env import NavEnvConfig
from s2e.sim.rewards import TERMS
from s2e.splat.layout import save_layout
from s2e.splat.ply import SplatFileError, save_ply
from s2e.splat.scene import SplatRenderer, load_splat_scene, make_splat_env
from s2e.splat.slicer import bounds_of, gaussian_samples, layout_from_points
from s2e.splat.synthetic import synthetic_street
from s2e.timing import TimingSpec

WALL_Y = 2.0  # the street is 4 m wide: facades at y = +-2


@pytest.fixture(scope="module")
def street():
    gaussians = synthetic_street(length=12.0, width=2 * WALL_Y, wall_height=2.5, spacing=0.3)
    points = gaussian_samples(gaussians)
    return gaussians, layout_from_points(points, bounds_of(points), 0.2, robot_radius=0.3)


def _env(street, task: str, num_envs: int = 2, with_depth: bool = False):
    config = NavEnvConfig(task=task, image_size=(16, 24), with_depth=with_depth, timing=TimingSpec(context_frames=2, frame_dt=0.2, control_dt=0.1))
    return make_splat_env(config, *street, num_envs=num_envs, seed=3, backend="reference")


def test_splat_env_steps_with_the_navenv_keys_and_frames_that_move(street):
    env = _env(street, "both")
    assert isinstance(env.renderer, SplatRenderer) and env.renderer.backend == "reference"
    check_env_specs(env)
    td = env.reset()
    assert td["frames"].shape == (2, 2, 3, 16, 24) and td["frames"].dtype == torch.uint8
    first = td["frames"][:, -1].clone()
    goal0 = td["goal"][:, 0].clone()
    assert env.world.scene.pedestrian_mask.any()  # the task's crowd is placed in the capture
    for _ in range(4):
        td = env.step(td.set("action", torch.tensor([[1.2, 0.0], [1.2, 0.0]])))["next"]
    assert set(td["reward_terms"].keys()) == set(TERMS)
    assert (td["goal"][:, 0] < goal0).all()  # driving forward along the route brings the goal closer
    assert (td["route_completion"] > 0).all()
    changed = (td["frames"][:, -1].int() - first.int()).abs().float().mean(dim=(1, 2, 3))
    assert (changed > 1.0).all()
    # A partial reset gives env 1 a fresh scene and history and leaves env 0 where it was.
    kept = env.robot_xy[0].clone()
    td = env.reset(td.set("_reset", torch.tensor([[False], [True]])))
    assert torch.equal(env.robot_xy[0], kept) and float(env.route_completion[1]) == 0.0
    env.observation_spec.assert_is_in(td.select(*env.observation_spec.keys()))
    # Rendering the envs one per rasterizer call (bounded memory) gives the same frames.
    scene, xy, yaw = env.world.scene, env.robot_xy, env.robot_yaw
    together, _ = env.renderer.render(scene, xy, yaw, 0.7, 90.0)
    one_by_one, _ = SplatRenderer(street[0], 24, 16, backend="reference", cameras_per_call=1).render(scene, xy, yaw, 0.7, 90.0)
    assert torch.equal(together, one_by_one)


def test_sliced_wall_stops_the_robot_where_the_camera_sees_it(street):
    env = _env(street, "empty", num_envs=1, with_depth=True)
    td = env.reset()
    env.robot_xy[0] = torch.tensor([0.0, 0.0])
    env.robot_yaw[0] = math.pi / 2  # facing the facade at y = +2
    collisions = []
    for _ in range(25):
        td = env.step(td.set("action", torch.tensor([[1.5, 0.0]])))["next"]
        collisions.append(float(td["reward_terms", "collision"]))
    radius = env.robot.radius
    assert WALL_Y - radius - 0.3 < float(env.robot_xy[0, 1]) <= WALL_Y - radius + 0.05  # stopped at the wall, not through it
    assert int(td["collisions"]) >= 1 and min(collisions) < 0
    # The camera (0.2 m ahead of the footprint centre) sees the facade at the remaining distance.
    seen = float(td["depth"][0, -1, 0, 8, 12])
    expected = WALL_Y - float(env.robot_xy[0, 1]) - env.robot.camera_forward
    assert abs(seen - expected) < 0.15


def test_obstacles_and_pedestrians_are_splatted_where_physics_has_them(street):
    env = _env(street, "both", num_envs=1, with_depth=True)
    env.reset()
    scene = env.world.scene
    scene.obstacle_mask[:] = False
    scene.pedestrian_mask[:] = False
    xy, yaw = torch.tensor([[-4.0, 0.0]]), torch.tensor([0.0])
    render = lambda: env.renderer.render(scene, xy, yaw, 0.7, 90.0, with_depth=True)  # noqa: E731
    _, empty = render()
    scene.obstacles[0, 0] = torch.tensor([-1.0, 0.0, 0.0, 0.4, 0.4, 1.0, 1.0, 3.0])  # a 0.8 m box 3 m ahead
    scene.obstacle_mask[0, 0] = True
    image, depth = render()
    assert empty[0, 0, 8, 12] > 5.0 and abs(float(depth[0, 0, 8, 12]) - 2.6) < 0.25
    scene.obstacle_mask[0, 0] = False
    scene.pedestrians[0, 0] = torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.25, 1.7])  # a pedestrian 2 m ahead
    scene.pedestrian_mask[0, 0] = True
    _, depth = render()
    # Row 6 looks 1.5 px (0.25 m at 2 m) above the 0.7 m camera: the torso.
    assert abs(float(depth[0, 0, 6, 12]) - 2.0) < 0.2 and empty[0, 0, 6, 12] > 5.0


def test_bundle_loads_in_the_world_frame_and_a_misplaced_capture_is_named(street, tmp_path):
    gaussians, layout = street
    ply = save_ply(tmp_path / "street.ply", gaussians)
    loaded, _ = load_splat_scene(ply, save_layout(tmp_path / "street.layout.json", replace(layout, world_from_splat=np.eye(4))))
    torch.testing.assert_close(loaded.means, gaussians.means)
    # A y-down capture frame left unrotated (and shifted): the street stands on its side, beside the grid.
    y_down = np.array([[1.0, 0, 0, 0], [0, 0, -1, 50.0], [0, 1, 0, 0], [0, 0, 0, 1]])
    with pytest.raises(SplatFileError, match=r"only 0% of the Gaussians lie over the layout's grid .* Check .*world_from_splat"):
        load_splat_scene(ply, save_layout(tmp_path / "moved.layout.json", replace(layout, world_from_splat=y_down)))


def test_obstacles_and_pedestrians_stay_inside_the_spawn_regions(street):
    from s2e.sim.generator import SceneConfig
    from s2e.splat.scene import SplatScenes

    _, layout = street
    region = np.array([[-6.0, -2.0], [0.0, -2.0], [0.0, 2.0], [-6.0, 2.0]])  # the street's x < 0 half
    source = SplatScenes(replace(layout, spawn_regions=[region]), SceneConfig(num_obstacles=(6, 6), num_pedestrians=(10, 10)), "wheeled")
    world = source.sample(6, np.random.default_rng(0), torch.device("cpu"))
    scene = world.scene
    obstacles, peds = scene.obstacles[scene.obstacle_mask], scene.pedestrians[scene.pedestrian_mask]
    assert len(obstacles) > 0 and len(peds) > 0
    assert (obstacles[:, 0] < 0).all() and (peds[:, 0] < 0).all()
    everywhere = SplatScenes(layout, SceneConfig(num_obstacles=(6, 6), num_pedestrians=(10, 10)), "wheeled")
    assert (everywhere.sample(6, np.random.default_rng(0), torch.device("cpu")).scene.pedestrians[..., 0] > 0).any()
