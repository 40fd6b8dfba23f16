"""Readers for the pose files users record next to their videos, all returning a :class:`Trajectory`.

Formats (``POSE_FORMATS``):

* ``tum``: ``timestamp tx ty tz qx qy qz qw`` per line (DPVO / ORB-SLAM / evo output; ``#``
  comments). These are 3-D body poses, so they are reduced to the ground plane here; see
  :class:`GroundFrame` for the axis conventions.
* ``csv``: a header, then at least the columns ``t,x,y,yaw`` (already planar; extra columns ignored).
* ``gnm``: the visualnav-transformer layout, one folder per trajectory with ``0.jpg, 1.jpg, ...``
  and ``traj_data.pkl`` = ``{"position": [T,2], "yaw": [T]}``. The pickle is read with
  :mod:`datamodules.restricted_pickle` (numpy arrays and plain containers only); the format has no
  timestamps, so pose ``i`` is at ``i / fps``.

Readers only parse: the returned trajectory is at the *pose* times and is NOT validated, because
NaN poses, repeated timestamps and gaps are the ingest step's job to find, mark and count
(:mod:`datamodules.ingest`), not a reason to reject a whole recording.
"""

from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.episode import Trajectory
from datamodules.restricted_pickle import restricted_load

POSE_FORMATS = ("tum", "csv", "gnm")
CSV_COLUMNS = ("t", "x", "y", "yaw")
GNM_POSE_FILE = "traj_data.pkl"
#: Text pose files are UTF-8; "utf-8-sig" also accepts the byte-order mark Excel and Notepad put in
#: front of a saved CSV, which would otherwise make the first header name "\ufefft", not "t".
TEXT_ENCODING = "utf-8-sig"
#: Headings whose forward vector has less than this horizontal length are undefined (NaN).
MIN_HORIZONTAL = 1e-6

_AXES = {"x": np.array([1.0, 0.0, 0.0]), "y": np.array([0.0, 1.0, 0.0]), "z": np.array([0.0, 0.0, 1.0])}


class PoseFormatError(ValueError):
    """A pose file that cannot be parsed (wrong columns, non-numeric values, missing keys)."""


def parse_axis(spec: str) -> np.ndarray:
    """``"x"``, ``"+y"``, ``"-z"`` ... -> a unit 3-vector."""
    text = spec.strip().lower()
    sign = -1.0 if text.startswith("-") else 1.0
    name = text.lstrip("+-")
    if name not in _AXES or len(text) - len(name) > 1:
        raise ValueError(f"axis must be one of x, y, z with an optional +/- sign, got {spec!r}")
    return sign * _AXES[name]


