"""Robot-side runtime around an exported policy folder (``python -m s2e export``).

:class:`PolicyRuntime` is called once per control period with the newest camera frame and its
timestamp. It feeds the streaming step (one frame encoded per call; the frame buffer is the
policy's feature cache, kept at the TimingSpec because calls come at control_dt and the context
takes every ``frame_dt / control_dt``-th of them) of either backend:

* ``torchscript``: ``policy.ts`` and its stateful ``step`` (needs torch);
* ``onnx``: ``policy_encoder.onnx`` + ``policy_decoder.onnx`` with onnxruntime alone
  (:class:`s2e.onnx_runtime.OnnxStreamingPolicy`); this module imports no torch, so a robot
  without it runs the ONNX export.

Every fault turns into a stop, the same for both backends:

* a missing frame, a frame older than ``max_frame_age`` or already used, or a timestamp that is not
  finite, goes backwards or lies in the future -> zero velocity, a logged warning, and the window
  is refilled from scratch (a stale frame in the cache would put the context at the wrong times).
  Times are compared with a tolerance of :data:`CLOCK_TOLERANCE_S`: a camera latency of exactly
  one control period is fresh, although ``0.8 - 0.7 > 0.1`` in floating point;
* a non-finite goal (inf; NaN means "no goal" on purpose and is allowed), NaN/inf policy outputs
  -> zero velocity and a logged warning;
* until the window holds ``context_frames`` real frames at the right spacing -> zero velocity;
* wrong frame shapes or dtypes are programming errors and raise ``ValueError`` with the expected form.

Arrival is the runtime's decision, not the policy's: within ``arrival_radius`` of the goal the
command is zero (status ``arrived``). The policy never learned to stop: NavBench, like RL
post-training, ends an episode when the robot comes within the arrival radius, so a policy is
judged only up to that point, and near a goal its plan still asks for speed (0.93 m/s at distance
0 was observed). The runtime therefore stops where NavBench counts success; the default radius is
NavBench's (1 m). The policy still runs at every step, so its window stays warm, and the robot
moves again as soon as a new goal lies outside the radius.

Every fault is counted in :attr:`PolicyRuntime.faults`; a warning is logged when a fault starts,
not on every tick of it, so a camera outage does not flood the log.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np
from PIL import Image

from s2e.export_meta import ONNX_DECODER_FILE, ONNX_ENCODER_FILE, TS_FILE, check_files, read_export_metadata
from s2e.onnx_runtime import OnnxStreamingPolicy
from s2e.timing import TimingSpec

log = logging.getLogger(__name__)

BACKENDS = ("torchscript", "onnx")
#: Seconds by which two clock readings may differ and still count as equal (float rounding of
#: tick and frame times; far below any camera or control period).
CLOCK_TOLERANCE_S = 1e-6
#: NavBench's arrival radius (``arrival_radius`` of the built-in suites and ``NavEnvConfig``).
DEFAULT_ARRIVAL_RADIUS = 1.0


@dataclass
class RuntimeOutput:
    """One control step: the command to send and, when the policy ran, its plan (metres, robot frame)."""

    time: float
    v: float
    omega: float
    status: str  # "ok", "warming_up", "arrived", or the fault name
    best_trajectory: Optional[np.ndarray] = None  # [T, 2]
    modes: Optional[np.ndarray] = None  # [M, T, 2]
    mode_probs: Optional[np.ndarray] = None  # [M]

    @property
    def moving(self) -> bool:
        return self.status == "ok"


class StreamingPolicy(Protocol):
    """What the runtime needs of a backend: numpy in, numpy out, one frame per call."""

    def step(self, frame: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def window_full(self) -> bool: ...

    def reset(self) -> None: ...


class TorchScriptStreamingPolicy:
    """``policy.ts``'s stateful ``step`` behind the numpy interface (imports torch when built)."""

    def __init__(self, folder: Path, threads: Optional[int] = None) -> None:
        import torch

        from s2e.export import quiet_export_warnings

        if threads is not None:
            torch.set_num_threads(threads)
        with quiet_export_warnings():
            self.module = torch.jit.load(str(folder / TS_FILE), map_location="cpu").eval()
        self._torch = torch

    def step(self, frame: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, ...]:
        with self._torch.no_grad():
            outputs = self.module.step(self._torch.from_numpy(frame), self._torch.from_numpy(goal))
        return tuple(x.numpy() for x in outputs)

    def window_full(self) -> bool:
        return bool(self.module.window_full())

    def reset(self) -> None:
        self.module.reset()


