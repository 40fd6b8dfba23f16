"""Any ONNX navigation policy, closed-loop in NavBench, through an adapter spec.

A third-party policy differs from ours in everything around the network: image size and
normalisation, how many context frames and how far apart, how the goal is encoded, what the output
is and in which units. The adapter spec (YAML or JSON; ``experiments/onnx_specs/`` has ours and the
S2E authors' released BC format) states all of it, :class:`OnnxAgent` checks it against the graph
before any episode runs, and every step it builds the graph's inputs from the env's observation and
turns the output into (v, omega): waypoints through the shared pure-pursuit controller with the
robot's limits (as every learned policy in NavBench), or a command as is.

Spec fields (``model`` is relative to the spec file; NavBench's ``policy_path`` overrides it)::

    name: my-policy                # the agent's name in the report
    model: policy.onnx
    frames:
      input: frames                # graph input name
      layout: BKCHW                # BKCHW: [B, k, 3, H, W]; BCHW_STACKED: [B, 3k, H, W] (frames stacked in channels)
      size: [64, 64]               # H, W: NavBench renders at this size
      count: 5                     # context frames k, oldest first, the newest is now
      spacing_s: 0.2               # seconds between context frames (a multiple of the suite's control period)
      dtype: uint8                 # uint8: raw 0-255 RGB; float32: (rgb / 255 - mean) / std
      mean: [0.0, 0.0, 0.0]        # float32 only
      std: [1.0, 1.0, 1.0]
    goal:
      input: goal
      encoding: xy                 # xy: (x, y) metres, robot frame (+x forward, +y left);
                                   # polar: (clip(d, 0, max_distance) / max_distance, cos, sin) of the goal bearing
      max_distance: 200.0          # polar only
    output:
      name: best_trajectory_m      # graph output name
      layout: waypoints            # waypoints: [B, T, 2] robot frame; command: [B, 2] (v m/s, omega rad/s)
      scale: 1.0                   # metres per output unit (waypoints)
      waypoint_spacing_s: 0.3      # seconds between waypoints, the first one spacing_s ahead (waypoints)
    lookahead_time: 0.6            # pure-pursuit lookahead (waypoints)

The report records the spec's path and sha256 and the model's sha256 (``run.adapter``), so two
reports of "the same" agent can be told apart when either file changed.

Frames: the agent keeps its own history of each env's newest frames, one per control step, and
takes ``count`` of them ``spacing_s`` apart, so its context need not match the suite's stacking.
The first frame of an episode stands in for the frames before it (as ``NavEnv`` stacks them);
an env whose step count does not follow the last one seen (a new episode) starts over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
import yaml
from tensordict import TensorDictBase
from torch import Tensor

from s2e.bench.agents import goal_xy, robot_limits
from s2e.config_parsing import dataclass_from_dict
from s2e.control import LOOKAHEAD_TIME, command_from_limits
from s2e.export_meta import sha256_file
from s2e.frame_ring import window_length
from s2e.onnx_runtime import make_session
from s2e.sim.env import NavEnv
from s2e.timing import whole_multiple

FRAME_LAYOUTS = ("BKCHW", "BCHW_STACKED")
GOAL_ENCODINGS = ("xy", "polar")
OUTPUT_LAYOUTS = ("waypoints", "command")
DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def _choice(value: str, options: tuple[str, ...], field: str) -> str:
    if value not in options:
        raise ValueError(f"adapter spec: {field} must be one of {list(options)}, got {value!r}")
    return value


@dataclass(frozen=True)
class FramesSpec:
    input: str
    size: tuple[int, int]
    count: int
    spacing_s: float
    layout: str = "BKCHW"
    dtype: str = "uint8"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        _choice(self.layout, FRAME_LAYOUTS, "frames.layout")
        _choice(self.dtype, tuple(DTYPES), "frames.dtype")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if min(self.size) < 8 or self.count < 1 or not self.spacing_s > 0 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"adapter spec: frames needs size >= 8x8, count >= 1, spacing_s > 0 and 3 means and positive stds, got {self}")

    def shape(self) -> list[Optional[int]]:
        """The graph input's expected shape (None: the batch, any size)."""
        h, w = self.size
        return [None, self.count, 3, h, w] if self.layout == "BKCHW" else [None, 3 * self.count, h, w]


