"""Scene generation, physics (blocked motion, contact events), crowd and expert, without a renderer."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from s2e.sim.compiled import CompilePolicy
from s2e.sim.crowd import crowd_step
from s2e.sim.expert import ExpertPlanner
from s2e.sim.generator import SceneConfig, generate_world
from s2e.sim.physics import ContactTracker, footprint_clearance, integrate_unicycle, sample_field
from s2e.sim.rewards import route_arclength
from s2e.sim.robots import get_robot
from s2e.sim.scene import WALKABLE, ObstacleKind, ObstacleShape
from s2e.sim.tasks import get_task

WHEELED = get_robot("wheeled")


def _straight(seed: int = 0, **overrides) -> object:
    config = SceneConfig(layouts=("straight",), num_obstacles=(0, 0), num_pedestrians=(0, 0))
    return generate_world([seed], replace(config, **overrides), WHEELED)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sidewalk_width": (0.5, 3.0)}, "sidewalk_width"),
        ({"num_obstacles": (-1, 2)}, "num_obstacles"),
        ({"num_pedestrians": (5, 2)}, "num_pedestrians"),
        ({"layouts": ("maze",)}, "layouts"),
        ({"route_length": (10.0, 500.0)}, "route_length"),
    ],
)
def test_bad_scene_parameters_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        generate_world([0], replace(SceneConfig(), **overrides), WHEELED)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="quadruped"):
        get_robot("tank")
    with pytest.raises(ValueError, match="obstacle"):
        get_task("racing")


def test_generation_is_deterministic_and_seed_dependent():
    a = generate_world([3, 4], SceneConfig(), WHEELED)
    b = generate_world([3, 4], SceneConfig(), WHEELED)
    c = generate_world([5, 6], SceneConfig(), WHEELED)
    assert torch.equal(a.scene.surface, b.scene.surface) and torch.equal(a.scene.pedestrians, b.scene.pedestrians)
    assert torch.equal(a.scene.obstacles, b.scene.obstacles) and torch.equal(a.scene.route, b.scene.route)
    assert not torch.equal(a.scene.surface, c.scene.surface) or not torch.equal(a.scene.route, c.scene.route)


def test_routes_and_obstacles_lie_on_walkable_ground_and_leave_a_passage():
    config = SceneConfig(num_obstacles=(4, 6))
    world = generate_world(range(12), config, WHEELED)
    scene = world.scene
    walkable = torch.zeros_like(scene.surface, dtype=torch.bool)
    for surface in WALKABLE:
        walkable |= scene.surface == surface
    for points in (scene.start, scene.goal):
        cell = ((points - scene.origin) / scene.resolution).long()  # (column, row) of the grid cell
        assert walkable[torch.arange(12), cell[:, 1], cell[:, 0]].all()
    assert (world.route_total >= config.route_length[0] - 1).all()
    assert (world.route_total <= config.route_length[1] + 1e-3).all()
    # The expert's planner needs a way past every obstacle: walk the route in 0.25 m steps and check
    # that some point across the sidewalk there keeps the footprint clear.
    s = torch.linspace(0, 1, 80)[None] * world.route_total[:, None]
    from s2e.sim.expert import _point_at

    for j in range(s.shape[1]):
        centre = _point_at(scene.route, world.route_cumlen, s[:, j])
        ahead = _point_at(scene.route, world.route_cumlen, s[:, j] + 0.3) - centre
        normal = torch.stack([-ahead[:, 1], ahead[:, 0]], -1) / ahead.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        offsets = torch.linspace(-2.4, 2.4, 33)
        probes = centre[:, None] + offsets[None, :, None] * normal[:, None]
        clear = footprint_clearance(world, probes, WHEELED.radius).total
        assert (clear.max(-1).values > 0).all(), f"route blocked at sample {j}"


def test_distance_field_is_positive_exactly_on_walkable_cells():
    world = generate_world(range(4), SceneConfig(), WHEELED)
    scene = world.scene
    walkable = (scene.surface == WALKABLE[0]) | (scene.surface == WALKABLE[1])
    assert torch.equal(scene.distance > 0, walkable)
    assert ((scene.height > 0) == (world.solid_distance < 0)).all()


def _drive(world, xy, yaw, v, omega, steps, tracker=None):
    tracker = tracker or ContactTracker(xy.shape[0], xy.device)
    clearances = []
    for _ in range(steps):
        xy, yaw, blocked = integrate_unicycle(world, xy, yaw, torch.full_like(yaw, v), torch.full_like(yaw, omega), 0.1, 4, WHEELED.radius)
        clear = footprint_clearance(world, xy[:, None], WHEELED.radius).total[:, 0]
        tracker.update(blocked, clear)
        clearances.append(clear)
    return xy, yaw, tracker, torch.stack(clearances)


def test_robot_cannot_drive_through_a_wall_and_counts_one_collision():
    world = _straight(seed=1)
    xy = world.scene.start.clone()
    grad = (
        torch.stack(
            [sample_field(world.solid_distance, world.scene.origin, 0.2, xy[:, None] + d)[:, 0] for d in (torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.5]))],
            -1,
        )
        - sample_field(world.solid_distance, world.scene.origin, 0.2, xy[:, None])[:, 0, None]
    )
    yaw = torch.atan2(-grad[:, 1], -grad[:, 0])  # face the facade
    xy, yaw, tracker, clearances = _drive(world, xy, yaw, 1.5, 0.0, steps=60)
    assert clearances.min() >= -1e-4  # never inside the wall
    assert clearances[-1].item() < 0.05  # pressed against it
    assert tracker.count.item() == 1  # one contact event despite ~50 steps of pushing


def test_robot_cannot_pass_through_an_obstacle_and_contact_events_are_counted_once_each():
    world = _straight(seed=2)
    start = world.scene.start[0]
    direction = world.scene.route[0, 1] - start
    direction = direction / direction.norm()
    pole = start + 2.0 * direction
    world.scene.obstacles = torch.tensor([[[pole[0], pole[1], 0.0, 0.1, 0.0, 3.0, float(ObstacleShape.CIRCLE), float(ObstacleKind.POLE)]]])
    world.scene.obstacle_mask = torch.ones(1, 1, dtype=torch.bool)
    yaw = torch.atan2(direction[1], direction[0])[None]
    xy, yaw, tracker, clearances = _drive(world, start[None].clone(), yaw, 1.5, 0.0, steps=40)
    assert clearances.min() >= -1e-4
    assert ((xy[0] - start) @ direction).item() < 2.0 - 0.1 - WHEELED.radius + 1e-3  # still in front of the pole
    assert tracker.count.item() == 1
    # Turn round in place (~pi), drive away: the contact ends without a new count.
    xy, yaw, tracker, _ = _drive(world, xy, yaw, 0.0, 1.5, steps=21, tracker=tracker)
    xy, yaw, tracker, _ = _drive(world, xy, yaw, 1.0, 0.0, steps=10, tracker=tracker)
    assert tracker.count.item() == 1 and not tracker.in_contact.item()
    xy, yaw, tracker, _ = _drive(world, xy, yaw, 0.0, 1.5, steps=21, tracker=tracker)
    xy, yaw, tracker, _ = _drive(world, xy, yaw, 1.5, 0.0, steps=30, tracker=tracker)
    assert tracker.count.item() == 2  # a second, separate contact event


def test_pedestrians_keep_apart_from_each_other_and_the_robot():
    config = SceneConfig(num_pedestrians=(10, 10), num_obstacles=(2, 3))
    world = generate_world(range(6), config, WHEELED)
    robot_xy = world.scene.route[:, 1].clone()  # the robot stands in the crowd's way
    radius = world.scene.pedestrians[..., 4]
    mask = world.scene.pedestrian_mask
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(mask.shape[1], dtype=torch.bool)
    start = world.scene.pedestrians[..., :2].clone()
    for _ in range(150):
        crowd_step(world, robot_xy, torch.zeros_like(robot_xy), WHEELED.radius, 0.1)
        xy = world.scene.pedestrians[..., :2]
        gaps = (xy[:, :, None] - xy[:, None]).norm(dim=-1) - radius[:, :, None] - radius[:, None, :]
        assert gaps[pair].min() > -0.03
        robot_gap = (xy - robot_xy[:, None]).norm(dim=-1) - radius - WHEELED.radius
        assert robot_gap[mask].min() > -0.03
    moved = (world.scene.pedestrians[..., :2] - start).norm(dim=-1)[mask]
    assert (moved > 1.0).float().mean() > 0.4  # most of them actually walk
    assert torch.isfinite(world.scene.pedestrians).all()


def test_expert_reaches_goals_in_obstacle_scenes():
    config = get_task("obstacle").apply(SceneConfig())
    world = generate_world(range(100, 108), config, WHEELED)
    planner = ExpertPlanner(WHEELED)
    xy = world.scene.start.clone()
    d = world.scene.route[:, 1] - xy
    yaw = torch.atan2(d[:, 1], d[:, 0])
    tracker = ContactTracker(8, xy.device)
    for _ in range(400):
        plan = planner.plan(world, xy, yaw)
        assert plan.waypoints.shape == (8, planner.config.steps, 2)
        xy, yaw, blocked = integrate_unicycle(world, xy, yaw, plan.action[:, 0], plan.action[:, 1], 0.1, 4, WHEELED.radius)
        tracker.update(blocked, footprint_clearance(world, xy[:, None], WHEELED.radius).total[:, 0])
        if ((world.scene.goal - xy).norm(dim=-1) < 1.0).all():
            break
    assert ((world.scene.goal - xy).norm(dim=-1) < 1.0).float().mean() >= 7 / 8
    assert tracker.count.sum() <= 1
    arc = route_arclength(world.scene.route, world.route_cumlen, xy)
    assert (arc / world.route_total > 0.9).float().mean() >= 7 / 8


def test_expert_side_bias_picks_the_side_an_obstacle_is_passed_on():
    world = _straight(seed=1)
    start = world.scene.start[0]
    forward = (world.scene.route[0, 1] - start) / (world.scene.route[0, 1] - start).norm()
    left = torch.stack([-forward[1], forward[0]])
    box = start + 5 * forward
    world.scene.obstacles = torch.tensor([[[box[0], box[1], 0.0, 0.4, 0.4, 1.0, float(ObstacleShape.BOX), float(ObstacleKind.BOX)]]])
    world.scene.obstacle_mask = torch.ones(1, 1, dtype=torch.bool)
    planner = ExpertPlanner(WHEELED)
    passing = {}
    for bias in (1.5, -1.5):
        xy, yaw = start[None].clone(), torch.atan2(forward[1], forward[0])[None]
        for _ in range(80):
            action = planner.plan(world, xy, yaw, side_bias=torch.tensor([bias])).action
            xy, yaw, _ = integrate_unicycle(world, xy, yaw, action[:, 0], action[:, 1], 0.1, 4, WHEELED.radius)
            if abs(((xy[0] - start) @ forward).item() - 5.0) < 0.3:
                passing[bias] = ((xy[0] - start) @ left).item()
        assert ((xy[0] - start) @ forward).item() > 8.0  # got past it
    assert passing[1.5] > 0.5 and passing[-1.5] < -0.5  # left with a positive bias, right with a negative one


def test_rule_terms_penalize_the_sidewalk_edge_and_crowding_people():
    from s2e.sim.rewards import RewardConfig, reward_terms

    world = _straight(seed=3)
    start = world.scene.start[0]
    forward = (world.scene.route[0, 1] - start) / (world.scene.route[0, 1] - start).norm()
    left = torch.stack([-forward[1], forward[0]])
    edge = start + left * (world.half_width[0] - WHEELED.radius)
    world.scene.pedestrians = torch.tensor([[[*(start + forward * 0.8).tolist(), 0.0, 0.0, 0.25, 1.7]]])
    world.scene.pedestrian_mask = torch.ones(1, 1, dtype=torch.bool)
    zeros, action = torch.zeros(1), torch.zeros(1, 2)
    terms = {
        name: reward_terms(world, xy[None], WHEELED.radius, zeros, zeros.bool(), zeros.bool(), action, action, torch.ones(2), RewardConfig())
        for name, xy in (("centre", start), ("edge", edge))
    }
    assert terms["centre"]["centering"].item() > -0.05 > terms["edge"]["centering"].item()
    assert terms["centre"]["social"].item() < terms["edge"]["social"].item() <= 0  # the pedestrian is next to the centre point
    jerk = reward_terms(world, start[None], WHEELED.radius, zeros, zeros.bool(), zeros.bool(), torch.ones(1, 2), action, torch.ones(2), RewardConfig())
    assert jerk["smoothness"].item() == -2.0


# ---------------------------------------------------------------- fast paths pinned to plain references
def _reference_static_distance(world, xy: torch.Tensor, walkable: bool) -> torch.Tensor:
    """The static distance the crowd feels, written plainly: grid_sample for the bilinear field,
    per-shape signed distances for the obstacles, a masked min."""
    scene = world.scene
    field = scene.distance if walkable else world.solid_distance
    extent = torch.tensor([field.shape[2], field.shape[1]]) * scene.resolution
    grid = (xy - scene.origin[:, None]) / extent * 2 - 1
    sampled = torch.nn.functional.grid_sample(field[:, None], grid[:, None], padding_mode="border", align_corners=False)[:, 0, 0]
    ob = scene.obstacles[:, None]
    d = xy[:, :, None] - ob[..., 0:2]
    c, s = torch.cos(ob[..., 2]), torch.sin(ob[..., 2])
    local = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1).abs()
    q = local - ob[..., 3:5]
    box = q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)
    circle = d.norm(dim=-1) - ob[..., 3]
    obstacle = torch.where(ob[..., 6] == float(ObstacleShape.CIRCLE), circle, box).masked_fill(~scene.obstacle_mask[:, None], 1e4)
    return torch.minimum(sampled, obstacle.min(-1).values)


@pytest.mark.parametrize("walkable", [True, False])
def test_fused_static_distance_and_normal_match_separate_finite_differences(walkable):
    from s2e.sim.crowd import static_distance_and_normal
    from s2e.sim.physics import ObstacleSet

    world = generate_world(range(20, 28), SceneConfig(num_obstacles=(4, 6), num_pedestrians=(6, 10)), WHEELED)
    world.scene.obstacles[~world.scene.obstacle_mask] = float("nan")  # padding may hold anything
    gen = torch.Generator().manual_seed(0)
    around = world.scene.obstacles[..., :2].nan_to_num().repeat(1, 4, 1) + torch.randn(8, 24, 2, generator=gen) * 0.6  # near obstacles
    xy = torch.cat([world.scene.pedestrians[..., :2], around, (torch.rand(8, 30, 2, generator=gen) - 0.5) * 44], 1)
    eps = 0.05
    obstacles = ObstacleSet.of(world.scene.obstacles, world.scene.obstacle_mask)
    padded = ~world.scene.obstacle_mask[:, :, None].expand(-1, -1, xy.shape[1])
    assert padded.any() and (obstacles.distance(xy)[padded] == 1e4).all()  # padded rows read FAR, whatever they hold
    field = world.scene.distance if walkable else world.solid_distance
    distance, normal = static_distance_and_normal(field, world.scene.origin, world.scene.resolution, xy, obstacles, eps)
    torch.testing.assert_close(distance, _reference_static_distance(world, xy, walkable), atol=1e-4, rtol=0)
    probe = lambda dx, dy: _reference_static_distance(world, xy + torch.tensor([dx, dy]), walkable)  # noqa: E731
    raw = torch.stack([probe(eps, 0) - probe(-eps, 0), probe(0, eps) - probe(0, -eps)], -1) / (2 * eps)
    steep = raw.norm(dim=-1) > 0.2  # the unit normal is well defined (not on a plateau or a ridge of the field)
    assert steep.float().mean() > 0.5
    torch.testing.assert_close(normal[steep], (raw / raw.norm(dim=-1, keepdim=True))[steep], atol=5e-3, rtol=0)
    torch.testing.assert_close(normal.norm(dim=-1)[steep], torch.ones(int(steep.sum())))


def _reference_integrate(world, xy, yaw, v, omega, dt, substeps, radius):
    """Blocked-motion substeps one clearance query at a time (the definition the fast path follows)."""
    h = dt / substeps
    blocked = torch.zeros_like(v, dtype=torch.bool)
    before = footprint_clearance(world, xy[:, None], radius).total[:, 0]
    for _ in range(substeps):
        mid = yaw + 0.5 * omega * h
        proposal = xy + torch.stack([torch.cos(mid), torch.sin(mid)], -1) * (v * h)[:, None]
        after = footprint_clearance(world, proposal[:, None], radius).total[:, 0]
        accept = (after >= 0) | (after >= before)
        xy, before, blocked = torch.where(accept[:, None], proposal, xy), torch.where(accept, after, before), blocked | ~accept
        yaw = yaw + omega * h
    return xy, torch.remainder(yaw + torch.pi, 2 * torch.pi) - torch.pi, blocked


@pytest.mark.parametrize("substeps", [4, 6])
def test_tree_integration_follows_substeps_one_by_one(substeps):
    world = generate_world(range(30, 46), SceneConfig(num_obstacles=(5, 6), num_pedestrians=(6, 10)), WHEELED)
    gen = torch.Generator().manual_seed(substeps)
    xy, yaw = world.scene.start.clone(), torch.rand(16, generator=gen) * 6.3
    ref_xy, ref_yaw = xy.clone(), yaw.clone()
    refused = 0
    for _ in range(40):  # random fast commands: robots run into walls, obstacles and people, and back out
        v, omega = torch.rand(16, generator=gen) * 3 - 0.5, torch.randn(16, generator=gen)
        xy, yaw, blocked = integrate_unicycle(world, xy, yaw, v, omega, 0.2, substeps, WHEELED.radius)
        ref_xy, ref_yaw, ref_blocked = _reference_integrate(world, ref_xy, ref_yaw, v, omega, 0.2, substeps, WHEELED.radius)
        assert torch.equal(xy, ref_xy) and torch.equal(yaw, ref_yaw) and torch.equal(blocked, ref_blocked)
        refused += int(blocked.sum())
    assert refused > 20  # the refusal branches were exercised


@pytest.mark.slow
@pytest.mark.heavy
def test_compiled_crowd_step_walks_the_eager_crowd():
    """The crowd's compiled step (used whenever the renderer compiles) moves pedestrians as the eager
    step does, up to float rounding, over many steps with the robot in their way."""
    policy = CompilePolicy()
    config = SceneConfig(num_pedestrians=(10, 10), num_obstacles=(2, 3))
    runs = []
    for compiled in (False, True):
        world = generate_world(range(4), config, WHEELED)
        robot_xy = world.scene.route[:, 1].clone()
        for _ in range(30):
            crowd_step(world, robot_xy, torch.zeros_like(robot_xy), WHEELED.radius, 0.1, compiled=compiled, compile_policy=policy)
        runs.append((world.scene.pedestrians.clone(), world.crowd.toward_b.clone()))
    assert policy.report()["stages"]["crowd._advance"] == {"compiled_calls": 30, "eager_calls": 30, "error": None}
    (eager, eager_toward), (fast, fast_toward) = runs
    assert torch.allclose(eager, fast, atol=2e-3) and torch.equal(eager_toward, fast_toward)
    assert (eager[..., :2] - generate_world(range(4), config, WHEELED).scene.pedestrians[..., :2]).abs().max() > 1.0
