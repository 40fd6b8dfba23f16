"""What drives the robot in a NavBench episode: trained policies and the three baselines.

Every agent maps the env's observation (and, for the privileged expert only, the env's true state)
to (v, omega) commands for the whole batch. Learned policies are evaluated deterministically: the
highest-scoring mode of the mixture, turned into a command by the same pure-pursuit controller
the robot runtime uses (``s2e.control``), with the robot's own speed and yaw-rate limits.

Baselines:
* ``expert``: the privileged arc-sampling planner (true layout and pedestrians): an upper bound.
* ``straight``: drives straight at the goal point (what a policy that ignores the camera does).
* ``random``: uniform random commands within the robot's limits (seeded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import torch
from tensordict import TensorDictBase
from torch import Tensor

from s2e.control import ControllerLimits, command_from_limits
from s2e.export import TS_FILE, quiet_export_warnings, read_export_metadata
from s2e.model.policy import best_trajectory_metres
from s2e.pretrain import load_policy_from_checkpoint
from s2e.sim.env import NavEnv
from s2e.sim.expert import ExpertPlanner
from s2e.sim.rollout import expert_controller
from s2e.timing import TimingSpec

BASELINES = ("expert", "straight", "random")


class Agent(Protocol):
    """``act`` returns commands [N, 2]; ``timing`` / ``image_size`` are None when the agent accepts any."""

    name: str
    timing: Optional[TimingSpec]
    image_size: Optional[tuple[int, int]]

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        ...


def robot_limits(env: NavEnv, lookahead_time: float) -> ControllerLimits:
    """Controller limits equal to the env robot's command limits, so no command is clipped by the env."""
    return ControllerLimits(max_speed=env.robot.max_speed, max_yaw_rate=env.robot.max_omega, lookahead_time=lookahead_time)


def goal_xy(goal: Tensor) -> Tensor:
    """(distance, cos, sin) [N, 3] -> goal (x, y) [N, 2] metres in the robot frame."""
    return goal[:, :1] * goal[:, 1:3]


class ExpertAgent:
    """The privileged expert planner (``s2e.sim.expert``), unstyled and noise-free."""

    name = "expert"
    timing = None
    image_size = None

    def __init__(self) -> None:
        self._controllers: dict[str, object] = {}

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        if env.robot.name not in self._controllers:
            self._controllers[env.robot.name] = expert_controller(ExpertPlanner(env.robot))
        return self._controllers[env.robot.name](env)


class StraightToGoalAgent:
    """A plan straight at the goal at top speed (stopping at it), through the shared controller."""

    name = "straight"
    timing = None
    image_size = None

    def __init__(self, lookahead_time: float = ControllerLimits().lookahead_time) -> None:
        self.lookahead_time = lookahead_time

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        timing = env.config.timing
        goal = obs["goal"].float()
        direction = goal[:, 1:3]
        reach = torch.arange(1, timing.num_waypoints + 1, device=goal.device) * timing.waypoint_dt * env.robot.max_speed
        along = torch.minimum(reach[None], goal[:, :1])  # [N, T] metres, never past the goal
        waypoints = along[..., None] * direction[:, None]
        return command_from_limits(waypoints, timing.waypoint_dt, robot_limits(env, self.lookahead_time))


class RandomAgent:
    """Uniform commands within the robot's limits from its own seeded generator."""

    name = "random"
    timing = None
    image_size = None

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        low, high = env.action_spec.space.low, env.action_spec.space.high
        u = torch.rand(low.shape, generator=self.generator).to(low.device)
        return low + (high - low) * u


class PolicyAgent:
    """An ``S2EPolicy`` (any checkpoint ``s2e.pretrain.load_policy_from_checkpoint`` reads): best mode
    in metres -> pure pursuit with the robot's limits."""

    def __init__(self, policy: torch.nn.Module, timing: TimingSpec, name: str, lookahead_time: float = ControllerLimits().lookahead_time) -> None:
        self.policy = policy.eval()
        self.timing = timing
        self.image_size = tuple(policy.config.image_size)
        self.name = name
        self.lookahead_time = lookahead_time

    @classmethod
    def from_checkpoint(cls, path: str | Path, lookahead_time: float = ControllerLimits().lookahead_time) -> "PolicyAgent":
        policy, timing, _ = load_policy_from_checkpoint(path)
        return cls(policy, timing, Path(path).stem, lookahead_time)

    def to(self, device: torch.device) -> "PolicyAgent":
        self.policy.to(device)
        return self

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        with torch.no_grad():
            out = self.policy(obs["frames"], obs["goal"].float())
            return command_from_limits(best_trajectory_metres(out), self.timing.waypoint_dt, robot_limits(env, self.lookahead_time))


class TorchScriptAgent:
    """An export folder (``python -m s2e export``): ``policy.ts`` full-window forward, its own controller."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta = read_export_metadata(folder)
        with quiet_export_warnings():
            self.module = torch.jit.load(str(folder / TS_FILE), map_location="cpu").eval()
        self.timing = TimingSpec.from_dict(meta["timing"])
        self.image_size = tuple(int(s) for s in meta["image_size"])
        self.name = folder.name

    def to(self, device: torch.device) -> "TorchScriptAgent":
        self.module.to(device)
        return self

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        with torch.no_grad():
            return self.module(obs["frames"], goal_xy(obs["goal"].float()))[3]


def build_agent(kind: str, policy_path: Optional[str] = None, seed: int = 0, lookahead_time: float = ControllerLimits().lookahead_time) -> Agent:
    """``kind`` is ``policy`` (``policy_path``: a .ckpt file or an export folder) or a baseline name."""
    if kind == "expert":
        return ExpertAgent()
    if kind == "straight":
        return StraightToGoalAgent(lookahead_time)
    if kind == "random":
        return RandomAgent(seed)
    if kind != "policy":
        raise ValueError(f"unknown agent {kind!r}; known agents: {['policy', *BASELINES]}")
    if policy_path is None:
        raise ValueError("agent 'policy' needs a checkpoint (--ckpt_path CKPT) or model.init_args.policy_path (a .ckpt or an export folder)")
    path = Path(policy_path)
    if path.is_dir():
        return TorchScriptAgent(path)
    return PolicyAgent.from_checkpoint(path, lookahead_time)


def check_agent_fits(agent: Agent, timing: TimingSpec, suite_name: str) -> None:
    """A policy trained under another TimingSpec than the suite's is refused (TimingMismatchError)."""
    if agent.timing is not None:
        agent.timing.check_compatible(timing, this=f"policy {agent.name!r}", that=f"suite {suite_name!r}")
    if agent.image_size is not None and min(agent.image_size) < 8:
        raise ValueError(f"policy {agent.name!r} takes {agent.image_size} images; the renderer needs at least 8x8")
