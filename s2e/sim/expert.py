"""A privileged expert: a sampling-based local planner that follows the route around obstacles and people.

It reads the true layout, obstacles and pedestrian velocities (no camera), rolls a fan of constant
(v, omega) arcs forward for a short horizon, with pedestrians extrapolated at constant velocity,
and picks the cheapest arc: close to a carrot point ahead on the route, far from anything solid,
on the sidewalk, out of people's comfort zone. Arcs that touch anything are ruled out. All of it is
batched as [B, arcs, horizon] tensors. It drives demo data, bounds the benchmark from above and
labels supervised fine-tuning; ``side_bias`` and ``speed_scale`` make its demonstrations
multi-modal (passing on either side, walking or hurrying).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2e.sim.physics import footprint_clearance, pedestrian_distance, sample_field
from s2e.sim.rewards import route_arclength
from s2e.sim.robots import RobotProfile


@dataclass(frozen=True)
class ExpertConfig:
    horizon: float = 2.5  # seconds rolled forward
    steps: int = 10  # samples along each arc
    speeds: int = 5  # speed levels from 0 to the limit
    turns: int = 15  # yaw-rate levels across the limits
    lookahead: float = 4.0  # metres ahead on the route for the carrot
    safety: float = 0.1  # metres of clearance below which an arc counts as a collision
    clearance_weight: float = 1.5
    clearance_range: float = 0.35
    edge_weight: float = 1.0
    social_weight: float = 2.0
    comfort: float = 0.8


@dataclass
class ExpertPlan:
    """The chosen command [B, 2] (v, omega) and its planned path [B, steps, 2] in world metres."""

    action: torch.Tensor
    waypoints: torch.Tensor


class ExpertPlanner:
    """Vectorized arc-sampling planner over a batch of worlds for one robot profile."""

    def __init__(self, robot: RobotProfile, config: ExpertConfig = ExpertConfig()) -> None:
        self.robot, self.config = robot, config
        v = torch.linspace(0.0, 1.0, config.speeds)
        w = torch.linspace(-1.0, 1.0, config.turns)
        self._unit_v, self._unit_w = (g.reshape(-1) for g in torch.meshgrid(v, w, indexing="ij"))

    def plan(self, world, xy: torch.Tensor, yaw: torch.Tensor, speed_scale: torch.Tensor | None = None, side_bias: torch.Tensor | None = None) -> ExpertPlan:
        """Plan for robots at xy [B, 2], yaw [B]; ``speed_scale`` [B] in (0, 1], ``side_bias`` [B] in
        metres (positive prefers passing with the route on the right, i.e. keeping left)."""
        cfg, robot, scene = self.config, self.robot, world.scene
        b, device = xy.shape[0], xy.device
        scale = torch.ones(b, device=device) if speed_scale is None else speed_scale
        v = self._unit_v.to(device)[None] * robot.max_speed * scale[:, None]  # [B, A]
        w = self._unit_w.to(device)[None].expand(b, -1) * robot.max_omega
        dt = cfg.horizon / cfg.steps
        t = torch.arange(1, cfg.steps + 1, device=device) * dt  # [T]
        heading = yaw[:, None, None] + w[..., None] * t  # [B, A, T]
        straight = w.abs()[..., None] < 1e-4
        safe_w = torch.where(straight, torch.ones_like(w[..., None]), w[..., None])
        dx = torch.where(
            straight, v[..., None] * t * torch.cos(yaw)[:, None, None], v[..., None] / safe_w * (torch.sin(heading) - torch.sin(yaw)[:, None, None])
        )
        dy = torch.where(
            straight, v[..., None] * t * torch.sin(yaw)[:, None, None], -v[..., None] / safe_w * (torch.cos(heading) - torch.cos(yaw)[:, None, None])
        )
        path = xy[:, None, None] + torch.stack([dx, dy], -1)  # [B, A, T, 2]
        a, steps = path.shape[1], path.shape[2]
        flat = path.reshape(b, a * steps, 2)

        static = footprint_clearance(world, flat, robot.radius, with_pedestrians=False)
        clear = torch.minimum(static.wall, static.obstacle).reshape(b, a, steps)
        if scene.pedestrians.shape[1]:
            peds = scene.pedestrians
            future = peds[:, None, :, 0:2] + peds[:, None, :, 2:4] * t[None, :, None, None]  # [B, T, P, 2]
            gap = (path[:, :, :, None, :] - future[:, None]).norm(dim=-1) - peds[:, None, None, :, 4] - robot.radius
            gap = gap.masked_fill(~scene.pedestrian_mask[:, None, None, :], 1e4).min(-1).values
            now = pedestrian_distance(peds, scene.pedestrian_mask, xy[:, None])[:, 0].min(-1).values - robot.radius
        else:
            gap = torch.full_like(clear, 1e4)
            now = torch.full((b,), 1e4, device=device)
        clear_now = torch.minimum(footprint_clearance(world, xy[:, None], robot.radius, with_pedestrians=False).total[:, 0], now)
        nearest = torch.minimum(clear, gap)
        # An arc collides if it comes closer than the safety margin, unless it is backing out of a contact.
        hits = (nearest < cfg.safety) & (nearest < clear_now[:, None, None])
        first_hit = torch.where(hits, torch.arange(steps, device=device).expand_as(hits), steps).min(-1).values
        collision_cost = (steps - first_hit).float() * 100.0

        s_now = route_arclength(scene.route, world.route_cumlen, xy)
        carrot_s = (s_now + cfg.lookahead).clamp(max=world.route_total)
        carrot = _point_at(scene.route, world.route_cumlen, carrot_s)
        end = path[:, :, -1]
        goal_cost = (end - carrot[:, None]).norm(dim=-1)
        if side_bias is not None:
            tangent = carrot - _point_at(scene.route, world.route_cumlen, (carrot_s - 0.5).clamp_min(0))
            tangent = tangent / tangent.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            normal = torch.stack([-tangent[:, 1], tangent[:, 0]], -1)
            lateral = ((path.mean(2) - xy[:, None]) * normal[:, None]).sum(-1)
            goal_cost = goal_cost - 0.3 * side_bias[:, None] * lateral.clamp(-1.5, 1.5)
        edge = sample_field(scene.distance, scene.origin, scene.resolution, flat).reshape(b, a, steps)
        edge_cost = ((0.6 * world.half_width[:, None, None] - edge).clamp_min(0) / world.half_width[:, None, None]).mean(-1)
        clear_cost = torch.exp(-clear.clamp_min(0) / cfg.clearance_range).mean(-1)
        social_cost = ((cfg.comfort - gap).clamp_min(0) / cfg.comfort).mean(-1)
        cost = goal_cost + collision_cost + cfg.clearance_weight * clear_cost + cfg.edge_weight * edge_cost + cfg.social_weight * social_cost
        best = cost.argmin(-1)
        idx = torch.arange(b, device=device)
        action = torch.stack([v[idx, best], w[idx, best]], -1)
        # Slow down into the goal rather than overshooting it by a lot.
        to_goal = (scene.goal - xy).norm(dim=-1)
        action[:, 0] = torch.minimum(action[:, 0], (to_goal + 0.3).clamp_min(0.3))
        return ExpertPlan(action=action, waypoints=path[idx, best])


def _point_at(route: torch.Tensor, cumlen: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Point [B, 2] at arc length s [B] on each route polyline [B, R, 2]."""
    seg = (torch.searchsorted(cumlen.contiguous(), s[:, None].contiguous(), right=True) - 1).clamp(0, route.shape[1] - 2)
    a = route.gather(1, seg[..., None].expand(-1, -1, 2))[:, 0]
    b = route.gather(1, (seg + 1)[..., None].expand(-1, -1, 2))[:, 0]
    s0 = cumlen.gather(1, seg)[:, 0]
    s1 = cumlen.gather(1, seg + 1)[:, 0]
    frac = ((s - s0) / (s1 - s0).clamp_min(1e-6)).clamp(0, 1)
    return a + frac[:, None] * (b - a)
