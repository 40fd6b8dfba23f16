"""The Isaac Lab adapter maps an Isaac Lab navigation task's keys onto s2e's frames, goal, action and timing.

Isaac Lab needs an NVIDIA GPU and Isaac Sim, so the mapping is tested against ``StandInIsaacNavEnv``:
a stand-in (not Isaac Lab) with the structure ``torchrl.envs.libs.isaac_lab.IsaacLabWrapper`` produces
for a manager-based navigation task: a ``"policy"`` vector base_lin_vel(3), projected_gravity(3),
pose_command(x, y, z, heading) in the robot frame, tiled-camera ``"pixels"`` [N, H, W, 3] uint8, and a
(vx, vy, wz) velocity-command action. Its pixels carry the step count so frame stacking is checkable.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs

from s2e.external.isaac_lab import IsaacNavAdapter, IsaacNavMapping, make_isaac_nav_env
from s2e.geometry import goal_encoding, to_robot_frame
from s2e.timing import TimingMismatchError, TimingSpec

N, H, W = 2, 6, 8
DT = 0.1


class StandInIsaacNavEnv(EnvBase):
    """Stand-in for ``IsaacLabWrapper(gym.make("Isaac-Navigation-...") , from_tiled_camera=True)`` (see module docstring)."""

    def __init__(self, policy_width: int = 10):
        super().__init__(batch_size=torch.Size([N]))
        self.observation_spec = Composite(policy=Unbounded(shape=(N, policy_width)), pixels=Bounded(0, 255, shape=(N, H, W, 3), dtype=torch.uint8), shape=(N,))
        self.action_spec = Bounded(-2.0, 2.0, shape=(N, 3))
        self.reward_spec = Unbounded(shape=(N, 1))
        self.goal = torch.tensor([[4.0, 3.0], [-2.0, 5.0]])
        self.received: list[torch.Tensor] = []

    def _obs(self) -> TensorDict:
        goal = to_robot_frame(self.goal[:, None], self.xy, self.yaw)[:, 0]
        policy = torch.zeros(N, self.observation_spec["policy"].shape[-1])
        policy[:, 5] = -1.0  # gravity
        policy[:, 6:8] = goal
        pixels = self.count.view(N, 1, 1, 1).expand(N, H, W, 3).to(torch.uint8)
        done = torch.zeros(N, 1, dtype=torch.bool)
        return TensorDict(policy=policy, pixels=pixels, done=done, terminated=done.clone(), truncated=done.clone(), batch_size=[N])

    def _reset(self, td=None, **kwargs):
        mask = torch.ones(N, dtype=torch.bool) if td is None or "_reset" not in td.keys() else td["_reset"].reshape(N)
        if not hasattr(self, "xy"):
            self.xy, self.yaw, self.count = torch.zeros(N, 2), torch.zeros(N), torch.zeros(N, dtype=torch.long)
        self.xy[mask], self.yaw[mask], self.count[mask] = 0.0, 0.0, 100 * torch.arange(N)[mask]
        return self._obs()

    def _step(self, td):
        action = td["action"]
        self.received.append(action.clone())
        self.yaw = self.yaw + action[:, 2] * DT
        self.xy = self.xy + action[:, :1] * DT * torch.stack([torch.cos(self.yaw), torch.sin(self.yaw)], -1)
        self.count = self.count + 1
        out = self._obs()
        out["reward"] = -torch.ones(N, 1)
        return out

    def _set_seed(self, seed):
        return seed


TIMING = TimingSpec(context_frames=3, frame_dt=0.2, control_dt=DT)


def test_goal_is_the_pose_command_as_distance_cos_sin():
    env = IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, control_dt=DT)
    check_env_specs(env)  # specs and outputs agree, as collectors require
    td = env.reset()
    torch.testing.assert_close(td["goal"], goal_encoding(torch.tensor([[4.0, 3.0], [-2.0, 5.0]])))
    assert td["goal"][0, 0].item() == pytest.approx(5.0)
    env.observation_spec.assert_is_in(td.select("frames", "goal"))


def test_v_omega_go_to_their_command_slots_within_the_robot_limits():
    base = StandInIsaacNavEnv()
    env = IsaacNavAdapter(base, TIMING, control_dt=DT, robot="quadruped")
    td = env.reset()
    env.step(td.set("action", torch.tensor([[0.8, 0.3], [5.0, -9.0]])))
    limits = env.robot
    torch.testing.assert_close(base.received[-1], torch.tensor([[0.8, 0.0, 0.3], [limits.max_speed, 0.0, -limits.max_omega]]))
    # After turning 0.3 rad/s for one step and driving, the goal is re-expressed in the new robot frame.
    td = env.step(td.set("action", torch.tensor([[0.0, 0.0], [0.0, 0.0]])))["next"]
    expected = to_robot_frame(base.goal[:, None], base.xy, base.yaw)[:, 0]
    torch.testing.assert_close(td["goal"], goal_encoding(expected))
    assert td["reward"].shape == (N, 1) and td["done"].shape == (N, 1)


def test_frames_are_stacked_every_frame_dt_as_nchw_uint8():
    env = IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, control_dt=DT)  # stride 2 control steps, k = 3
    td = env.reset()
    assert td["frames"].shape == (N, 3, 3, H, W) and td["frames"].dtype == torch.uint8
    assert td["frames"][0, :, 0, 0, 0].tolist() == [0, 0, 0]  # history before the episode = the first frame
    for _ in range(5):
        td = env.step(td.set("action", torch.zeros(N, 2)))["next"]
    assert td["frames"][0, :, 0, 0, 0].tolist() == [1, 3, 5]  # steps 1, 3, 5: 0.2 s apart, newest last
    assert td["frames"][1, :, 2, 3, 4].tolist() == [101, 103, 105]


def test_partial_reset_restarts_only_the_masked_envs_history():
    env = IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, control_dt=DT)
    td = env.reset()
    for _ in range(4):
        td = env.step(td.set("action", torch.zeros(N, 2)))["next"]
    td = env.reset(td.set("_reset", torch.tensor([[False], [True]])))  # as a collector does after env 1 is done
    assert td["frames"][0, :, 0, 0, 0].tolist() == [0, 2, 4]
    assert td["frames"][1, :, 0, 0, 0].tolist() == [100, 100, 100]
    td = env.step(td.set("action", torch.zeros(N, 2)))["next"]
    assert td["frames"][:, :, 0, 0, 0].tolist() == [[1, 3, 5], [100, 100, 101]]


def test_control_period_must_match_the_timing():
    with pytest.raises(TimingMismatchError, match="steps every 0.02 s but the policy's TimingSpec.control_dt is 0.1 s"):
        IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, control_dt=0.02)


def test_mapping_that_does_not_fit_the_task_is_a_clear_error():
    with pytest.raises(ValueError, match="no camera pixels key 'rgb'"):
        IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, DT, IsaacNavMapping(pixels_key="rgb"))
    with pytest.raises(ValueError, match="goal_start 6 needs 2 slots, but 'policy' has only 7 entries"):
        IsaacNavAdapter(StandInIsaacNavEnv(policy_width=7), TIMING, DT)
    with pytest.raises(ValueError, match="action has 3 entries, IsaacNavMapping.action_dim says 2"):
        IsaacNavAdapter(StandInIsaacNavEnv(), TIMING, DT, IsaacNavMapping(action_dim=2, omega_index=1))
    with pytest.raises(ValueError, match="two different slots"):
        IsaacNavMapping(v_index=1, omega_index=1)


def test_without_isaac_lab_the_error_says_what_to_install_and_from_where():
    try:
        import isaaclab  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("Isaac Lab is installed here")
    with pytest.raises(ImportError, match=r"pypi\.nvidia\.com.*isaac-sim\.github\.io/IsaacLab"):
        make_isaac_nav_env("Isaac-Navigation-Flat-Anymal-C-v0", num_envs=1)