@dataclass(frozen=True)
class GoalSpec:
    input: str
    encoding: str = "xy"
    max_distance: float = 200.0

    def __post_init__(self) -> None:
        _choice(self.encoding, GOAL_ENCODINGS, "goal.encoding")
        if not self.max_distance > 0:
            raise ValueError(f"adapter spec: goal.max_distance must be > 0, got {self.max_distance}")

    def width(self) -> int:
        return 2 if self.encoding == "xy" else 3


@dataclass(frozen=True)
class OutputSpec:
    name: str
    layout: str = "waypoints"
    scale: float = 1.0
    waypoint_spacing_s: Optional[float] = None

    def __post_init__(self) -> None:
        _choice(self.layout, OUTPUT_LAYOUTS, "output.layout")
        if self.layout == "waypoints" and not (self.waypoint_spacing_s or 0) > 0:
            raise ValueError("adapter spec: output.layout 'waypoints' needs output.waypoint_spacing_s > 0 (seconds between waypoints)")


@dataclass(frozen=True)
class AdapterSpec:
    """A parsed adapter spec (see the module docstring); ``path`` and ``sha256`` identify the file."""

    name: str
    frames: FramesSpec
    goal: GoalSpec
    output: OutputSpec
    model: Optional[Path] = None
    lookahead_time: float = LOOKAHEAD_TIME
    path: Optional[Path] = None
    sha256: Optional[str] = None

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AdapterSpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"adapter spec not found: {path}")
        raw = path.read_bytes()
        data = yaml.safe_load(raw)  # JSON is YAML too
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not an adapter spec (a YAML/JSON mapping)")
        try:
            return cls.from_dict(data, path.parent, path=path, sha256=hashlib.sha256(raw).hexdigest())
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path, **identity: Any) -> "AdapterSpec":
        missing = [key for key in ("name", "frames", "goal", "output") if key not in data]
        if missing:
            raise ValueError(f"adapter spec lacks {missing}")
        fields = dict(data)
        fields["frames"] = dataclass_from_dict(FramesSpec, data["frames"])
        fields["goal"] = dataclass_from_dict(GoalSpec, data["goal"])
        fields["output"] = dataclass_from_dict(OutputSpec, data["output"])
        if data.get("model") is not None:
            fields["model"] = base / str(data["model"])
        return dataclass_from_dict(cls, {**fields, **identity})


def _check_tensor(kind: str, name: str, graph: dict[str, Any], dtype: str, shape: list[Optional[int]], model: Path) -> None:
    """A graph input/output against what the spec says it is: dtype, rank, every static size."""
    value = graph.get(name)
    if value is None:
        raise ValueError(f"{model} has no {kind} {name!r}; its {kind}s are {sorted(graph)}: fix the spec's names")
    if value.type != dtype:
        raise ValueError(f"{model} {kind} {name!r} is {value.type}, the spec says {dtype}")
    got = [d if isinstance(d, int) else None for d in value.shape]
    if len(got) != len(shape) or any(g is not None and s is not None and g != s for g, s in zip(got, shape)):
        raise ValueError(f"{model} {kind} {name!r} has shape {value.shape}, the spec needs {['B' if s is None else s for s in shape]}")


