"""What drives the robot in a NavBench episode: trained policies and the three baselines.

Every agent maps the env's observation (and, for the privileged expert only, the env's true state)
to (v, omega) commands for the whole batch. Learned policies are evaluated deterministically: the
highest-scoring mode of the mixture, turned into a command by the same pure-pursuit controller
the robot runtime uses (``s2e.control``), with the robot's own speed and yaw-rate limits. A
checkpoint policy streams: each step it encodes only the newest frame of every env and reuses the
features of the frames it has seen (:class:`FrameFeatureCache`): the full k-frame forward's
result, to float rounding.

Baselines:
* ``expert``: the privileged arc-sampling planner (true layout and pedestrians): an upper bound.
* ``straight``: drives straight at the goal point (what a policy that ignores the camera does).
* ``random``: uniform random commands within the robot's limits (seeded).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
from tensordict import TensorDictBase
from torch import Tensor

from s2e.checkpoint import load_policy_from_checkpoint
from s2e.control import LOOKAHEAD_TIME, ControllerLimits, command_from_limits
from s2e.export import TS_FILE, quiet_export_warnings, read_export_metadata
from s2e.frame_ring import window_length
from s2e.model.policy import best_trajectory_metres
from s2e.sim.env import NavEnv
from s2e.sim.expert import ExpertPlanner
from s2e.sim.rollout import expert_controller
from s2e.timing import TimingSpec

BASELINES = ("expert", "straight", "random")
#: ``onnx``: any ONNX navigation policy through an adapter spec (``s2e.bench.onnx_agent``).
AGENTS = ("policy", "onnx", *BASELINES)


class Agent(Protocol):
    """``act`` returns commands [N, 2]; ``timing`` / ``image_size`` are None when the agent accepts any."""

    name: str
    timing: Optional[TimingSpec]
    image_size: Optional[tuple[int, int]]

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor: ...


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

    def __init__(self, lookahead_time: float = LOOKAHEAD_TIME) -> None:
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


class FrameFeatureCache:
    """Per-env features of the frames a ``NavEnv`` stacks, so that each step encodes one new frame
    per env instead of k (``S2EPolicy.encode_frames`` treats every frame on its own).

    ``NavEnv`` renders a frame every control step and shows the last k, ``env.stride`` steps apart,
    the episode's first frame standing in for those before it. The cache keeps, per env, the last
    L = (k - 1) * stride + 1 newest frames with their features, in slot ``step % L`` by episode step
    (``env.time``); stacked frame j of step s is looked up at step max(s - (k - 1 - j) * stride, 0),
    so a reset (step 0, all k frames the first one) needs one encoding too. A cached feature is
    used only if its stored frame equals the observed one byte for byte: an env with any miss (the
    first step of a run, a reset the agent did not see, frames that do not follow its own episode
    as under ``frames: shuffled`` with staggered resets) is encoded whole this step, which refills
    its slots. The cache thus makes the forward cheaper, never different beyond float rounding:
    encoding a frame among N rather than N * k frames can change a feature's last bits (the
    encoder's matrix products sum in a batch-size-dependent order), so commands agree to ~1e-6,
    and a closed-loop run, which amplifies any difference, can drift from a full-forward run (a
    route completion in the third decimal, now and then a contact) as between two devices. Runs
    stay deterministic: the same agent, suite and batches give the same numbers.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._env: Optional[weakref.ref] = None
        self.frames: Optional[Tensor] = None  # [N, L, 3, H, W] uint8
        self.features: Optional[Tensor] = None  # [N, L, D]
        self.filled: Optional[Tensor] = None  # [N, L] slot holds a frame and its feature

    def encode(self, encode_frames: Callable[[Tensor], Tensor], frames: Tensor, env: NavEnv) -> Tensor:
        """Features [N, k, D] of ``frames`` [N, k, 3, H, W], as ``encode_frames(frames)`` gives them."""
        try:
            steps = torch.round(env.time / env.config.timing.control_dt).long().to(frames.device)
            stride = int(env.stride)
        except AttributeError:  # not a NavEnv (or not reset yet): nothing to say which frames are whose
            return encode_frames(frames)
        try:
            return self._encode(encode_frames, frames, env, steps, stride)
        except BaseException:
            self.clear()  # a half-written step must not be trusted later
            raise

    def _encode(self, encode_frames: Callable[[Tensor], Tensor], frames: Tensor, env: NavEnv, steps: Tensor, stride: int) -> Tensor:
        n, k, device = frames.shape[0], frames.shape[1], frames.device
        length = window_length(k, stride)
        shape = (n, length, *frames.shape[2:])
        if self._env is None or self._env() is not env or self.frames is None or self.frames.shape != shape or self.frames.device != device:
            self.clear()
            self._env = weakref.ref(env)
            self.frames = torch.zeros(shape, dtype=frames.dtype, device=device)
            self.filled = torch.zeros(n, length, dtype=torch.bool, device=device)
        rows = torch.arange(n, device=device)
        lags = torch.arange(k - 1, -1, -1, device=device) * stride
        need = (steps[:, None] - lags).clamp_min(0)  # [N, k] episode step of each stacked frame
        slots = need % length
        newest = slots[:, -1]
        self.frames[rows, newest] = frames[:, -1]
        self.filled[rows, newest] = True  # its feature is written below, in this call
        older = slots[:, :-1]
        same = (self.frames[rows[:, None], older] == frames[:, :-1]).flatten(2).all(-1)
        hit = (self.filled[rows[:, None], older] & same).all(-1)
        good, bad = hit.nonzero()[:, 0], (~hit).nonzero()[:, 0]
        encoded = encode_frames(torch.cat([frames[good, -1], frames[bad].flatten(0, 1)])[:, None])[:, 0]
        if self.features is None:
            self.features = torch.zeros(n, length, encoded.shape[-1], dtype=encoded.dtype, device=device)
        self.features[good, newest[good]] = encoded[: len(good)]
        whole = encoded[len(good) :].view(len(bad), k, encoded.shape[-1])
        # Refill a missed env's slots; of frames clamped to the episode start (one slot) keep the last.
        keep = torch.ones(len(bad), k, dtype=torch.bool, device=device)
        keep[:, :-1] = need[bad, :-1] != need[bad, 1:]
        r, j = keep.nonzero(as_tuple=True)
        row, slot = bad[r], slots[bad[r], j]
        self.frames[row, slot] = frames[row, j]
        self.features[row, slot] = whole[r, j]
        self.filled[row, slot] = True
        features = self.features[rows[:, None], slots]
        features[bad] = whole
        return features


