"""One timing contract shared by data, simulator, training and the robot runtime.

A policy learns what "the last k frames" and "the next 10 waypoints" mean in seconds. If the data
was cut at one rate and the simulator or robot feeds another, the policy silently sees a different
world; so every checkpoint and export stores its TimingSpec and a mismatch is an error, never a
silent resample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from s2e.config_parsing import dataclass_from_dict


class TimingMismatchError(ValueError):
    """Raised when two parts of the pipeline were built for different timings."""


#: Relative tolerance of :func:`whole_multiple`: periods written as decimals (0.2 / 0.1) are not exact in binary.
WHOLE_MULTIPLE_RTOL = 1e-6


def whole_multiple(span: float, period: float, span_name: str, period_name: str) -> int:
    """``span / period`` as an int >= 1, or a ValueError naming both quantities.

    The one test of "a context takes every n-th of the frames that arrive once per period", shared
    by the simulator, the exported policy and any adapter that stacks frames at its own spacing.
    """
    ratio = span / period
    count = round(ratio)
    if count < 1 or not math.isclose(ratio, count, rel_tol=WHOLE_MULTIPLE_RTOL):
        raise ValueError(
            f"{span_name} ({span} s) must be a whole multiple of {period_name} ({period} s), got a ratio of {ratio:.6g}: "
            "frames arrive once per control period and the context takes every n-th of them"
        )
    return count


@dataclass(frozen=True)
class TimingSpec:
    """Frame, waypoint and control periods.

    Attributes:
        context_frames: k, the number of past frames the policy sees (the newest is "now").
        frame_dt: seconds between consecutive context frames.
        num_waypoints: number of future waypoints predicted.
        waypoint_dt: seconds between consecutive waypoints (the first is at ``waypoint_dt``).
        control_dt: policy period: a command is held this long before the next decision.
    """

    context_frames: int = 5
    frame_dt: float = 0.2
    num_waypoints: int = 10
    waypoint_dt: float = 0.3
    control_dt: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.context_frames, int) or self.context_frames < 1:
            raise ValueError(f"TimingSpec.context_frames must be an int >= 1, got {self.context_frames!r}")
        if not isinstance(self.num_waypoints, int) or self.num_waypoints < 1:
            raise ValueError(f"TimingSpec.num_waypoints must be an int >= 1, got {self.num_waypoints!r}")
        for name in ("frame_dt", "waypoint_dt", "control_dt"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"TimingSpec.{name} must be a positive finite number of seconds, got {value!r}")

    @property
    def frame_stride(self) -> int:
        """Control periods per frame period: frames arrive once per control period (the simulator
        renders, the robot runtime encodes) and the context takes every ``frame_stride``-th of
        them, so ``frame_dt`` must be a whole multiple of ``control_dt``. Any other timing is a
        ValueError: no choice among the arriving frames could reproduce it."""
        return whole_multiple(self.frame_dt, self.control_dt, "TimingSpec.frame_dt", "control_dt")

    @property
    def horizon(self) -> float:
        """Seconds from now to the last waypoint."""
        return self.num_waypoints * self.waypoint_dt

    def context_offsets(self) -> np.ndarray:
        """Times of the context frames relative to now, oldest first, ending at 0."""
        return (np.arange(self.context_frames, dtype=np.float64) - (self.context_frames - 1)) * self.frame_dt

    def waypoint_offsets(self) -> np.ndarray:
        """Times of the waypoints relative to now: waypoint_dt, 2*waypoint_dt, ..."""
        return np.arange(1, self.num_waypoints + 1, dtype=np.float64) * self.waypoint_dt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TimingSpec":
        """Build from a mapping (a checkpoint, an export's JSON); unknown keys are an error."""
        return dataclass_from_dict(cls, data)

    def check_compatible(self, other: "TimingSpec", *, this: str = "model", that: str = "data") -> None:
        """Raise TimingMismatchError naming every field that differs between the two specs."""
        diffs = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = a == b if isinstance(a, int) and isinstance(b, int) else math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            if not same:
                diffs.append(f"{f.name}: {this}={a} vs {that}={b}")
        if diffs:
            raise TimingMismatchError(
                f"TimingSpec of the {this} does not match the {that} ({'; '.join(diffs)}). "
                "Frames and waypoints would mean different times; re-cut the data or retrain rather than resample."
            )