class OnnxAgent:
    """A NavBench agent running an ONNX graph as its :class:`AdapterSpec` says (module docstring).

    Args:
        spec: the adapter spec.
        model: the ONNX file (default: the spec's ``model``).
        threads: onnxruntime intra-op threads (default: torch's, as the rest of the process).
    """

    timing = None  # any suite: the agent keeps its own frame history and controller

    def __init__(self, spec: AdapterSpec, model: Optional[Union[str, Path]] = None, threads: Optional[int] = None) -> None:
        path = Path(model) if model is not None else spec.model
        if path is None:
            raise ValueError(f"adapter spec {spec.name!r} names no model: give the .onnx file (model.init_args.policy_path)")
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.spec, self.model_path = spec, path
        self.name = spec.name
        self.image_size = spec.frames.size
        self.session = make_session(path, threads or torch.get_num_threads())
        inputs = {v.name: v for v in self.session.get_inputs()}
        outputs = {v.name: v for v in self.session.get_outputs()}
        _check_tensor("input", spec.frames.input, inputs, DTYPES[spec.frames.dtype], spec.frames.shape(), path)
        _check_tensor("input", spec.goal.input, inputs, DTYPES["float32"], [None, spec.goal.width()], path)
        out_shape: list[Optional[int]] = [None, None, 2] if spec.output.layout == "waypoints" else [None, 2]
        _check_tensor("output", spec.output.name, outputs, DTYPES["float32"], out_shape, path)
        extra = sorted(set(inputs) - {spec.frames.input, spec.goal.input})
        if extra:
            raise ValueError(f"{path} also needs the inputs {extra}, which the spec does not feed (it feeds {spec.frames.input!r} and {spec.goal.input!r})")
        batch = inputs[spec.frames.input].shape[0]
        self.chunk = batch if isinstance(batch, int) and batch > 0 else None  # a graph with a fixed batch runs in pieces
        self.run_info = {"spec": str(spec.path) if spec.path else None, "spec_sha256": spec.sha256, "model": str(path), "model_sha256": sha256_file(path)}
        self._history: Optional[Tensor] = None  # [N, L, 3, H, W] newest frame per control step, oldest first
        self._steps: Optional[Tensor] = None  # [N] episode step of the newest frame in the history

    @classmethod
    def from_spec(cls, spec_path: Union[str, Path], model: Optional[Union[str, Path]] = None) -> "OnnxAgent":
        return cls(AdapterSpec.load(spec_path), model)

    def _context(self, frames: Tensor, env: NavEnv) -> Tensor:
        """[N, k, 3, H, W] uint8: the spec's context from the history of each env's newest frame."""
        stride = whole_multiple(
            self.spec.frames.spacing_s, env.config.timing.control_dt, f"adapter spec {self.name!r}: frames.spacing_s", "the suite's control period"
        )
        length = window_length(self.spec.frames.count, stride)
        newest = frames[:, -1]
        steps = torch.round(env.time / env.config.timing.control_dt).long().to(newest.device)
        if self._history is None or self._history.shape[0] != newest.shape[0] or self._history.shape[2:] != newest.shape[1:]:
            self._history, self._steps = None, None
        follows = torch.zeros_like(steps, dtype=torch.bool) if self._steps is None else steps == self._steps + 1
        restarted = newest[:, None].expand(-1, length, *newest.shape[1:])
        if self._history is None:
            self._history = restarted.clone()
        else:
            shifted = torch.cat([self._history[:, 1:], newest[:, None]], dim=1)
            self._history = torch.where(follows[:, None, None, None, None], shifted, restarted)
        self._steps = steps
        return self._history[:, ::stride]

    def _inputs(self, context: Tensor, goal: Tensor) -> dict[str, np.ndarray]:
        frames_spec, goal_spec = self.spec.frames, self.spec.goal
        if frames_spec.dtype == "uint8":
            frames = context.cpu().numpy()
        else:
            mean = torch.tensor(frames_spec.mean).view(3, 1, 1)
            std = torch.tensor(frames_spec.std).view(3, 1, 1)
            frames = ((context.float().cpu() / 255.0 - mean) / std).numpy()
        if frames_spec.layout == "BCHW_STACKED":
            frames = frames.reshape(frames.shape[0], -1, *frames.shape[3:])
        goal = goal.float().cpu()
        if goal_spec.encoding == "xy":
            encoded = goal_xy(goal)
        else:
            encoded = torch.cat([goal[:, :1].clamp(0.0, goal_spec.max_distance) / goal_spec.max_distance, goal[:, 1:3]], dim=-1)
        return {frames_spec.input: np.ascontiguousarray(frames), goal_spec.input: encoded.numpy()}

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = next(iter(feeds.values())).shape[0]
        size = self.chunk or n
        pieces = [self.session.run([self.spec.output.name], {k: v[i : i + size] for k, v in feeds.items()})[0] for i in range(0, n, size)]
        return np.concatenate(pieces)

    def act(self, obs: TensorDictBase, env: NavEnv) -> Tensor:
        output = torch.from_numpy(self._run(self._inputs(self._context(obs["frames"], env), obs["goal"]))).float()
        if not torch.isfinite(output).all():
            raise ValueError(f"{self.model_path} returned non-finite values for {self.name!r}")
        if self.spec.output.layout == "command":
            return output.to(obs["goal"].device)
        waypoints = output * self.spec.output.scale
        limits = robot_limits(env, self.spec.lookahead_time)
        return command_from_limits(waypoints, float(self.spec.output.waypoint_spacing_s), limits).to(obs["goal"].device)
