"""Isaac Lab navigation tasks (the URBAN-SIM family) behind s2e's observation and action keys.

TorchRL's ``IsaacLabWrapper`` turns a registered Isaac Lab task into a TorchRL env with the task's
own keys: a ``"policy"`` observation vector (for navigation tasks it holds the goal command in the
robot frame), camera pixels [N, H, W, C] from a tiled camera, and an action vector of velocity
commands. ``IsaacNavAdapter`` maps that onto what s2e policies are trained on, exactly as
``NavEnv`` provides it: ``frames`` uint8 [N, k, 3, H, W] stacked every ``frame_dt``, ``goal``
(distance, cos, sin) and a (v, omega) action, with the task's control period checked against the
``TimingSpec`` (a mismatch is an error, never a silent resample). Which slots of the task's vectors
hold the goal and the commands is the ``IsaacNavMapping``; the defaults fit Isaac Lab's
``Isaac-Navigation-Flat-Anymal-C`` layout.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Optional

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from s2e.frame_ring import FrameRing
from s2e.geometry import goal_encoding
from s2e.sim.robots import RobotProfile, get_robot
from s2e.timing import TimingMismatchError, TimingSpec

ISAAC_INSTALL = (
    "Isaac Lab is not installed (needed: isaacsim, isaaclab, isaaclab_tasks, gymnasium; Linux, an NVIDIA RTX GPU, Python 3.11). "
    'Install from NVIDIA\'s index: pip install "isaaclab[isaacsim,all]" --extra-index-url https://pypi.nvidia.com '
    '(or pip install "isaacsim[all,extscache]" --extra-index-url https://pypi.nvidia.com and Isaac Lab from source); '
    "see https://isaac-sim.github.io/IsaacLab/main/source/setup/installation/pip_installation.html. "
    "URBAN-SIM tasks additionally need their own package installed so their task ids are registered."
)


@dataclass(frozen=True)
class IsaacNavMapping:
    """Where s2e's goal, frames and commands live in an Isaac Lab task's TorchRL keys.

    Attributes:
        pixels_key: camera pixels [N, H, W, C] (``IsaacLabWrapper(from_tiled_camera=True)`` writes "pixels").
        observation_key: the observation vector holding the goal ("policy" for manager-based tasks).
        goal_start: index of the goal's robot-frame x in that vector (y follows); Isaac Lab's navigation
            observation is base_lin_vel(3), projected_gravity(3), pose_command(x, y, z, heading): 6.
        action_dim: length of the task's action vector.
        v_index, omega_index: slots of forward speed and yaw rate in it (others are sent as 0).
    """

    pixels_key: NestedKey = "pixels"
    observation_key: NestedKey = "policy"
    goal_start: int = 6
    action_dim: int = 3
    v_index: int = 0
    omega_index: int = 2

    def __post_init__(self) -> None:
        if not (0 <= self.v_index < self.action_dim and 0 <= self.omega_index < self.action_dim) or self.v_index == self.omega_index:
            raise ValueError(
                f"v_index and omega_index must be two different slots of the {self.action_dim}-long action, got {self.v_index} and {self.omega_index}"
            )
        if self.goal_start < 0:
            raise ValueError(f"goal_start must be >= 0, got {self.goal_start}")


class IsaacNavAdapter(EnvBase):
    """A TorchRL env over an Isaac Lab navigation env (see the module docstring).

    Args:
        base: the wrapped env, normally ``IsaacLabWrapper(gym.make(task), from_tiled_camera=True)``.
        timing: the policy's timing; ``control_dt`` must equal the task's step period.
        control_dt: the task's step period in seconds (Isaac Lab: ``env.unwrapped.step_dt``).
        mapping: where goal, pixels and commands live in ``base``'s keys.
        robot: the embodiment whose (v, omega) limits bound the action spec.
    """

    def __init__(
        self, base: EnvBase, timing: TimingSpec, control_dt: float, mapping: IsaacNavMapping = IsaacNavMapping(), robot: str | RobotProfile = "quadruped"
    ) -> None:
        if not math.isclose(control_dt, timing.control_dt, rel_tol=1e-6, abs_tol=1e-9):
            raise TimingMismatchError(
                f"the Isaac Lab task steps every {control_dt} s but the policy's TimingSpec.control_dt is {timing.control_dt} s; "
                "set the task's sim.dt * decimation to match, or use a policy trained at the task's rate"
            )
        super().__init__(batch_size=base.batch_size, device=base.device)
        self.base, self.timing, self.mapping, self.robot = base, timing, mapping, get_robot(robot)
        self.stride = timing.frame_stride
        obs_spec = base.observation_spec
        keys = set(obs_spec.keys(True, True))
        for key, what in ((mapping.pixels_key, "camera pixels"), (mapping.observation_key, "goal observation")):
            if key not in keys:
                raise ValueError(
                    f"the wrapped env has no {what} key {key!r}; its observation keys are {sorted(map(str, keys))}. "
                    "Add a tiled camera (IsaacLabWrapper(from_tiled_camera=True)) or fix IsaacNavMapping."
                )
        pixels = obs_spec[mapping.pixels_key].shape
        if len(pixels) != len(self.batch_size) + 3 or pixels[-1] < 3:
            raise ValueError(f"camera pixels must be [N, H, W, C>=3], got {tuple(pixels)}")
        width = obs_spec[mapping.observation_key].shape[-1]
        if mapping.goal_start + 2 > width:
            raise ValueError(f"goal_start {mapping.goal_start} needs 2 slots, but {mapping.observation_key!r} has only {width} entries")
        action_shape = base.action_spec.shape
        if action_shape[-1] != mapping.action_dim:
            raise ValueError(f"the wrapped env's action has {action_shape[-1]} entries, IsaacNavMapping.action_dim says {mapping.action_dim}")
        self._height, self._width = int(pixels[-3]), int(pixels[-2])
        self._make_specs()
        self._frames: Optional[FrameRing] = None

    def _make_specs(self) -> None:
        n, dev, k = self.batch_size, self.device, self.timing.context_frames
        robot = self.robot
        self.observation_spec = Composite(
            frames=Bounded(0, 255, shape=(*n, k, 3, self._height, self._width), dtype=torch.uint8, device=dev),
            goal=Unbounded(shape=(*n, 3), dtype=torch.float32, device=dev),
            shape=n,
            device=dev,
        )
        low = torch.tensor([robot.min_speed, -robot.max_omega], device=dev).expand(*n, 2).clone()
        high = torch.tensor([robot.max_speed, robot.max_omega], device=dev).expand(*n, 2).clone()
        self.action_spec = Bounded(low, high, shape=(*n, 2), dtype=torch.float32, device=dev)
        self.reward_spec = self.base.reward_spec.clone()
        self.done_spec = self.base.done_spec.clone()

    def _set_seed(self, seed: Optional[int]) -> None:
        self.base.set_seed(seed)

    # ------------------------------------------------------------------ key mapping
    def _frame(self, td: TensorDictBase) -> torch.Tensor:
        """uint8 [N, 3, H, W] from the task's [N, H, W, C] pixels (floats in [0, 1] are scaled)."""
        pixels = td.get(self.mapping.pixels_key)[..., :3]
        if pixels.dtype.is_floating_point:
            pixels = (pixels * 255).clamp(0, 255)
        return pixels.to(torch.uint8).permute(0, 3, 1, 2)

    def _goal(self, td: TensorDictBase) -> torch.Tensor:
        start = self.mapping.goal_start
        return goal_encoding(td.get(self.mapping.observation_key)[..., start : start + 2].float())

    def isaac_action(self, action: torch.Tensor) -> torch.Tensor:
        """The task's action vector [N, action_dim] for (v, omega) commands [N, 2], clipped to the robot's limits."""
        space = self.action_spec.space
        action = torch.maximum(torch.minimum(action.to(self.device).float(), space.high), space.low)
        out = torch.zeros(*action.shape[:-1], self.mapping.action_dim, device=self.device)
        out[..., self.mapping.v_index] = action[..., 0]
        out[..., self.mapping.omega_index] = action[..., 1]
        return out

    # ------------------------------------------------------------------ TorchRL API
    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        n = self.batch_size[0]
        mask = tensordict.get("_reset", None) if tensordict is not None else None
        request = None if mask is None else TensorDict({"_reset": mask}, batch_size=self.batch_size, device=self.device)
        base_td = self.base.reset(request)
        frame = self._frame(base_td)
        if self._frames is None:
            self._frames = FrameRing(n, self.timing.context_frames, self.stride, (3, self._height, self._width), torch.uint8, self.device)
            mask = None
        idx = slice(None) if mask is None else mask.reshape(n).to(self.device)
        self._frames.restart(idx, frame[idx])
        out = TensorDict({"frames": self._frames.stacked(), "goal": self._goal(base_td)}, batch_size=self.batch_size, device=self.device)
        for key in self.done_keys:
            out.set(key, base_td.get(key, torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        base_in = TensorDict({"action": self.isaac_action(tensordict.get("action"))}, batch_size=self.batch_size, device=self.device)
        nxt = self.base.step(base_in).get("next")
        self._frames.push(self._frame(nxt))
        out = TensorDict({"frames": self._frames.stacked(), "goal": self._goal(nxt)}, batch_size=self.batch_size, device=self.device)
        for key in (*self.reward_keys, *self.done_keys):
            out.set(key, nxt.get(key))
        return out


def require_isaac_lab() -> None:
    """Raise an ImportError with install instructions unless Isaac Lab, its tasks and gymnasium import."""
    missing = [m for m in ("isaaclab", "isaaclab_tasks", "gymnasium") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"missing {missing}. {ISAAC_INSTALL}")


def make_isaac_nav_env(
    task: str,
    num_envs: int,
    timing: TimingSpec = TimingSpec(),
    mapping: IsaacNavMapping = IsaacNavMapping(),
    robot: str | RobotProfile = "quadruped",
    image_size: tuple[int, int] = (96, 96),
    camera_link: str = "Robot/base",
    device: str = "cuda:0",
    headless: bool = True,
) -> IsaacNavAdapter:
    """Launch Isaac Sim, build the registered ``task`` with a robot-mounted tiled camera and wrap it.

    The camera sits ``robot.camera_forward`` ahead of and ``robot.camera_height`` above the
    ``camera_link`` prim (relative to each env's namespace), looks forward level, with the robot's
    horizontal field of view, so frames match what the policy saw in ``NavEnv`` and in its data.
    """
    require_isaac_lab()
    from isaaclab.app import AppLauncher

    AppLauncher(headless=headless, enable_cameras=True, device=device)
    import gymnasium as gym
    import isaaclab.sim as sim_utils
    import isaaclab_tasks  # noqa: F401  (registers the task ids)
    from isaaclab.sensors import TiledCameraCfg
    from isaaclab_tasks.utils import parse_env_cfg
    from torchrl.envs.libs.isaac_lab import IsaacLabWrapper

    profile = get_robot(robot)
    height, width = image_size
    aperture = 20.955
    cfg = parse_env_cfg(task, device=device, num_envs=num_envs)
    cfg.scene.tiled_camera = TiledCameraCfg(
        prim_path="{ENV_REGEX_NS}/" + camera_link + "/s2e_camera",
        offset=TiledCameraCfg.OffsetCfg(pos=(profile.camera_forward, 0.0, profile.camera_height), rot=(1.0, 0.0, 0.0, 0.0), convention="world"),
        data_types=["rgb"],
        spawn=sim_utils.PinholeCameraCfg(
            focal_length=aperture / (2 * math.tan(math.radians(profile.hfov_deg) / 2)), horizontal_aperture=aperture, clipping_range=(0.05, 100.0)
        ),
        width=width,
        height=height,
    )
    env = gym.make(task, cfg=cfg)
    base = IsaacLabWrapper(env, from_tiled_camera=True, device=torch.device(device))
    return IsaacNavAdapter(base, timing, float(env.unwrapped.step_dt), mapping, profile)