def choose_backend(meta: dict[str, Any], backend: str = "auto") -> str:
    """``auto``: TorchScript when the export has it and torch is installed, else ONNX."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose from {['auto', *BACKENDS]}")
    if backend != "auto":
        return backend
    formats = meta.get("formats") or {}
    if "ts" in formats and importlib.util.find_spec("torch") is not None:
        return "torchscript"
    if "onnx" in formats:
        return "onnx"
    raise ValueError(f"the export holds the formats {sorted(formats)}: running it needs policy.ts and torch, or the ONNX graphs")


class PolicyRuntime:
    """Loads an export folder (metadata and files verified) and runs one control step per call.

    Args:
        folder: the export folder.
        max_frame_age: seconds a frame may be old at its control step (default: one control period).
        threads: intra-op threads of the backend (robots share their CPU; None leaves its default).
        backend: ``torchscript``, ``onnx`` or ``auto`` (:func:`choose_backend`).
        arrival_radius: metres from the goal within which the robot stops (see the module docstring).
    """

    def __init__(
        self,
        folder: Union[str, Path],
        max_frame_age: Optional[float] = None,
        threads: Optional[int] = None,
        backend: str = "auto",
        arrival_radius: float = DEFAULT_ARRIVAL_RADIUS,
    ) -> None:
        folder = Path(folder)
        if not math.isfinite(arrival_radius) or arrival_radius < 0:
            raise ValueError(f"arrival_radius must be a finite number >= 0 (metres), got {arrival_radius!r}")
        self.meta = read_export_metadata(folder)
        self.backend = choose_backend(self.meta, backend)
        check_files(self.meta, folder, (TS_FILE,) if self.backend == "torchscript" else (ONNX_ENCODER_FILE, ONNX_DECODER_FILE))
        self.timing = TimingSpec.from_dict(self.meta["timing"])
        self.image_size = tuple(int(s) for s in self.meta["image_size"])
        self.max_frame_age = self.timing.control_dt if max_frame_age is None else float(max_frame_age)
        self.arrival_radius = float(arrival_radius)
        self.policy: StreamingPolicy = (
            TorchScriptStreamingPolicy(folder, threads)
            if self.backend == "torchscript"
            else OnnxStreamingPolicy(folder, self.meta["streaming"]["stride"], self.meta["streaming"]["cache_length"], threads)
        )
        self.faults: Counter[str] = Counter()
        self._last_time = -math.inf
        self._fault: Optional[str] = None
        self._arrived = False

    def reset(self) -> None:
        """Start a new episode: the window refills before the robot moves again."""
        self.policy.reset()
        self._last_time = -math.inf

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB of any size -> [1, 3, H, W] at the export's size (bilinear, antialiased)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be HxWx3 uint8 RGB arrays, got shape {frame.shape} dtype {frame.dtype}")
        height, width = self.image_size
        if frame.shape[:2] != (height, width):
            frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
        return np.ascontiguousarray(frame.transpose(2, 0, 1)[None])

    def _stop(self, now: float, status: str, reset: bool) -> RuntimeOutput:
        self.faults[status] += 1
        if self._fault != status:
            log.warning("policy runtime: %s at t=%.3f s -> zero velocity", status.replace("_", " "), now)
        self._fault = status
        if reset:
            self.policy.reset()  # the clock check keeps its last frame time: order still matters
        return RuntimeOutput(now, 0.0, 0.0, status)

    def step(self, now: float, frame: Optional[np.ndarray], frame_time: Optional[float], goal_xy: Optional[Sequence[float]] = None) -> RuntimeOutput:
        """One control step at time ``now`` (s) with the newest frame (HxWx3 uint8 RGB, any size;
        resized to the export's image size) taken at ``frame_time``, and the goal (x, y) metres in
        the robot frame (None: no goal)."""
        if frame is None or frame_time is None:
            return self._stop(now, "missing_frame", reset=True)
        image = self._prepare(frame)
        if not math.isfinite(frame_time) or not math.isfinite(now) or frame_time < self._last_time or frame_time > now + CLOCK_TOLERANCE_S:
            return self._stop(now, "bad_timestamp", reset=True)
        if now - frame_time > self.max_frame_age + CLOCK_TOLERANCE_S or frame_time == self._last_time:  # old, or no new frame
            return self._stop(now, "stale_frame", reset=True)
        goal = np.full((1, 2), np.nan, np.float32) if goal_xy is None else np.asarray([list(goal_xy)], dtype=np.float32)
        if goal.shape != (1, 2):
            raise ValueError(f"goal must be (x, y) metres in the robot frame, got {goal_xy!r}")
        if np.isinf(goal).any() or np.isnan(goal).any() != np.isnan(goal).all():
            return self._stop(now, "malformed_goal", reset=False)
        self._last_time = frame_time
        best, modes, probs, command = self.policy.step(image, goal)
        if not all(np.isfinite(x).all() for x in (best, modes, probs, command)):
            return self._stop(now, "non_finite_output", reset=True)
        plan = (best[0], modes[0], probs[0])
        if not self.policy.window_full():
            return RuntimeOutput(now, 0.0, 0.0, "warming_up", *plan)
        if self._fault is not None:
            log.info("policy runtime: recovered at t=%.3f s", now)
            self._fault = None
        arrived = goal_xy is not None and math.hypot(float(goal[0, 0]), float(goal[0, 1])) <= self.arrival_radius
        if arrived != self._arrived:
            log.info("policy runtime: %s at t=%.3f s", "within the arrival radius: stopped" if arrived else "goal outside the arrival radius", now)
            self._arrived = arrived
        if arrived:
            return RuntimeOutput(now, 0.0, 0.0, "arrived", *plan)
        return RuntimeOutput(now, float(command[0, 0]), float(command[0, 1]), "ok", *plan)
