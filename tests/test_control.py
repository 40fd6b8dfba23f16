"""The shared pure-pursuit controller: geometry of the command, limits, gradients, TorchScript."""

from __future__ import annotations

import math

import pytest
import torch

from s2e.control import ControllerLimits, command_from_limits, smooth_clamp, waypoints_to_command

DT = 0.3
WIDE = ControllerLimits(max_speed=10.0, max_yaw_rate=10.0, lookahead_time=0.6)


def straight(step: float, num: int = 10) -> torch.Tensor:
    x = torch.arange(1, num + 1, dtype=torch.float64) * step
    return torch.stack([x, torch.zeros_like(x)], -1)[None]


def arc(radius: float, speed: float, num: int = 10) -> torch.Tensor:
    """Waypoints on a left circle of ``radius`` through the origin, heading +x, at ``speed``."""
    t = torch.arange(1, num + 1, dtype=torch.float64) * DT
    angle = speed * t / radius
    return torch.stack([radius * torch.sin(angle), radius * (1 - torch.cos(angle))], -1)[None]


def test_straight_line_gives_zero_yaw_rate_and_step_over_dt() -> None:
    command = command_from_limits(straight(0.24), DT, WIDE)[0]
    assert command[0].item() == pytest.approx(0.24 / DT, rel=1e-6)
    assert command[1].item() == pytest.approx(0.0, abs=1e-9)


def test_left_arc_turns_left_at_the_arc_rate_and_right_is_the_mirror() -> None:
    left = arc(radius=2.0, speed=0.8)
    command = command_from_limits(left, DT, WIDE)[0]
    assert command[1] > 0
    # pure pursuit on a point of the circle recovers the circle's curvature exactly
    assert (command[1] / command[0]).item() == pytest.approx(1 / 2.0, rel=1e-6)
    assert command[0].item() == pytest.approx(0.8, rel=1e-3)  # chord vs arc length
    right = left * torch.tensor([1.0, -1.0], dtype=torch.float64)
    mirrored = command_from_limits(right, DT, WIDE)[0]
    torch.testing.assert_close(mirrored, command * torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_limits_are_respected_and_curvature_is_kept_when_the_yaw_rate_saturates() -> None:
    limits = ControllerLimits(max_speed=1.0, max_yaw_rate=0.5, lookahead_time=0.6)
    fast = command_from_limits(straight(3.0), DT, limits)[0]
    assert 0.8 < fast[0].item() <= 1.0
    tight = arc(radius=0.5, speed=0.9)
    command = command_from_limits(tight, DT, limits)[0]
    assert 0.4 < command[1].item() < 0.5
    unlimited = command_from_limits(tight, DT, WIDE)[0]
    assert (command[1] / command[0]).item() == pytest.approx((unlimited[1] / unlimited[0]).item(), rel=1e-6)
    wild = torch.randn(256, 10, 2, dtype=torch.float64) * 20
    commands = command_from_limits(wild, DT, limits)
    assert (commands[:, 0] >= 0).all() and (commands[:, 0] <= 1.0).all() and (commands[:, 1].abs() <= 0.5).all()


def test_a_standing_plan_gives_zero_and_a_lookahead_past_the_horizon_uses_the_last_point() -> None:
    command = command_from_limits(torch.zeros(1, 10, 2, dtype=torch.float64), DT, WIDE)[0]
    assert command.abs().max().item() < 1e-3
    far = ControllerLimits(max_speed=10.0, max_yaw_rate=10.0, lookahead_time=100.0)
    assert command_from_limits(straight(0.24), DT, far)[0, 0].item() == pytest.approx(0.24 / DT, rel=1e-6)


def test_smooth_clamp_is_identity_below_the_knee_and_monotone_above() -> None:
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    y = smooth_clamp(x, 2.0)
    inside = x.abs() <= 1.6
    torch.testing.assert_close(y[inside], x[inside])
    assert (y.diff() > 0).all() and y.abs().max() <= 2.0


def test_gradcheck_through_the_controller() -> None:
    torch.manual_seed(0)
    limits = (1.0, 0.8, 0.75)  # some of these samples saturate, some do not
    waypoints = (
        torch.cumsum(
            torch.rand(4, 10, 2, dtype=torch.float64) * torch.tensor([0.4, 0.2], dtype=torch.float64) - torch.tensor([0.0, 0.1], dtype=torch.float64), 1
        )
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: waypoints_to_command(w, DT, *limits), (waypoints,))


def test_scripted_controller_matches_eager() -> None:
    scripted = torch.jit.script(waypoints_to_command)
    waypoints = torch.randn(8, 10, 2)
    torch.testing.assert_close(scripted(waypoints, DT, 1.2, 0.9, 0.6), waypoints_to_command(waypoints, DT, 1.2, 0.9, 0.6))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"\[B, T, 2\]"):
        waypoints_to_command(torch.zeros(10, 2), DT, 1.0, 1.0, 0.6)
    with pytest.raises(ValueError, match="max_speed"):
        ControllerLimits(max_speed=-1.0)
    with pytest.raises(ValueError, match="max_speed"):
        ControllerLimits(max_speed=math.nan)
