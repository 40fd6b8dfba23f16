import io

import numpy as np
import pytest
import torch

from conftest import curved_trajectory, encode_indexed_video, read_frame_index
from s2e import geometry
from s2e.timing import TimingMismatchError, TimingSpec


def test_timing_offsets_and_round_trip():
    spec = TimingSpec(context_frames=3, frame_dt=0.5, num_waypoints=4, waypoint_dt=0.25, control_dt=0.1)
    np.testing.assert_allclose(spec.context_offsets(), [-1.0, -0.5, 0.0])
    np.testing.assert_allclose(spec.waypoint_offsets(), [0.25, 0.5, 0.75, 1.0])
    assert TimingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown TimingSpec fields"):
        TimingSpec.from_dict({**spec.to_dict(), "fps": 3})


@pytest.mark.parametrize("bad", [{"frame_dt": 0.0}, {"context_frames": 0}, {"waypoint_dt": float("nan")}])
def test_timing_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="TimingSpec"):
        TimingSpec(**bad)


def test_timing_mismatch_names_each_field():
    with pytest.raises(TimingMismatchError, match="frame_dt: model=0.2 vs data=0.25.*num_waypoints"):
        TimingSpec().check_compatible(TimingSpec(frame_dt=0.25, num_waypoints=8))
    TimingSpec().check_compatible(TimingSpec())


@pytest.mark.parametrize(("frame_dt", "control_dt", "stride"), [(0.2, 0.1, 2), (0.3, 0.1, 3), (0.1, 0.1, 1), (1 / 3, 1 / 30, 10)])
def test_frame_stride_is_the_whole_number_of_control_periods_per_frame_period(frame_dt, control_dt, stride):
    assert TimingSpec(frame_dt=frame_dt, control_dt=control_dt).frame_stride == stride


@pytest.mark.parametrize(("frame_dt", "control_dt"), [(0.25, 0.1), (0.05, 0.1), (0.2000003, 0.1)])
def test_frame_stride_refuses_a_frame_period_that_is_not_a_whole_number_of_control_periods(frame_dt, control_dt):
    spec = TimingSpec(frame_dt=frame_dt, control_dt=control_dt)  # a valid spec: data alone needs no stride
    with pytest.raises(ValueError, match=rf"TimingSpec.frame_dt \({frame_dt} s\) must be a whole multiple of control_dt \({control_dt} s\)"):
        spec.frame_stride


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_robot_frame_round_trip_and_heading(lib):
    rng = np.random.default_rng(0)
    pts, origin, yaw = rng.normal(size=(4, 7, 2)), rng.normal(size=(4, 2)), rng.uniform(-np.pi, np.pi, 4)
    if lib == "torch":
        pts, origin, yaw = map(torch.as_tensor, (pts, origin, yaw))
    local = np.asarray(geometry.to_robot_frame(pts, origin, yaw))
    c, s = np.cos(np.asarray(yaw))[:, None], np.sin(np.asarray(yaw))[:, None]  # back: rotate by +yaw, then shift
    back = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1]], -1) + np.asarray(origin)[:, None]
    np.testing.assert_allclose(back, np.asarray(pts), atol=1e-12)
    # a point one metre ahead of a robot facing +y (yaw=pi/2) is at world (0, 1) from it
    ahead = geometry.to_robot_frame(np.array([[[0.0, 1.0]]]), np.zeros((1, 2)), np.array([np.pi / 2]))
    np.testing.assert_allclose(ahead, [[[1.0, 0.0]]], atol=1e-12)


def test_goal_encoding_and_scale():
    enc = geometry.goal_encoding(np.array([[0.0, 2.0], [3.0, 0.0]]))
    np.testing.assert_allclose(enc, [[2.0, 0.0, 1.0], [3.0, 1.0, 0.0]], atol=1e-12)
    wps = np.cumsum(np.full((10, 2), [0.3, 0.4]), 0)  # steps of 0.5 m
    assert geometry.trajectory_scale(wps) == pytest.approx(0.5)
    assert geometry.trajectory_scale(np.zeros((10, 2))) == geometry.MIN_SCALE


def test_yaw_interpolation_crosses_pi_the_short_way():
    t = np.array([0.0, 1.0])
    _, yaw = geometry.interpolate_poses(np.array([0.5]), t, np.zeros((2, 2)), np.array([np.pi - 0.1, -np.pi + 0.1]))
    assert abs(abs(yaw[0]) - np.pi) < 1e-9


def test_indexed_video_survives_encoding_with_bframes():
    import decord

    data = encode_indexed_video(40, fps=10, bframes=2)
    vr = decord.VideoReader(io.BytesIO(data))
    frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    assert [read_frame_index(f) for f in frames] == list(range(40))
    assert len(curved_trajectory(40, 10).validate()) == 40