@dataclass(frozen=True)
class GroundFrame:
    """How 3-D poses map to the 2-D ground plane.

    Args:
        up: world axis opposite to gravity. Default ``"-y"``: monocular SLAM (DPVO, ORB-SLAM) starts
            its world at the first camera, whose OpenCV frame has +y pointing down. Use ``"z"``
            for ENU / robot odometry worlds.
        forward: body axis that points where the platform goes. Default ``"+z"`` (camera optical
            axis); ``"+x"`` for a robot base (REP-103).

    The plane basis (e1, e2) satisfies e1 x e2 = up, so it is right-handed seen from above and a
    left turn in 3-D stays a left turn (yaw increasing, counter-clockwise) in 2-D. e1 is the
    forward axis when it is horizontal (so the first camera of a SLAM world looks along +x), else
    the first world axis orthogonal to up. The 2-D frame is thus fixed only up to a rigid
    transform of the plane, which is all the training targets (robot-frame waypoints) need.
    """

    up: str = "-y"
    forward: str = "+z"

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        up = parse_axis(self.up)
        forward = parse_axis(self.forward)
        candidates = [forward] + [a for a in _AXES.values()]
        e1 = next(c for c in candidates if abs(float(c @ up)) < 0.5)
        e2 = np.cross(up, e1)
        return e1, e2, up

    def project(self, positions: np.ndarray, quaternions_xyzw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N,3] positions and [N,4] (x,y,z,w) quaternions -> ([N,2] xy, [N] yaw); NaN where undefined."""
        e1, e2, _ = self.basis()
        forward_world = rotate(quaternions_xyzw, parse_axis(self.forward))
        fx, fy = forward_world @ e1, forward_world @ e2
        yaw = np.arctan2(fy, fx)
        yaw[np.hypot(fx, fy) < MIN_HORIZONTAL] = np.nan  # looking straight up/down: heading undefined
        xy = np.stack([positions @ e1, positions @ e2], -1)
        return xy, yaw


def rotate(quaternions_xyzw: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Rotate one 3-vector by [N,4] (x,y,z,w) quaternions (normalised here; zero ones give NaN)."""
    q = np.asarray(quaternions_xyzw, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    qv, w = q[:, :3], q[:, 3:]
    v = np.broadcast_to(vector, qv.shape)
    t = 2.0 * np.cross(qv, v)
    return v + w * t + np.cross(qv, t)


def read_tum(path: str | Path, frame: GroundFrame = GroundFrame()) -> Trajectory:
    """Read a TUM trajectory file and project it onto the ground plane described by ``frame``."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding=TEXT_ENCODING).splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.replace(",", " ").split()
        if len(fields) != 8:
            raise PoseFormatError(f"{path}:{number}: TUM lines have 8 values (t tx ty tz qx qy qz qw), got {len(fields)}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError as exc:
            raise PoseFormatError(f"{path}:{number}: {exc}") from exc
    if not rows:
        raise PoseFormatError(f"{path}: no poses")
    data = np.asarray(rows, np.float64)
    xy, yaw = frame.project(data[:, 1:4], data[:, 4:8])
    return Trajectory(t=data[:, 0], xy=xy, yaw=yaw)


def read_csv(path: str | Path) -> Trajectory:
    """Read a planar ``t,x,y,yaw`` CSV (header required, extra columns ignored)."""
    with open(path, newline="", encoding=TEXT_ENCODING) as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise PoseFormatError(f"{path}: CSV header must name columns {list(CSV_COLUMNS)}; missing {missing}, found {header}")
        reader.fieldnames = header
        rows = []
        for number, row in enumerate(reader, 2):
            try:
                rows.append([float(row[c]) for c in CSV_COLUMNS])
            except (TypeError, ValueError) as exc:
                raise PoseFormatError(f"{path}:{number}: non-numeric or missing value ({exc})") from exc
    if not rows:
        raise PoseFormatError(f"{path}: no poses")
    data = np.asarray(rows, np.float64)
    return Trajectory(t=data[:, 0], xy=data[:, 1:3], yaw=data[:, 3])


def read_gnm(folder: str | Path, fps: Optional[float]) -> Trajectory:
    """Read ``<folder>/traj_data.pkl`` (restricted unpickler) with pose ``i`` at ``i / fps``."""
    if fps is None or not fps > 0:
        raise PoseFormatError("the gnm format has no timestamps: pass the recording rate with --fps")
    path = Path(folder) / GNM_POSE_FILE
    try:
        data = restricted_load(path)
    except (pickle.UnpicklingError, OSError) as exc:
        raise PoseFormatError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or "position" not in data or "yaw" not in data:
        raise PoseFormatError(f"{path}: expected a dict with 'position' [T,2] and 'yaw' [T]")
    try:
        position = np.asarray(data["position"], np.float64)
        yaw = np.asarray(data["yaw"], np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PoseFormatError(f"{path}: position/yaw are not numeric arrays ({exc})") from exc
    if position.ndim != 2 or position.shape[1] < 2 or position.shape[0] != yaw.shape[0]:
        raise PoseFormatError(f"{path}: position must be [T,2] and yaw [T], got {position.shape} and {yaw.shape}")
    t = np.arange(yaw.shape[0], dtype=np.float64) / float(fps)
    return Trajectory(t=t, xy=position[:, :2].copy(), yaw=yaw)


def read_poses(path: str | Path, pose_format: str, *, frame: GroundFrame = GroundFrame(), fps: Optional[float] = None) -> Trajectory:
    """Dispatch on ``pose_format`` (one of :data:`POSE_FORMATS`)."""
    if pose_format == "tum":
        return read_tum(path, frame)
    if pose_format == "csv":
        return read_csv(path)
    if pose_format == "gnm":
        return read_gnm(path, fps)
    raise ValueError(f"unknown pose format {pose_format!r}; choose from {POSE_FORMATS}")
