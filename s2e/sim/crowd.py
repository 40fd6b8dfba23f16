"""Pedestrians as discs moved by a vectorized social-force model (Helbing & Molnar) that sees the robot.

Each pedestrian walks back and forth between two goals (along the sidewalk, across it, or stays put
when both goals coincide), is pulled toward its current goal at its own desired speed and pushed
away from other pedestrians, the robot, obstacles and the edge of the walkable area. Forces alone
let fast discs overlap in dense spots, so a few projection passes after each step separate any
overlapping pair: pedestrians never stand inside each other or inside the robot. All of it is
tensor arithmetic over [B, P] (and [B, P, P] for pairs): no per-env or per-pedestrian loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2e.sim.compiled import PROCESS_POLICY, CompilePolicy
from s2e.sim.physics import ObstacleSet, sample_field


@dataclass
class CrowdState:
    """Per-pedestrian walking plan [B, P]: ping-pong goals, desired speed and current direction."""

    goal_a: torch.Tensor  # [B, P, 2]
    goal_b: torch.Tensor  # [B, P, 2]
    desired_speed: torch.Tensor  # [B, P] m/s (0: standing)
    toward_b: torch.Tensor  # [B, P] bool


@dataclass(frozen=True)
class CrowdConfig:
    """Social-force parameters (SI units; defaults follow Helbing & Molnar / Moussaid et al.)."""

    relaxation: float = 0.5  # s to reach the desired velocity
    agent_strength: float = 2.0  # m/s^2 repulsion between pedestrians
    agent_range: float = 0.3  # m
    robot_strength: float = 8.0  # pedestrians give a robot more room than each other
    robot_range: float = 0.6
    wall_strength: float = 5.0
    wall_range: float = 0.2
    anisotropy: float = 0.35  # weight of interactions behind a walker (1 = isotropic)
    goal_tolerance: float = 0.4  # m: a goal this close counts as reached and the walker turns round
    max_speed_factor: float = 1.4
    substeps: int = 2
    projection_passes: int = 3


#: Probe offsets of the central-difference gradient, in units of its step: the point itself, then
#: +x, -x, +y, -y. All five are evaluated in one batched call.
_PROBES = ((0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))


def _static_distance(field: torch.Tensor, origin: torch.Tensor, resolution: float, xy: torch.Tensor, obstacles: ObstacleSet) -> torch.Tensor:
    """Distance to the nearest static thing: the edge of ``field`` (the walkable area, soft, or solid
    walls) and the obstacles (prepared once per step)."""
    return torch.minimum(sample_field(field, origin, resolution, xy), obstacles.nearest(xy))


def static_distance_and_normal(
    field: torch.Tensor, origin: torch.Tensor, resolution: float, xy: torch.Tensor, obstacles: ObstacleSet, eps: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_static_distance`` at xy [B, K, 2] -> [B, K] and its unit central-difference gradient -> [B, K, 2].

    The point and its four +-eps probes go through ONE ``_static_distance`` call on [B, 5K, 2]: the
    tensors are tiny, so per-op overhead, not arithmetic, is the cost, and five separate calls cost
    five times as much. Every probe is computed exactly as a separate call would compute it.
    """
    b, k, _ = xy.shape
    offsets = torch.tensor(_PROBES, device=xy.device, dtype=xy.dtype) * eps  # [5, 2]
    probes = (xy[:, None] + offsets[:, None]).reshape(b, len(_PROBES) * k, 2)
    d = _static_distance(field, origin, resolution, probes, obstacles).view(b, len(_PROBES), k)
    g = torch.stack([d[:, 1] - d[:, 2], d[:, 3] - d[:, 4]], -1) / (2 * eps)
    return d[:, 0], g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _anisotropic(cos_phi: torch.Tensor, anisotropy: float) -> torch.Tensor:
    """Weight of an interaction for a walker whose heading makes cos_phi with the direction to the
    other agent: 1 straight ahead, ``anisotropy`` straight behind."""
    return anisotropy + (1 - anisotropy) * (1 + cos_phi) / 2


