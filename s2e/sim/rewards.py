"""Reward terms of the paper (R = R_G + R_R + R_H), each kept separate so training can log them.

Goal terms (R_G): dense route progress, sparse arrival, a collision penalty per contact event.
Rule terms (R_R): keep to the sidewalk centre (from the walkable distance field) and keep a comfort
distance to pedestrians. Human-likeness (R_H): smooth commands (small change between steps).
Every term is a signed per-env quantity with a natural unit (metres, events, ...); the weights live
in ``RewardConfig`` so ablations change numbers in a config, not code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from s2e.sim.physics import pedestrian_distance, sample_field

TERMS = ("progress", "arrival", "collision", "centering", "social", "smoothness")


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms (``reward = sum(weight * term)``) and the shaping constants."""

    progress: float = 1.0  # per metre of new route progress
    arrival: float = 10.0  # once, on reaching the goal
    collision: float = 3.0  # per new contact event
    centering: float = 0.05  # per step at the sidewalk edge (0 at >= half-width from it)
    social: float = 0.2  # per step with a pedestrian at zero distance (0 beyond the comfort distance)
    smoothness: float = 0.05  # per step of a full-range command change
    comfort_distance: float = 1.0  # metres between footprint and pedestrian edges

    def weights(self) -> dict[str, float]:
        values = asdict(self)
        return {name: values[name] for name in TERMS}


def route_arclength(route: torch.Tensor, cumlen: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Arc length [B] of the closest point to xy [B, 2] on each route polyline [B, R, 2].

    Padded vertices repeat the goal, so their zero-length segments project onto the goal itself.
    """
    a, b = route[:, :-1], route[:, 1:]
    seg = b - a
    length2 = (seg**2).sum(-1).clamp_min(1e-9)
    t = (((xy[:, None] - a) * seg).sum(-1) / length2).clamp(0, 1)
    closest = a + t[..., None] * seg
    dist = (closest - xy[:, None]).norm(dim=-1)
    best = dist.argmin(-1, keepdim=True)
    arc = cumlen[:, :-1] + t * length2.sqrt()
    return arc.gather(1, best)[:, 0]


def reward_terms(
    world,
    xy: torch.Tensor,
    radius: float,
    progress: torch.Tensor,
    arrived: torch.Tensor,
    new_collision: torch.Tensor,
    action: torch.Tensor,
    prev_action: torch.Tensor,
    action_range: torch.Tensor,
    config: RewardConfig,
) -> dict[str, torch.Tensor]:
    """Each term [B] for robots at xy [B, 2] after a step (see the module docstring for signs)."""
    scene = world.scene
    edge = sample_field(scene.distance, scene.origin, scene.resolution, xy[:, None])[:, 0]
    centering = -(1 - edge / world.half_width).clamp(0, 2)
    if scene.pedestrians.shape[1]:
        gap = pedestrian_distance(scene.pedestrians, scene.pedestrian_mask, xy[:, None])[:, 0] - radius
        social = -((config.comfort_distance - gap) / config.comfort_distance).clamp(0, 1).sum(-1)
    else:
        social = torch.zeros_like(edge)
    change = (action - prev_action) / action_range
    return {
        "progress": progress,
        "arrival": arrived.float(),
        "collision": -new_collision.float(),
        "centering": centering,
        "social": social,
        "smoothness": -(change**2).sum(-1),
    }


def total_reward(terms: dict[str, torch.Tensor], config: RewardConfig) -> torch.Tensor:
    return sum(w * terms[name] for name, w in config.weights().items())
