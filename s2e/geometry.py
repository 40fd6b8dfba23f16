"""SE(2) geometry shared by data, simulator and policy.

Conventions (ROS REP-103, used everywhere in s2e):
- world frame: x, y on the ground plane, yaw counter-clockwise from +x, radians;
- robot frame: +x forward, +y to the robot's left;
- a trajectory "in the robot frame" is expressed relative to the robot pose at the current frame.

The functions accept numpy arrays or torch tensors (same code path, chosen by the input type), so
the datamodule (numpy) and the simulator/model (torch) cannot drift apart. :func:`goal_encoding`
also compiles under TorchScript (its tensor path), so the exported policy encodes a goal with the
same function that encoded the training data's goals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np
import torch

if TYPE_CHECKING:
    Array = Union[np.ndarray, torch.Tensor]
else:
    # What TorchScript reads when it compiles goal_encoding into an export: the tensor path only.
    Array = torch.Tensor

#: Smallest trajectory scale (metres per step) used for normalization: a robot standing still has
#: a scale of ~0, and dividing by it would blow the normalized trajectory up.
MIN_SCALE = 0.05


def _xp(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def wrap_angle(angle: Array) -> Array:
    """Wrap angles to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def to_robot_frame(points_xy: Array, origin_xy: Array, origin_yaw: Array) -> Array:
    """Express world points [..., N, 2] in the frame of the pose (origin_xy [..., 2], origin_yaw [...])."""
    xp = _xp(points_xy)
    d = points_xy - origin_xy[..., None, :]
    c, s = xp.cos(origin_yaw)[..., None], xp.sin(origin_yaw)[..., None]
    return xp.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def goal_encoding(goal_xy_robot: Array) -> Array:
    """(distance, cos, sin) of a goal point [..., 2] in the robot frame; cos=1, sin=0 at the goal."""
    if torch.jit.is_scripting():
        xp = torch
    else:
        xp = _xp(goal_xy_robot)
    dist = xp.sqrt((goal_xy_robot**2).sum(-1))
    bearing = xp.arctan2(goal_xy_robot[..., 1], goal_xy_robot[..., 0])
    return xp.stack([dist, xp.cos(bearing), xp.sin(bearing)], -1)


def trajectory_scale(waypoints: Array, min_scale: float = MIN_SCALE) -> Array:
    """Mean step length (metres per waypoint step) of trajectories [..., T, 2] that start at the origin.

    CityWalker-style normalization: dividing by it makes a slow and a fast robot following the same
    path produce the same normalized trajectory, so one anchor set serves both embodiments.
    """
    xp = _xp(waypoints)
    start = xp.zeros_like(waypoints[..., :1, :])
    path = xp.concatenate([start, waypoints], -2) if xp is np else torch.cat([start, waypoints], -2)
    steps = xp.sqrt(((path[..., 1:, :] - path[..., :-1, :]) ** 2).sum(-1))
    scale = steps.mean(-1)
    return xp.maximum(scale, min_scale) if xp is np else scale.clamp_min(min_scale)


def mirror_lateral(points_xy: Array) -> Array:
    """Mirror robot-frame points left/right (the trajectory that goes with a horizontally flipped image)."""
    out = points_xy.copy() if isinstance(points_xy, np.ndarray) else points_xy.clone()
    out[..., 1] = -out[..., 1]
    return out


def interpolate_poses(t_query: np.ndarray, t: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate positions, and yaw on the circle, at times ``t_query``.

    Yaw is unwrapped before interpolation so that going from +179 deg to -179 deg passes through 180,
    not through 0. ``t`` must be strictly increasing; queries outside [t0, tN] are clamped.
    """
    x = np.interp(t_query, t, xy[:, 0])
    y = np.interp(t_query, t, xy[:, 1])
    yaw_q = wrap_angle(np.interp(t_query, t, np.unwrap(yaw)))
    return np.stack([x, y], -1), yaw_q