class PolicyAgent:
    """An ``S2EPolicy`` (any checkpoint ``s2e.pretrain.load_policy_from_checkpoint`` reads): best mode
    in metres -> pure pursuit with the robot's limits. ``streaming`` (default) encodes only each
    env's newest frame per step (:class:`FrameFeatureCache`); off, every step is the full forward."""

    def __init__(self, policy: torch.nn.Module, timing: TimingSpec, name: str, lookahead_time: float = LOOKAHEAD_TIME, streaming: bool = True) -> None:
        self.policy = policy.eval()
        self.timing = timing
        self.image_size = tuple(policy.config.image_size)
        self.name = name
        self.lookahead_time = lookahead_time
        self.cache = FrameFeatureCache() if streaming else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, lookahead_time: float = LOOKAHEAD_TIME) -> "PolicyAgent":
        policy, timing, _ = load_policy_from_checkpoint(path)
        return cls(policy, timing, Path(path).stem, lookahead_time)

    def to(self, device: torch.device) -> "PolicyAgent":
        self.policy.to(device)
        return self

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        with torch.no_grad():
            goal = obs["goal"].float()
            if self.cache is None:
                out = self.policy(obs["frames"], goal)
            else:
                out = self.policy.decode_from_features(self.cache.encode(self.policy.encode_frames, obs["frames"], env), goal)
            return command_from_limits(best_trajectory_metres(out), self.timing.waypoint_dt, robot_limits(env, self.lookahead_time))


class TorchScriptAgent:
    """An export folder (``python -m s2e export``): ``policy.ts`` full-window forward, its own controller."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta = read_export_metadata(folder, require=(TS_FILE,))
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


def build_agent(kind: str, policy_path: Optional[str] = None, seed: int = 0, lookahead_time: float = LOOKAHEAD_TIME, spec: Optional[str] = None) -> Agent:
    """``kind`` is ``policy`` (``policy_path``: a .ckpt file or an export folder), ``onnx`` (``spec``: an
    adapter spec; ``policy_path``: the .onnx file, if not the spec's) or a baseline name."""
    if kind == "onnx":
        from s2e.bench.onnx_agent import OnnxAgent

        if spec is None:
            raise ValueError("agent 'onnx' needs an adapter spec: model.init_args.spec (e.g. experiments/onnx_specs/s2e_export_small.yaml)")
        return OnnxAgent.from_spec(spec, policy_path)
    if kind == "expert":
        return ExpertAgent()
    if kind == "straight":
        return StraightToGoalAgent(lookahead_time)
    if kind == "random":
        return RandomAgent(seed)
    if kind != "policy":
        raise ValueError(f"unknown agent {kind!r}; known agents: {list(AGENTS)}")
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
