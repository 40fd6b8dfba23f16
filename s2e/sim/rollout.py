"""Batched episode rollouts of a controller in ``NavEnv``, recorded per env until each one finishes.

Demo-data generation, expert evaluation and the preview tool all need "run one episode in every env
of a batch and keep what happened", with episodes of different lengths; this module does that once.
An env that finishes is frozen in the record (later steps are ignored) while the others run on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tensordict import TensorDictBase

from s2e.sim.env import NavEnv
from s2e.sim.expert import ExpertPlan, ExpertPlanner
from s2e.sim.physics import footprint_clearance

Controller = Callable[[NavEnv], torch.Tensor]


@dataclass
class EpisodeRecord:
    """One finished episode: poses and frames at every control step (t = 0 is the reset frame)."""

    t: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    success: bool
    route_completion: float
    collisions: int
    style_seed: int
    frames: Optional[np.ndarray] = None  # [T, H, W, 3] uint8
    pedestrians: list[np.ndarray] = field(default_factory=list)  # per step [P, 6] real rows (if asked)


def run_episodes(
    env: NavEnv,
    controller: Controller,
    record_frames: bool = True,
    record_pedestrians: bool = False,
    observe: Optional[Callable[[TensorDictBase], None]] = None,
) -> list[EpisodeRecord]:
    """Reset every env, step ``controller`` until all episodes are done, return one record per env.
    ``observe`` sees every observation before the controller acts on it (a learned policy's input)."""
    td = env.reset()
    n = env.batch_size[0]
    dt = env.config.timing.control_dt
    live = torch.ones(n, dtype=torch.bool)
    xy, yaw, frames, peds = [env.robot_xy.cpu().clone()], [env.robot_yaw.cpu().clone()], [], []
    steps = torch.zeros(n, dtype=torch.long)
    final = {}
    style = env.world.scene.style_seed.cpu().clone()

    def snapshot(obs) -> None:
        if record_frames:
            frames.append(obs["frames"][:, -1].permute(0, 2, 3, 1).cpu().numpy())
        if record_pedestrians:
            peds.append((env.world.scene.pedestrians.cpu().clone(), env.world.scene.pedestrian_mask.cpu().clone()))

    snapshot(td)
    while live.any():
        if observe is not None:
            observe(td)
        action = controller(env)
        td = env.step(td.set("action", action)).get("next")
        xy.append(env.robot_xy.cpu().clone())
        yaw.append(env.robot_yaw.cpu().clone())
        snapshot(td)
        steps += live.long()
        done = td["done"][:, 0].cpu() & live
        for i in done.nonzero()[:, 0].tolist():
            final[i] = (bool(td["success"][i, 0]), float(td["route_completion"][i, 0]), int(td["collisions"][i, 0]))
        live &= ~done
    xy_all, yaw_all = torch.stack(xy).numpy(), torch.stack(yaw).numpy()
    records = []
    for i in range(n):
        length = int(steps[i]) + 1
        path = xy_all[:length, i].astype(np.float64)
        speed = np.concatenate([[0.0], np.linalg.norm(np.diff(path, axis=0), axis=1) / dt])
        records.append(
            EpisodeRecord(
                t=np.arange(length) * dt,
                xy=path,
                yaw=yaw_all[:length, i].astype(np.float64),
                speed=speed,
                success=final[i][0],
                route_completion=final[i][1],
                collisions=final[i][2],
                style_seed=int(style[i]),
                frames=np.stack([f[i] for f in frames[:length]]) if record_frames else None,
                pedestrians=[p[i][m[i]].numpy() for p, m in peds[:length]] if record_pedestrians else [],
            )
        )
    return records


@dataclass
class ExpertStyle:
    """Per-env variation of the expert for multi-modal demonstrations.

    Attributes:
        speed_scale: [N] fraction of the robot's top speed the expert allows itself.
        side_bias: [N] metres; the sign picks which side obstacles are passed on.
        noise_std: (v, omega) std of Gaussian action noise, as fractions of the limits.
        drift_std: (v, omega) stationary std of a slowly varying (Ornstein-Uhlenbeck) action
            offset, as fractions of the limits. Per-step white noise averages out within a few
            steps, so demonstrations never leave the expert's own path; a drift lasting about
            ``drift_tau`` seconds pushes the robot off it (towards a wall, into an obstacle's
            way) and the expert's correction is in the recording (the idea of DART, Laskey et al.
            2017). Measured once (README "The learned policy"): adding 512 drifted episodes to 384
            clean ones made the pretrained policy worse, so demo data does not use it.
        drift_tau: correlation time of the drift, seconds.
    """

    speed_scale: torch.Tensor
    side_bias: torch.Tensor
    noise_std: tuple[float, float] = (0.0, 0.0)
    drift_std: tuple[float, float] = (0.0, 0.0)
    drift_tau: float = 1.0

    @classmethod
    def sample(
        cls,
        n: int,
        generator: torch.Generator,
        noise_std: tuple[float, float] = (0.05, 0.1),
        drift_std: tuple[float, float] = (0.0, 0.0),
        drift_tau: float = 1.0,
    ) -> "ExpertStyle":
        scale = 0.6 + 0.4 * torch.rand(n, generator=generator)
        side = (torch.rand(n, generator=generator) * 2 - 1) * 1.5
        return cls(scale, side, noise_std, drift_std, drift_tau)


def expert_controller(
    planner: ExpertPlanner, style: Optional[ExpertStyle] = None, generator: Optional[torch.Generator] = None, plans: Optional[list[ExpertPlan]] = None
) -> Controller:
    """A controller that asks ``planner`` for every env (optionally styled, noised and drifted);
    ``plans`` collects each step's plan (waypoints included) when given."""
    drift: Optional[torch.Tensor] = None  # the Ornstein-Uhlenbeck offset [N, 2], in command units

    def control(env: NavEnv) -> torch.Tensor:
        nonlocal drift
        if style is None:
            plan = planner.plan(env.world, env.robot_xy, env.robot_yaw)
        else:
            plan = planner.plan(env.world, env.robot_xy, env.robot_yaw, style.speed_scale.to(env.device), style.side_bias.to(env.device))
        if plans is not None:
            plans.append(plan)
        action = plan.action
        if style is None:
            return action
        limits = torch.tensor([planner.robot.max_speed, planner.robot.max_omega])
        if any(style.noise_std):
            noise = torch.randn(action.shape, generator=generator) * torch.tensor(style.noise_std) * limits
            action = action + noise.to(action.device)
        if any(style.drift_std):
            keep = math.exp(-env.config.timing.control_dt / style.drift_tau)
            spread = torch.tensor(style.drift_std) * limits
            fresh = torch.randn(action.shape, generator=generator) * spread
            drift = fresh if drift is None else keep * drift + math.sqrt(1.0 - keep**2) * fresh
            action = action + drift.to(action.device)
        return action

    return control


class TakeoverController:
    """A learner drives, and the demonstrator takes over: intervention data for DAgger-style training.

    Each env alternates between the learner (``learner_s`` seconds, drawn uniformly) and the
    demonstrator (``horizon_s`` plus ``expert_s`` seconds, so every takeover leaves at least one
    fully demonstrated future of the policy's horizon). Both controllers are asked every step, so
    the demonstrator's own state (drift, plans) stays continuous. ``demonstrated`` collects, per
    step, which envs the demonstrator drove: a learned policy reaches states no clean
    demonstration visits (too close to an obstacle, pointed at a wall), and the demonstrator's
    recovery from them is the label that teaches the way out.

    With ``takeover_clearance`` (metres, a range drawn per learner turn) the demonstrator also takes
    over the moment the learner's footprint comes closer than that to anything solid or a person, as
    a safety driver would (human-gated DAgger): a learner that drives for long stretches then
    produces labels exactly where it fails (0 means only once it touches), not at random points.
    """

    def __init__(
        self,
        learner: Controller,
        expert: Controller,
        num_envs: int,
        control_dt: float,
        generator: torch.Generator,
        learner_s: tuple[float, float] = (1.0, 4.0),
        expert_s: tuple[float, float] = (1.0, 4.0),
        horizon_s: float = 3.0,
        takeover_clearance: Optional[tuple[float, float]] = None,
    ) -> None:
        if takeover_clearance is not None and not 0.0 <= takeover_clearance[0] <= takeover_clearance[1]:
            raise ValueError(f"takeover_clearance must be (min, max) metres with 0 <= min <= max, got {takeover_clearance}")
        self.learner, self.expert = learner, expert
        self.control_dt, self.generator = control_dt, generator
        self.learner_s, self.expert_s, self.horizon_s = learner_s, expert_s, horizon_s
        self.takeover_clearance = takeover_clearance
        self.learner_drives = torch.rand(num_envs, generator=generator) < 0.5
        self.steps_left = self._draw(self.learner_drives)
        self.gate = self._draw_gate(num_envs)
        self.gated_takeovers = 0
        self.demonstrated: list[torch.Tensor] = []

    def _draw_gate(self, num_envs: int) -> torch.Tensor:
        """Per env, the clearance (metres) below which the demonstrator takes over (-inf: never)."""
        if self.takeover_clearance is None:
            return torch.full((num_envs,), -math.inf)
        lo, hi = self.takeover_clearance
        return lo + torch.rand(num_envs, generator=self.generator) * (hi - lo)

    def _draw(self, learner: torch.Tensor) -> torch.Tensor:
        u = torch.rand(learner.shape, generator=self.generator)
        lo = torch.where(learner, self.learner_s[0], self.horizon_s + self.expert_s[0])
        hi = torch.where(learner, self.learner_s[1], self.horizon_s + self.expert_s[1])
        return torch.ceil((lo + u * (hi - lo)) / self.control_dt).long()

    def __call__(self, env: NavEnv) -> torch.Tensor:
        expert = self.expert(env)
        learner = self.learner(env)
        if self.takeover_clearance is not None:
            clearance = footprint_clearance(env.world, env.robot_xy[:, None], env.robot.radius).total[:, 0].cpu()
            # Blocked motion stops a robot a hair short of what it pushes into (clearance stays a few
            # mm above 0), so a touch is the env's contact state, not a clearance of exactly 0.
            danger = self.learner_drives & ((clearance <= self.gate) | env.contacts.in_contact.cpu())
            if danger.any():
                self.gated_takeovers += int(danger.sum())
                self.learner_drives = self.learner_drives & ~danger
                self.steps_left = torch.where(danger, self._draw(self.learner_drives), self.steps_left)
                self.gate = torch.where(danger, self._draw_gate(len(danger)), self.gate)
        drives = self.learner_drives.to(expert.device)
        self.demonstrated.append(~self.learner_drives.clone())
        self.steps_left -= 1
        switch = self.steps_left <= 0
        self.learner_drives = torch.where(switch, ~self.learner_drives, self.learner_drives)
        self.steps_left = torch.where(switch, self._draw(self.learner_drives), self.steps_left)
        return torch.where(drives[:, None], learner.to(expert.device), expert)

    def demonstrated_poses(self, env_index: int, length: int) -> np.ndarray:
        """[length] bool per pose of one recorded episode: the demonstrator chose the command that
        left it (the final pose, which no command leaves, counts as demonstrated)."""
        steps = [bool(flags[env_index]) for flags in self.demonstrated[: length - 1]]
        return np.array(steps + [True] * (length - len(steps)), dtype=bool)
