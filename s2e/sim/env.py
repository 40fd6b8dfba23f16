"""``NavEnv``: the embedded simulator as a batched TorchRL environment.

One env object simulates N independent scenes in lock-step as tensors: robot unicycles with blocked
motion, a social-force crowd, contact events, route progress, the paper's reward terms and a
raycast camera. The policy decides every ``control_dt``; it sees the last k camera frames spaced
``frame_dt`` apart, exactly as the video datamodule cut its training clips, so the env renders at
every control step into a ring buffer and picks every (frame_dt / control_dt)-th frame from it.
A timing whose frame period is not a whole number of control periods is refused, because no
stacking of rendered frames could reproduce it.

``action_repeat`` > 1 holds each command for that many control periods and renders once per
decision (a semi-MDP step, Atari's frame skip): RL then decides, renders, encodes and stores one
transition per held command. With ``action_repeat = frame_dt / control_dt`` every rendered frame is
a context frame, so nothing is rendered that the policy never sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from s2e.frame_ring import FrameRing
from s2e.geometry import goal_encoding, to_robot_frame
from s2e.sim.compiled import PROCESS_POLICY, CompilePolicy
from s2e.sim.crowd import CrowdConfig, crowd_step
from s2e.sim.generator import SceneConfig, World
from s2e.sim.physics import ContactTracker, ObstacleSet, footprint_clearance, integrate_unicycle
from s2e.sim.render import Raycaster
from s2e.sim.rewards import TERMS, RewardConfig, reward_terms, route_arclength, total_reward
from s2e.sim.robots import RobotProfile, get_robot
from s2e.sim.scene_source import FrameRenderer, ProceduralScenes, SceneSource, TaskMixScenes
from s2e.sim.tasks import TaskSpec, get_tasks
from s2e.timing import TimingSpec


@dataclass(frozen=True)
class NavEnvConfig:
    """Everything that defines an environment instance (besides its batch size, device and seed).

    Attributes:
        task: "empty", "obstacle", "pedestrian" or "both", or a list of them: a mix, where every
            new scene draws its task from the list (``s2e.sim.tasks.get_tasks``).
        robot: "wheeled" or "quadruped" (or a ``RobotProfile``).
        timing: frame stacking and control period.
        image_size: (height, width) of rendered frames.
        domain: appearance domain name of the renderer ("sim", "recorded", ...).
        with_depth: also return stacked depth frames under "depth".
        arrival_radius: metres from the goal that count as arrival (success).
        physics_substeps: blocked-motion substeps per control step.
        time_limit_factor: episode time limit = factor * route length / max speed + time_limit_slack.
        time_limit_slack: seconds added to every time limit.
        action_repeat: control periods each command is held (one env step, one rendered frame);
            ``frame_dt`` must be a whole multiple of ``action_repeat * control_dt``. Rewards of the
            held periods add up; an episode that ends inside them stops there.
        end_on_contact: a training option: the first contact event ends the episode (``terminated``,
            so nothing is bootstrapped past it). Why: with blocked motion a contact nearly always
            pins the robot until the time limit (NavBench's Stuck metric), so without this most of
            an RL batch on obstacle tasks is frames of a pinned robot, and the decision that caused
            the contact is a long, discounted way from the return it lost. Benchmarks keep it off.
    """

    task: str | tuple[str, ...] = "both"
    robot: str | RobotProfile = "wheeled"
    timing: TimingSpec = field(default_factory=TimingSpec)
    image_size: tuple[int, int] = (96, 96)
    domain: str = "sim"
    with_depth: bool = False
    scene: SceneConfig = field(default_factory=SceneConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    crowd: CrowdConfig = field(default_factory=CrowdConfig)
    arrival_radius: float = 1.0
    physics_substeps: int = 4
    time_limit_factor: float = 2.0
    time_limit_slack: float = 10.0
    action_repeat: int = 1
    end_on_contact: bool = False


def decision_stride(timing: TimingSpec, action_repeat: int) -> int:
    """Env steps between stacked frames when each step holds its command ``action_repeat`` control
    periods; a clear error unless the frame period is a whole number of such steps."""
    if not isinstance(action_repeat, int) or action_repeat < 1:
        raise ValueError(f"action_repeat must be an int >= 1, got {action_repeat!r}")
    stride = timing.frame_stride
    if stride % action_repeat:
        raise ValueError(
            f"action_repeat={action_repeat} does not divide the {stride} control periods between context frames "
            f"(frame_dt {timing.frame_dt} s, control_dt {timing.control_dt} s): the stacked frames would fall between renders"
        )
    return stride // action_repeat


class NavEnv(EnvBase):
    """Batched point-goal navigation along sidewalks (see the module docstring).

    Output keys besides the TorchRL ones: ``frames`` uint8 [N, k, 3, H, W], ``goal`` [N, 3]
    (distance, cos, sin in the robot frame), optional ``depth`` [N, k, 1, H, W], ``collisions``
    [N, 1] (contact events this episode), ``route_completion`` [N, 1], ``success`` [N, 1] and
    ``("reward_terms", name)`` [N, 1] for every term of ``rewards.TERMS``; a task mix adds ``task``
    [N, 1], each env's index into ``tasks`` (training logs split episode outcomes by it).
    """

    def __init__(
        self,
        config: NavEnvConfig = NavEnvConfig(),
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        seed: int = 0,
        scenes: Optional[SceneSource] = None,
        renderer: Optional[FrameRenderer] = None,
    ) -> None:
        """``scenes`` and ``renderer`` default to procedural streets (``config.scene`` under the
        task's overrides) and the raycaster in ``config.domain``; see ``s2e.sim.scene_source``."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.config = config
        self.robot = get_robot(config.robot)
        self.tasks = get_tasks(config.task)
        self.mixed = mixed = len(self.tasks) > 1
        self.scene_config = (config.scene if mixed else self.tasks[0].apply(config.scene)).validate(self.robot)
        self.stride = decision_stride(config.timing, config.action_repeat)
        h, w = config.image_size
        if h < 8 or w < 8:
            raise ValueError(f"image_size must be at least 8x8, got {config.image_size}")
        if mixed and scenes is not None:
            raise ValueError("a task mix draws its own procedural scenes; give one task with a scene source")
        if scenes is None:
            scenes = TaskMixScenes(self.scene_config, self.robot, self.tasks) if mixed else ProceduralScenes(self.scene_config, self.robot)
        self.scenes = scenes
        self.renderer = renderer if renderer is not None else Raycaster(w, h, domain=config.domain, max_distance=config.scene.extent, device=self.device)
        self._make_specs(num_envs)
        self._render_generator = torch.Generator(device=self.device)
        self._set_seed(seed)
        self.world: Optional[World] = None

    @property
    def task(self) -> TaskSpec:
        """The env's one task; a clear error for a task mix, whose scenes each draw their own."""
        if self.mixed:
            raise ValueError(f"this env mixes tasks {[t.name for t in self.tasks]}; it has no single task")
        return self.tasks[0]

    # ------------------------------------------------------------------ specs
    def _make_specs(self, n: int) -> None:
        cfg, robot = self.config, self.robot
        k, (h, w) = cfg.timing.context_frames, cfg.image_size
        obs = {
            "frames": Bounded(0, 255, shape=(n, k, 3, h, w), dtype=torch.uint8, device=self.device),
            "goal": Unbounded(shape=(n, 3), dtype=torch.float32, device=self.device),
            "collisions": Unbounded(shape=(n, 1), dtype=torch.int64, device=self.device),
            "route_completion": Bounded(0.0, 1.0, shape=(n, 1), dtype=torch.float32, device=self.device),
            "success": Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device),  # arrived this episode
            "reward_terms": Composite({t: Unbounded(shape=(n, 1), device=self.device) for t in TERMS}, shape=(n,), device=self.device),
        }
        if self.mixed:
            obs["task"] = Categorical(len(self.tasks), shape=(n, 1), dtype=torch.int64, device=self.device)
        if cfg.with_depth:
            obs["depth"] = Unbounded(shape=(n, k, 1, h, w), dtype=torch.float32, device=self.device)
        self.observation_spec = Composite(obs, shape=(n,), device=self.device)
        low = torch.tensor([robot.min_speed, -robot.max_omega], device=self.device).expand(n, 2)
        high = torch.tensor([robot.max_speed, robot.max_omega], device=self.device).expand(n, 2)
        self.action_spec = Bounded(low.clone(), high.clone(), shape=(n, 2), dtype=torch.float32, device=self.device)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=self.device)
        flag = lambda: Categorical(2, shape=(n, 1), dtype=torch.bool, device=self.device)  # noqa: E731
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=(n,), device=self.device)
        self._action_range = (high[0] - low[0]).clamp_min(1e-6)

    def _set_seed(self, seed: Optional[int]) -> None:
        self._rng = np.random.default_rng(seed)
        self._render_generator.manual_seed(int(self._rng.integers(2**62)))

    # ------------------------------------------------------------------ state helpers
    def _new_scenes(self, count: int) -> World:
        return self.scenes.sample(count, self._rng, self.device)

    @property
    def compile_policy(self) -> CompilePolicy:
        """The policy that runs this env's compiled stages: its renderer's (or the process's, for
        renderers without one, e.g. the splat one); benchmarks report what it ran."""
        return getattr(self.renderer, "compile_policy", PROCESS_POLICY)

    def _compiling(self) -> bool:
        """Whether this step's dense work runs compiled: as the renderer decides for the whole batch
        (``Raycaster.compiles``); renderers without that notion (e.g. the splat one) mean eager."""
        compiles = getattr(self.renderer, "compiles", None)
        return bool(compiles(self.batch_size[0])) if compiles is not None else False

    def _render(self, idx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Frames (and depth) of the envs at ``idx`` (all by default).

        A partial reset renders the whole batch when the renderer compiles and keeps the rows it
        needs: compiled stages are specialised on the batch size, and every reset size would
        otherwise be a new compilation; eagerly, only the reset scenes are drawn."""
        whole = idx is None or self._compiling()
        scene = self.world.scene if whole else self.world.scene.index(idx)
        xy = self.robot_xy if whole else self.robot_xy[idx]
        yaw = self.robot_yaw if whole else self.robot_yaw[idx]
        camera = xy + self.robot.camera_forward * torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)
        rgb, depth = self.renderer.render(
            scene,
            camera,
            yaw,
            self.robot.camera_height,
            self.robot.hfov_deg,
            with_depth=self.config.with_depth,
            noise_generator=self._render_generator,
        )
        if whole and idx is not None:
            rgb, depth = rgb[idx], (None if depth is None else depth[idx])
        return rgb, depth

    def _observation(self) -> dict[str, torch.Tensor]:
        world = self.world
        goal_local = to_robot_frame(world.scene.goal[:, None], self.robot_xy, self.robot_yaw)[:, 0]
        obs = {
            "frames": self._frames.stacked(),
            "goal": goal_encoding(goal_local).float(),
            "collisions": self.contacts.count[:, None].clone(),
            "route_completion": self.route_completion[:, None],
            "success": self._success[:, None].clone(),
        }
        if self.mixed:
            obs["task"] = self._task_index[:, None].clone()
        if self.config.with_depth:
            obs["depth"] = self._depth.stacked()
        return obs

    # ------------------------------------------------------------------ TorchRL API
    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        n = self.batch_size[0]
        mask = tensordict.get("_reset", None) if tensordict is not None else None
        if self.world is None or mask is None:
            mask = torch.ones(n, dtype=torch.bool, device=self.device)
        mask = mask.reshape(n).to(self.device)
        idx = mask.nonzero()[:, 0]
        fresh = self._new_scenes(len(idx))
        if self.world is None:
            self._allocate(fresh)
        else:
            self.world.assign(idx, fresh)
        if self.mixed:
            self._task_index[idx] = torch.as_tensor(self.scenes.last_tasks, device=self.device)
        route = self.world.scene.route[idx]
        start_dir = route[:, 1] - route[:, 0]
        self.robot_xy[idx] = route[:, 0]
        self.robot_yaw[idx] = torch.atan2(start_dir[:, 1], start_dir[:, 0])
        self._prev_action[idx] = 0.0
        self._steps[idx] = 0
        self._best_arc[idx] = 0.0
        self._success[idx] = False
        self.contacts.reset(idx)
        self._obstacles = ObstacleSet.of(self.world.scene.obstacles, self.world.scene.obstacle_mask)  # static until the next reset
        limit = self.config.time_limit_factor * self.world.route_total[idx] / self.robot.max_speed + self.config.time_limit_slack
        self._step_limit[idx] = torch.ceil(limit / self.config.timing.control_dt).long()
        rgb, depth = self._render(idx)
        self._frames.restart(idx, rgb)
        if depth is not None:
            self._depth.restart(idx, depth)
        out = self._observation()
        out["reward_terms"] = {t: torch.zeros(n, 1, device=self.device) for t in TERMS}
        zeros = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        out.update(done=zeros, terminated=zeros.clone(), truncated=zeros.clone())
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _allocate(self, world: World) -> None:
        n, dev = self.batch_size[0], self.device
        k, (h, w) = self.config.timing.context_frames, self.config.image_size
        self.world = world
        self.robot_xy = torch.zeros(n, 2, device=dev)
        self.robot_yaw = torch.zeros(n, device=dev)
        self._prev_action = torch.zeros(n, 2, device=dev)
        self._steps = torch.zeros(n, dtype=torch.long, device=dev)
        self._step_limit = torch.zeros(n, dtype=torch.long, device=dev)
        self._best_arc = torch.zeros(n, device=dev)
        self._success = torch.zeros(n, dtype=torch.bool, device=dev)
        self._task_index = torch.zeros(n, dtype=torch.long, device=dev)
        self.contacts = ContactTracker(n, dev)
        self._frames = FrameRing(n, k, self.stride, (3, h, w), torch.uint8, dev)
        self._depth = FrameRing(n, k, self.stride, (1, h, w), torch.float32, dev) if self.config.with_depth else None

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        spec = self.action_spec
        action = torch.maximum(torch.minimum(tensordict.get("action").to(self.device).float(), spec.space.high), spec.space.low)
        reward, terms = self._hold(action)
        ended = self._ended()
        terminated = self._success | self._contact_ended()
        truncated = ended & ~terminated

        rgb, depth = self._render()
        self._frames.push(rgb)
        if depth is not None:
            self._depth.push(depth)

        out = self._observation()
        out["reward_terms"] = {t: v[:, None].float() for t, v in terms.items()}
        out.update(
            reward=reward[:, None].float(),
            terminated=terminated[:, None],
            truncated=truncated[:, None],
            done=ended[:, None],
        )
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _hold(self, action: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply ``action`` for ``action_repeat`` control periods: (summed reward, summed terms) [N].

        An env whose episode ends (arrival or time limit) inside the held periods keeps its state
        and earns nothing for the remaining ones, so the transition ends where the episode did."""
        repeat = self.config.action_repeat
        reward, terms = self._control_period(action)
        for _ in range(repeat - 1):
            running = ~self._ended()
            state = (self.robot_xy, self.robot_yaw, self._best_arc, self._steps)
            more_reward, more_terms = self._control_period(action, running)
            self.robot_xy, self.robot_yaw, self._best_arc, self._steps = (
                torch.where(running[:, None] if old.dim() == 2 else running, new, old)
                for old, new in zip(state, (self.robot_xy, self.robot_yaw, self._best_arc, self._steps))
            )
            reward = reward + torch.where(running, more_reward, 0.0)
            terms = {t: v + torch.where(running, more_terms[t], 0.0) for t, v in terms.items()}
        return reward, terms

    def _contact_ended(self) -> torch.Tensor:
        """Envs [N] whose episode a contact ended (never unless ``end_on_contact``)."""
        return (self.contacts.count > 0) & self.config.end_on_contact

    def _ended(self) -> torch.Tensor:
        """Envs [N] whose episode is over: arrived, out of time, or (``end_on_contact``) touched something."""
        return self._success | (self._steps >= self._step_limit) | self._contact_ended()

    def _control_period(self, action: torch.Tensor, running: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One control period of physics, crowd, contacts, progress and rewards (no rendering).
        ``running`` [N] (default all): envs whose contacts may count in this period."""
        cfg, robot, world = self.config, self.robot, self.world
        dt = cfg.timing.control_dt
        old_xy = self.robot_xy
        obstacles = self._obstacles
        xy, yaw, blocked = integrate_unicycle(world, old_xy, self.robot_yaw, action[:, 0], action[:, 1], dt, cfg.physics_substeps, robot.radius, obstacles)
        self.robot_xy, self.robot_yaw = xy, yaw
        crowd_step(world, xy, (xy - old_xy) / dt, robot.radius, dt, cfg.crowd, obstacles, self._compiling(), self.compile_policy)
        clearance = footprint_clearance(world, xy[:, None], robot.radius, obstacles=obstacles).total[:, 0]
        if running is not None:
            blocked, clearance = blocked & running, torch.where(running, clearance, torch.inf)
        new_collision = self.contacts.update(blocked, clearance)

        arc = route_arclength(world.scene.route, world.route_cumlen, xy)
        progress = (arc - self._best_arc).clamp_min(0)
        self._best_arc = torch.maximum(self._best_arc, arc)
        arrived = ((world.scene.goal - xy).norm(dim=-1) <= cfg.arrival_radius) & ~self._success
        if running is not None:
            arrived = arrived & running
        self._success = self._success | arrived
        self._steps = self._steps + 1

        terms = reward_terms(world, xy, robot.radius, progress, arrived, new_collision, action, self._prev_action, self._action_range, cfg.rewards)
        self._prev_action = action
        return total_reward(terms, cfg.rewards), terms

    @property
    def route_completion(self) -> torch.Tensor:
        """Fraction [N] of the route covered this episode (1 once arrived within the arrival radius)."""
        covered = (self._best_arc / self.world.route_total.clamp_min(1e-6)).clamp(0, 1)
        return torch.where(self._success, torch.ones_like(covered), covered)

    @property
    def time(self) -> torch.Tensor:
        """Seconds since each env's episode started [N]."""
        return self._steps.float() * self.config.timing.control_dt
