"""What the ``ram`` strategy's collector stores equals the plain full-window policy: the frame-feature
cache (``s2e.rl.features``: every stacked frame encoded at every step instead), over steps with
partial resets, at frame strides 1, 2 and 3, while it encodes about one frame per env and step; and
the decoder that reads the RAM's stored frozen half (``ResidualDecoder``) instead of
``S2EPolicy.decode_from_context``."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from test_rl_distribution import _tiny_policy
from torchrl.envs import Compose, RenameTransform, RewardSum, TransformedEnv

from s2e.control import ControllerLimits
from s2e.rl.actor import DIST_KEYS, FROZEN_KEY, LOG_PROB_KEY, TRAJECTORY_KEY, Exploration, PolicyDecoder, TrajectoryController, ValueHead, build_actor_critic
from s2e.rl.collect import make_collector, make_rollout_env
from s2e.rl.features import FEATURES_KEY, FrameFeatures
from s2e.rl.strategy import apply_strategy
from s2e.rl.trajectory_distribution import AnchorTrajectoryDistribution
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.timing import TimingSpec

ENVS, STEPS = 4, 24


@pytest.mark.parametrize("frame_dt", [0.1, 0.2, 0.3])
def test_cached_collection_equals_the_full_window_path_over_partial_resets(frame_dt: float) -> None:
    timing = TimingSpec(frame_dt=frame_dt)
    stride, k = timing.frame_stride, timing.context_frames
    policy = _tiny_policy()
    with torch.no_grad():  # a RAM policy some updates in: the residual branch changes the outputs
        torch.manual_seed(4)
        for param in apply_strategy(policy, "ram"):
            param.add_(torch.randn_like(param) * 0.05)
    limits = ControllerLimits(max_speed=1.5, max_yaw_rate=1.5)
    exploration = Exploration(0.5, 0.5)
    modules = build_actor_critic(policy, ValueHead(32), timing.waypoint_dt, limits, encoder_trainable=False, exploration=exploration)
    # time limits of ~5-7 steps that differ by route length: envs reset at different steps
    config = NavEnvConfig(task="pedestrian", image_size=(32, 32), timing=timing, time_limit_factor=0.02, time_limit_slack=0.3)
    features = FrameFeatures(policy, stride)
    keep_raw = RenameTransform(["frames"], ["raw_frames"], create_copy=True)  # the test's view of what the env stacked
    env = TransformedEnv(NavEnv(config, num_envs=ENVS, seed=1), Compose(RewardSum(), keep_raw, features))
    collector = make_collector(lambda: env, modules.feature_policy, ENVS * STEPS, kind="sync", seed=2)
    try:
        encoded_before = features.encoded_frames
        batch = next(iter(collector))
        encoded = features.encoded_frames - encoded_before
    finally:
        collector.shutdown()
    assert batch.shape == (ENVS, STEPS) and "frames" not in batch.keys() and FROZEN_KEY in batch.keys()

    done = batch["next", "done"].squeeze(-1)
    assert (done.any(0) & ~done.all(0)).any(), "no partial reset happened"
    assert int(done.sum()) >= ENVS

    flat = batch.reshape(-1)
    with torch.no_grad():
        for obs in (flat, flat["next"]):  # observations after steps and after (partial) resets
            torch.testing.assert_close(obs[FEATURES_KEY], policy.encode_frames(obs["raw_frames"]), atol=1e-5, rtol=0)
        full = modules.context(TensorDict(frames=flat["raw_frames"], goal=flat["goal"], batch_size=flat.shape))["context"]
        torch.testing.assert_close(flat["context"], full, atol=1e-5, rtol=0)
        params = PolicyDecoder(policy, exploration)(full)  # the whole RAM through decode_from_context
        for key, value in zip([*DIST_KEYS, "scale"], params):
            torch.testing.assert_close(flat[key], value, atol=1e-5, rtol=0)
        dist = AnchorTrajectoryDistribution(*params[:4])
        torch.testing.assert_close(flat[LOG_PROB_KEY], dist.log_prob(flat[TRAJECTORY_KEY]), atol=1e-5, rtol=0)
        # what PPO's actor recomputes from the stored context and frozen half
        torch.testing.assert_close(modules.actor.get_dist(flat.select("context", FROZEN_KEY)).log_prob(flat[TRAJECTORY_KEY]), flat[LOG_PROB_KEY])
        action = TrajectoryController(timing.waypoint_dt, limits)(flat[TRAJECTORY_KEY], *params)
        torch.testing.assert_close(flat["action"], action, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            flat["state_value"], modules.critic(TensorDict(context=full, goal=flat["goal"], batch_size=flat.shape))["state_value"], atol=1e-5, rtol=0
        )

    # one new frame per env and step, plus each episode start's stack and the in-between ring slots
    # that enter the stack over its next stride - 1 steps (the full window: k frames per env and step)
    per_start = k + (stride - 1) * (k - 1)
    assert ENVS * STEPS <= encoded <= ENVS * STEPS + (int(done.sum()) + ENVS) * per_start
    assert encoded < 0.7 * k * ENVS * STEPS


def test_the_training_env_drops_frames_and_refuses_to_run_outside_reset_and_step() -> None:
    policy = _tiny_policy()
    env = make_rollout_env(NavEnvConfig(task="empty", image_size=(32, 32)), 2, features=policy)
    assert "frames" not in env.observation_spec.keys() and env.observation_spec[FEATURES_KEY].shape == (2, 5, 32)
    td = env.reset()
    assert td[FEATURES_KEY].shape == (2, 5, 32) and "frames" not in td.keys()
    with pytest.raises(RuntimeError, match="stateful"):
        env.transform[-1](td)
