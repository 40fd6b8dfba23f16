"""Robot-side runtime around an exported policy folder (``python -m s2e export``).

:class:`PolicyRuntime` is called once per control period with the newest camera frame and its
timestamp. It feeds the TorchScript streaming entry point (one frame encoded per call; the frame
buffer is the policy's feature cache, kept at the TimingSpec because calls come at control_dt and
the context takes every ``frame_dt / control_dt``-th of them) and turns every fault into a stop:

* a missing frame, a frame older than ``max_frame_age`` or already used, or a timestamp that is not
  finite, goes backwards or lies in the future -> zero velocity, a logged warning, and the window is refilled from scratch (a stale
  frame in the cache would put the context at the wrong times);
* a non-finite goal (inf; NaN means "no goal" on purpose and is allowed), NaN/inf policy outputs
  -> zero velocity and a logged warning;
* until the window holds ``context_frames`` real frames at the right spacing -> zero velocity;
* wrong frame shapes or dtypes are programming errors and raise ``ValueError`` with the expected form.

Every fault is counted in :attr:`PolicyRuntime.faults`; a warning is logged when a fault starts,
not on every tick of it, so a camera outage does not flood the log.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from s2e.export import TS_FILE, read_export_metadata
from s2e.export import quiet_export_warnings
from s2e.timing import TimingSpec

log = logging.getLogger(__name__)


@dataclass
class RuntimeOutput:
    """One control step: the command to send and, when the policy ran, its plan (metres, robot frame)."""

    time: float
    v: float
    omega: float
    status: str  # "ok", "warming_up", or the fault name
    best_trajectory: Optional[np.ndarray] = None  # [T, 2]
    modes: Optional[np.ndarray] = None  # [M, T, 2]
    mode_probs: Optional[np.ndarray] = None  # [M]

    @property
    def moving(self) -> bool:
        return self.status == "ok"


class PolicyRuntime:
    """Loads ``policy.ts`` + ``policy.json`` (hashes verified) and runs one control step per call.

    Args:
        folder: the export folder.
        max_frame_age: seconds a frame may be old at its control step (default: one control period).
        threads: torch intra-op threads (robots share their CPU; the default leaves torch's choice).
    """

    def __init__(self, folder: Union[str, Path], max_frame_age: Optional[float] = None, threads: Optional[int] = None) -> None:
        self.meta = read_export_metadata(folder)
        self.timing = TimingSpec.from_dict(self.meta["timing"])
        self.image_size = tuple(int(s) for s in self.meta["image_size"])
        self.max_frame_age = self.timing.control_dt if max_frame_age is None else float(max_frame_age)
        if threads is not None:
            torch.set_num_threads(threads)
        with quiet_export_warnings():
            self.module = torch.jit.load(str(Path(folder) / TS_FILE), map_location="cpu")
        self.module.eval()
        self.faults: Counter[str] = Counter()
        self._last_time = -math.inf
        self._fault: Optional[str] = None

    def reset(self) -> None:
        """Start a new episode: the window refills before the robot moves again."""
        self.module.reset()
        self._last_time = -math.inf

    def _prepare(self, frame: np.ndarray) -> torch.Tensor:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be HxWx3 uint8 RGB arrays, got shape {frame.shape} dtype {frame.dtype}")
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        if tuple(image.shape[-2:]) != self.image_size:
            resized = F.interpolate(image.float(), size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            image = resized.round().clamp(0, 255).to(torch.uint8)
        return image

    def _stop(self, now: float, status: str, reset: bool) -> RuntimeOutput:
        if status not in ("warming_up",):
            self.faults[status] += 1
            if self._fault != status:
                log.warning("policy runtime: %s at t=%.3f s -> zero velocity", status.replace("_", " "), now)
            self._fault = status
        if reset:
            self.module.reset()  # the clock check keeps its last frame time: order still matters
        return RuntimeOutput(now, 0.0, 0.0, status)

    def step(self, now: float, frame: Optional[np.ndarray], frame_time: Optional[float], goal_xy: Optional[Sequence[float]] = None) -> RuntimeOutput:
        """One control step at time ``now`` (s) with the newest frame (HxWx3 uint8 RGB, any size;
        resized to the export's image size) taken at ``frame_time``, and the goal (x, y) metres in
        the robot frame (None: no goal)."""
        if frame is None or frame_time is None:
            return self._stop(now, "missing_frame", reset=True)
        image = self._prepare(frame)
        if not math.isfinite(frame_time) or not math.isfinite(now) or frame_time < self._last_time or frame_time > now:
            return self._stop(now, "bad_timestamp", reset=True)
        if now - frame_time > self.max_frame_age or frame_time == self._last_time:  # old, or no new frame
            return self._stop(now, "stale_frame", reset=True)
        goal = torch.full((1, 2), math.nan) if goal_xy is None else torch.tensor([list(goal_xy)], dtype=torch.float32)
        if goal.shape != (1, 2):
            raise ValueError(f"goal must be (x, y) metres in the robot frame, got {goal_xy!r}")
        if torch.isinf(goal).any() or torch.isnan(goal).any() != torch.isnan(goal).all():
            return self._stop(now, "malformed_goal", reset=False)
        self._last_time = frame_time
        with torch.no_grad():
            best, modes, probs, command = self.module.step(image, goal)
        if not all(bool(torch.isfinite(x).all()) for x in (best, modes, probs, command)):
            return self._stop(now, "non_finite_output", reset=True)
        if not self.module.window_full():
            return RuntimeOutput(now, 0.0, 0.0, "warming_up", best[0].numpy(), modes[0].numpy(), probs[0].numpy())
        if self._fault is not None:
            log.info("policy runtime: recovered at t=%.3f s", now)
            self._fault = None
        return RuntimeOutput(now, float(command[0, 0]), float(command[0, 1]), "ok", best[0].numpy(), modes[0].numpy(), probs[0].numpy())
