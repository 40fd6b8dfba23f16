"""Streaming policy evaluation: ``PolicyAgent`` encodes one new frame per env per step
(``FrameFeatureCache``) and still commands exactly what the full k-frame forward does, through
staggered resets, a camera ablation, an agent that joins mid-episode and a new env."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from s2e.bench.agents import FrameFeatureCache, PolicyAgent
from s2e.bench.runner import ablate_frames
from s2e.model import PolicyConfig, S2EPolicy
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.generator import SceneConfig
from s2e.timing import TimingSpec

M, T, S, N = 6, 10, 32, 4
TIMING = TimingSpec()  # 5 frames 0.2 s apart at a 0.1 s control period: stride 2, a ring of 9 steps
# Routes of 6-12 m with a time limit of 0.15 * route / max speed + 0.3 s: episodes of ~10-13 steps
# that end (and reset) at different steps in different envs, each longer than the frame ring.
SHORT = NavEnvConfig(
    task="both", timing=TIMING, image_size=(S, S), scene=replace(SceneConfig(), route_length=(6.0, 12.0)), time_limit_factor=0.15, time_limit_slack=0.3
)


def _policy() -> S2EPolicy:
    torch.manual_seed(0)
    config = PolicyConfig.preset("small", num_anchors=M, image_size=(S, S), d_model=32, cnn_channels=(8, 16, 16, 32), fusion_heads=2)
    points = torch.randn(M, 2) * 3
    trajectories = torch.linspace(0.1, 1.0, T)[None, :, None] * points[:, None, :]
    return S2EPolicy(config, points, trajectories).eval()


@pytest.mark.parametrize("frames", ["real", "grey", "shuffled"])
def test_streaming_commands_equal_the_full_forward_through_resets(frames: str) -> None:
    assert TIMING.frame_stride == 2
    policy = _policy()
    full = PolicyAgent(policy, TIMING, "full", streaming=False)
    stream = PolicyAgent(policy, TIMING, "stream")
    late = PolicyAgent(policy, TIMING, "late")  # joins each env mid-episode
    cache = FrameFeatureCache()  # the same cache, fed a counting encoder
    counts: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        counts.append(x.shape[0] * x.shape[1])
        return policy.encode_frames(x)

    staggered, steps, sensitive = 0, 0, False
    for seed in (3, 4):  # a second env: the agents' caches must not carry over
        env = NavEnv(SHORT, num_envs=N, seed=seed)
        obs = env.reset()
        for step in range(40):
            seen = ablate_frames(obs, frames)
            action = full.act(seen, env)
            torch.testing.assert_close(stream.act(seen, env), action, atol=1e-5, rtol=0)
            if step >= 7:
                torch.testing.assert_close(late.act(seen, env), action, atol=1e-5, rtol=0)
            torch.testing.assert_close(cache.encode(counting, seen["frames"], env), policy.encode_frames(seen["frames"]), atol=1e-5, rtol=0)
            if frames == "real" and step == 20:  # the commands do depend on the frames: a stale feature would show
                sensitive = not torch.allclose(full.act(ablate_frames(obs, "grey"), env), action, atol=1e-3)
            _, obs = env.step_and_maybe_reset(obs.set("action", action))
            fresh = env.time == 0
            staggered += int(fresh.any() and not fresh.all())
            steps += 1
    assert staggered >= 4  # partial resets happened, at different steps in different envs
    k = TIMING.context_frames
    if frames == "shuffled":  # another env's frames follow that env's resets: misses, each encoded whole
        assert max(counts) > N and sum(counts) < steps * N * k
    else:
        assert counts == [N] * steps  # one new frame per env per step, resets included
        assert sensitive or frames == "grey"