def _pairs(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets dx, dy [B, P, P] from pedestrian j to pedestrian i at xy [B, P, 2], and their lengths.

    Per axis rather than [B, P, P, 2]: ops along a trailing axis of 2 run several times slower.
    """
    x, y = xy.unbind(-1)
    dx, dy = x[:, :, None] - x[:, None, :], y[:, :, None] - y[:, None, :]
    return dx, dy, torch.hypot(dx, dy).clamp_min(1e-6)


def crowd_step(
    world,
    robot_xy: torch.Tensor,
    robot_vel: torch.Tensor,
    robot_radius: float,
    dt: float,
    config: CrowdConfig = CrowdConfig(),
    obstacles: ObstacleSet | None = None,
    compiled: bool = False,
    compile_policy: CompilePolicy = PROCESS_POLICY,
) -> None:
    """Advance ``world.scene.pedestrians`` by ``dt`` seconds in place, reacting to the robot disc.

    ``obstacles``: the scene's obstacles already prepared (``ObstacleSet.of``), when the caller has them.
    ``compiled``: run the step through ``torch.compile`` (``s2e.sim.compiled``): its few hundred
    tiny ops become one single-threaded fused kernel (several times faster than eager, see
    docs/experiments.md; seconds to compile once per process), with the eager result up to float
    rounding. ``compile_policy`` runs it
    (``NavEnv`` passes its renderer's, so a run's stages share one policy and one report).
    """
    scene, state = world.scene, world.crowd
    if not bool(scene.pedestrian_mask.any()):  # tasks without a crowd keep one padded row: nothing to move
        return
    obstacles = obstacles if obstacles is not None else ObstacleSet.of(scene.obstacles, scene.obstacle_mask)
    peds, toward_b = compile_policy.run(
        _advance,
        True,
        compiled,
        scene.pedestrians,
        scene.pedestrian_mask,
        state,
        robot_xy,
        robot_vel,
        (scene.distance, world.solid_distance, scene.origin),
        scene.resolution,
        obstacles,
        robot_radius,
        dt,
        config,
        single_thread=True,
    )
    state.toward_b.copy_(toward_b)
    scene.pedestrians = peds


def _advance(
    peds: torch.Tensor,
    mask: torch.Tensor,
    state: CrowdState,
    robot_xy: torch.Tensor,
    robot_vel: torch.Tensor,
    fields: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    resolution: float,
    obstacles: ObstacleSet,
    robot_radius: float,
    dt: float,
    config: CrowdConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One crowd step as a pure function: (new pedestrians [B, P, 6], new toward_b [B, P]).
    ``fields``: (walkable distance, solid distance, origin) of the scenes."""
    walkable, solid, origin = fields
    toward_b = state.toward_b
    radius = peds[..., 4]
    h = dt / config.substeps
    eye = torch.eye(peds.shape[1], dtype=torch.bool, device=peds.device)
    no_pair = ~(mask[:, :, None] & mask[:, None, :] & ~eye)
    contact = radius[:, :, None] + radius[:, None, :]  # centre distance at which two discs touch
    cap = (state.desired_speed * config.max_speed_factor).clamp_min(0.5)[..., None]
    xy, vel = peds[..., 0:2], peds[..., 2:4]
    for _ in range(config.substeps):
        target = torch.where(toward_b[..., None], state.goal_b, state.goal_a)
        to_goal = target - xy
        dist_goal = to_goal.norm(dim=-1)
        arrived = (dist_goal < config.goal_tolerance) & (state.desired_speed > 0)
        toward_b = toward_b ^ arrived
        direction = to_goal / dist_goal.clamp_min(1e-6)[..., None]
        speed = state.desired_speed * (dist_goal / config.goal_tolerance).clamp(max=1.0)
        force = (direction * speed[..., None] - vel) / config.relaxation

        heading = vel / vel.norm(dim=-1, keepdim=True).clamp_min(1e-3)

        dx, dy, dist = _pairs(xy)
        nx, ny = dx / dist, dy / dist  # unit normal from the other pedestrian to me
        cos_phi = -(nx * heading[..., 0:1] + ny * heading[..., 1:2])
        push = config.agent_strength * torch.exp(-(dist - contact) / config.agent_range) * _anisotropic(cos_phi, config.anisotropy)
        push = push.masked_fill(no_pair, 0.0)
        force = force + torch.stack([(push * nx).sum(2), (push * ny).sum(2)], -1)

        rdiff = xy - robot_xy[:, None, :]
        rdist = rdiff.norm(dim=-1).clamp_min(1e-6)
        rnormal = rdiff / rdist[..., None]
        rgap = rdist - radius - robot_radius
        rel_speed = ((robot_vel[:, None, :] - vel) * -rnormal).sum(-1).clamp_min(0)  # robot closing in
        rpush = config.robot_strength * torch.exp(-rgap / (config.robot_range + 0.3 * rel_speed))
        rpush = rpush * _anisotropic(-(rnormal * heading).sum(-1), config.anisotropy)
        force = force + rpush[..., None] * rnormal

        wall, wall_normal = static_distance_and_normal(walkable, origin, resolution, xy, obstacles)
        wall_push = config.wall_strength * torch.exp(-(wall - radius).clamp_min(-1.0) / config.wall_range)
        force = force + wall_push[..., None] * wall_normal

        vel = vel + force * h
        vel = vel * (cap / vel.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
        vel = vel.masked_fill(~mask[..., None], 0.0)
        xy = xy + vel * h
    separated = _separate((solid, origin, resolution), obstacles, xy, radius, contact, no_pair, robot_xy, robot_radius, config.projection_passes)
    xy = torch.where(mask[..., None], separated, peds[..., 0:2])  # padding stays put
    return torch.cat([xy, vel, peds[..., 4:]], -1), toward_b


def _separate(solid_field: tuple, obstacles, xy, radius, contact, no_pair, robot_xy, robot_radius, passes: int) -> torch.Tensor:
    """Project overlapping discs apart: pedestrian pairs share the correction, the robot and solid
    geometry (walls, obstacles) do not move, so the pedestrian takes all of it."""
    for _ in range(passes):
        dx, dy, dist = _pairs(xy)
        half = 0.5 * (contact - dist).clamp_min(0).masked_fill(no_pair, 0.0)  # each of a pair takes half the overlap
        xy = xy + torch.stack([(half * dx / dist).sum(2), (half * dy / dist).sum(2)], -1)

        solid, solid_normal = static_distance_and_normal(*solid_field, xy, obstacles)
        xy = xy + (radius - solid).clamp_min(0)[..., None] * solid_normal

        rdiff = xy - robot_xy[:, None, :]
        rdist = rdiff.norm(dim=-1).clamp_min(1e-6)
        rpen = (radius + robot_radius - rdist).clamp_min(0)
        xy = xy + rpen[..., None] * rdiff / rdist[..., None]
    return xy
