"""Pose readers: TUM ground-plane projection in both axis conventions, CSV columns, GNM pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from datamodules.pose_formats import GroundFrame, PoseFormatError, parse_axis, read_csv, read_gnm, read_poses, read_tum
from s2e.geometry import wrap_angle


def planar_path() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straight, then a 90-degree left turn, then straight (t, xy [T,2], yaw [T])."""
    t = np.arange(60) * 0.1
    yaw_rate = np.where((t > 2.0) & (t <= 4.0), np.pi / 4, 0.0)
    yaw = 0.2 + np.cumsum(yaw_rate * 0.1)
    xy = np.cumsum(np.stack([np.cos(yaw), np.sin(yaw)], -1) * 0.1, axis=0)
    return t, xy, yaw


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """(x, y, z, w) for a rotation matrix (w > 0 branch is enough for these test rotations)."""
    w = np.sqrt(1.0 + np.trace(r)) / 2.0
    return np.array([(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w])


def rot_about(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def write_tum(path, t, positions, rotations) -> None:
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for ti, p, r in zip(t, positions, rotations):
        q = quat_from_matrix(r)
        lines.append(" ".join(f"{v:.9f}" for v in [ti, *p, *q]))
    path.write_text("\n".join(lines) + "\n")


def assert_same_up_to_rigid(xy_a, yaw_a, xy_b, yaw_b) -> None:
    """xy_b, yaw_b equal xy_a, yaw_a after one rotation + translation of the plane (no reflection)."""
    offset = wrap_angle(yaw_b[0] - yaw_a[0])
    c, s = np.cos(offset), np.sin(offset)
    rotated = (xy_a - xy_a[0]) @ np.array([[c, s], [-s, c]]) + xy_b[0]
    np.testing.assert_allclose(rotated, xy_b, atol=1e-6)
    np.testing.assert_allclose(wrap_angle(yaw_a + offset - yaw_b), 0.0, atol=1e-6)


def test_tum_camera_slam_convention_recovers_planar_path_and_left_turn(tmp_path):
    """World = first OpenCV camera (x right, y down, z forward), gravity along +y: up = -y."""
    t, xy, yaw = planar_path()
    # planar (forward, left) -> camera-world (x=-left, y=height down, z=forward), camera starts at yaw[0]
    rel = yaw - yaw[0]
    c0, s0 = np.cos(-yaw[0]), np.sin(-yaw[0])
    local = (xy - xy[0]) @ np.array([[c0, s0], [-s0, c0]])  # path in the first pose's frame
    pos = np.stack([-local[:, 1], np.full(len(t), 1.5), local[:, 0]], -1)  # camera 1.5 m above ground
    up = np.array([0.0, -1.0, 0.0])
    rots = [rot_about(up, a) for a in rel]
    path = tmp_path / "cam.txt"
    write_tum(path, 100.0 + t, pos, rots)
    traj = read_tum(path)  # defaults: up -y, forward +z
    np.testing.assert_allclose(traj.t, 100.0 + t)
    assert_same_up_to_rigid(xy, yaw, traj.xy, traj.yaw)
    turn = np.diff(np.unwrap(traj.yaw))
    assert turn.sum() == pytest.approx(np.pi / 2, abs=1e-6)  # the left turn is +90 deg (CCW), not -90


def test_tum_enu_robot_convention(tmp_path):
    """ENU/odometry world (z up) with a robot base (forward +x): positions map straight to x, y."""
    t, xy, yaw = planar_path()
    pos = np.concatenate([xy, np.full((len(t), 1), 0.3)], -1)
    rots = [rot_about(np.array([0.0, 0.0, 1.0]), a) for a in yaw]
    path = tmp_path / "odom.tum"
    write_tum(path, t, pos, rots)
    traj = read_poses(path, "tum", frame=GroundFrame(up="z", forward="+x"))
    assert_same_up_to_rigid(xy, yaw, traj.xy, traj.yaw)
    np.testing.assert_allclose(traj.xy, xy, atol=1e-6)  # here the basis is the identity


def test_tum_wrong_convention_does_not_silently_match(tmp_path):
    """Reading camera-world poses as z-up must not reproduce the path (the convention matters)."""
    t, xy, yaw = planar_path()
    pos = np.stack([-xy[:, 1], np.zeros(len(t)), xy[:, 0]], -1)
    rots = [rot_about(np.array([0.0, -1.0, 0.0]), a - yaw[0]) for a in yaw]
    path = tmp_path / "cam.txt"
    write_tum(path, t, pos, rots)
    traj = read_tum(path, GroundFrame(up="z", forward="+x"))
    with pytest.raises(AssertionError):
        assert_same_up_to_rigid(xy, yaw, traj.xy, traj.yaw)


def test_tum_camera_looking_straight_down_has_undefined_heading(tmp_path):
    path = tmp_path / "down.txt"
    # rotate the camera +z axis onto +y (gravity): -90 deg about x
    write_tum(path, [0.0, 0.1], np.zeros((2, 3)), [np.eye(3), rot_about(np.array([1.0, 0, 0]), np.pi / 2)])
    traj = read_tum(path)
    assert np.isfinite(traj.yaw[0]) and np.isnan(traj.yaw[1])


def test_tum_bad_lines_are_clear_errors(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("0 1 2 3 0 0 0\n")
    with pytest.raises(PoseFormatError, match="8 values"):
        read_tum(path)
    path.write_text("0 1 2 3 0 0 0 x\n")
    with pytest.raises(PoseFormatError, match=":1:"):
        read_tum(path)


def test_parse_axis():
    np.testing.assert_array_equal(parse_axis("-y"), [0, -1, 0])
    np.testing.assert_array_equal(parse_axis("Z"), [0, 0, 1])
    for bad in ("w", "+-x", ""):
        with pytest.raises(ValueError):
            parse_axis(bad)


def test_csv_reads_named_columns_in_any_order(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("yaw, speed ,t,x,y\n0.5,1,0.0,1.0,2.0\n0.6,1,0.1,1.5,2.5\n")
    traj = read_csv(path)
    np.testing.assert_allclose(traj.t, [0.0, 0.1])
    np.testing.assert_allclose(traj.xy, [[1.0, 2.0], [1.5, 2.5]])
    np.testing.assert_allclose(traj.yaw, [0.5, 0.6])


def test_csv_missing_column_and_bad_value(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("time,x,y,yaw\n0,1,2,3\n")
    with pytest.raises(PoseFormatError, match=r"missing \['t'\]"):
        read_csv(path)
    path.write_text("t,x,y,yaw\n0,1,2,3\n0.1,1,abc,3\n")
    with pytest.raises(PoseFormatError, match=":3:"):
        read_csv(path)


def test_gnm_reads_pickle_with_fps(tmp_path):
    position = np.random.default_rng(0).normal(size=(7, 2))
    yaw = np.linspace(0, 1, 7)[:, None]  # some GNM datasets store yaw as [T, 1]
    (tmp_path / "traj_data.pkl").write_bytes(pickle.dumps({"position": position, "yaw": yaw}))
    traj = read_gnm(tmp_path, fps=4.0)
    np.testing.assert_allclose(traj.t, np.arange(7) / 4.0)
    np.testing.assert_allclose(traj.xy, position)
    np.testing.assert_allclose(traj.yaw, yaw[:, 0])
    with pytest.raises(PoseFormatError, match="--fps"):
        read_gnm(tmp_path, fps=None)


def test_gnm_wrong_content_is_a_clear_error(tmp_path):
    (tmp_path / "traj_data.pkl").write_bytes(pickle.dumps({"position": np.zeros((3, 2))}))
    with pytest.raises(PoseFormatError, match="'yaw'"):
        read_gnm(tmp_path, fps=5)
    (tmp_path / "traj_data.pkl").write_bytes(pickle.dumps({"position": np.zeros((3, 2)), "yaw": np.zeros(4)}))
    with pytest.raises(PoseFormatError, match=r"\[T,2\]"):
        read_gnm(tmp_path, fps=5)
