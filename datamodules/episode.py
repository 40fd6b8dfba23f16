"""The per-episode trajectory record stored in every shard sample (``<key>.traj.npz``).

Both the writers (tools/make_shards.py, the simulator's demo recorder) and the streaming reader go
through this one class, so "what a valid trajectory is" is decided in a single place. The npz is
always written and read with ``allow_pickle=False``: shards are data, never code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Members of one shard sample (WebDataset strips the key and keeps the extension).
VIDEO_MEMBER = "mp4"
TRAJ_MEMBER = "traj.npz"
META_MEMBER = "json"
REQUIRED_META = ("fps",)


class BadTrajectoryError(ValueError):
    """A trajectory that cannot be used: wrong shapes, NaN, time not increasing, ..."""


@dataclass
class Trajectory:
    """Poses at the frame times of one video.

    Attributes:
        t: [T] seconds, strictly increasing (frame presentation times).
        xy: [T, 2] metres in a world frame (x, y on the ground plane).
        yaw: [T] radians, counter-clockwise from world +x.
        speed: optional [T] m/s as measured by the platform.
        valid: optional [T] bool; False marks poses the tracker lost (windows touching them are skipped).
        demonstrated: optional [T] bool; False marks poses from which the demonstrator was not
            driving (in intervention recordings, where a learner drove and the demonstrator took
            over). A window's future must be demonstrated, its context need not be: the states a
            learner drives into, labelled with the demonstrator's way out (DAgger).
    """

    t: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    speed: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None
    demonstrated: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def validate(self) -> "Trajectory":
        """Check shapes, finiteness and monotonic time; returns self so it can be chained."""
        n = self.t.shape[0] if self.t.ndim == 1 else -1
        if n < 0:
            raise BadTrajectoryError(f"t must be 1-D, got shape {self.t.shape}")
        if self.xy.shape != (n, 2):
            raise BadTrajectoryError(f"xy must be [{n}, 2] to match t, got {self.xy.shape}")
        if self.yaw.shape != (n,):
            raise BadTrajectoryError(f"yaw must be [{n}] to match t, got {self.yaw.shape}")
        for name in ("speed", "valid", "demonstrated"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise BadTrajectoryError(f"{name} must be [{n}] to match t, got {value.shape}")
        if n < 2:
            raise BadTrajectoryError(f"need at least 2 poses, got {n}")
        mask = self.valid if self.valid is not None else np.ones(n, bool)
        for name, arr in (("t", self.t), ("xy", self.xy), ("yaw", self.yaw)):
            bad = ~np.isfinite(arr)
            if name == "t" and bad.any():
                raise BadTrajectoryError("t contains NaN or inf")
            if name != "t" and (bad if bad.ndim == 1 else bad.any(-1))[mask].any():
                raise BadTrajectoryError(f"{name} contains NaN or inf at poses marked valid")
        if not np.all(np.diff(self.t) > 0):
            raise BadTrajectoryError("t must be strictly increasing")
        return self

    def to_npz_bytes(self) -> bytes:
        arrays = {"t": self.t.astype(np.float64), "xy": self.xy.astype(np.float64), "yaw": self.yaw.astype(np.float64)}
        if self.speed is not None:
            arrays["speed"] = self.speed.astype(np.float32)
        for name in ("valid", "demonstrated"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name).astype(bool)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "Trajectory":
        """Parse and validate a ``.traj.npz`` member; object arrays are refused (no pickle)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError) as exc:  # object arrays raise ValueError with allow_pickle=False
            raise BadTrajectoryError(f"unreadable traj.npz: {exc}") from exc
        missing = {"t", "xy", "yaw"} - set(arrays)
        if missing:
            raise BadTrajectoryError(f"traj.npz lacks {sorted(missing)}")
        return cls(
            t=arrays["t"].astype(np.float64),
            xy=arrays["xy"].astype(np.float64),
            yaw=arrays["yaw"].astype(np.float64),
            speed=arrays["speed"].astype(np.float64) if "speed" in arrays else None,
            valid=arrays["valid"].astype(bool) if "valid" in arrays else None,
            demonstrated=arrays["demonstrated"].astype(bool) if "demonstrated" in arrays else None,
        ).validate()
