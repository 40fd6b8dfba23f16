"""Shared by the ONNX tests: tiny random policies, checkpoints written in the training modules'
format, frames rendered by the simulator, and the parity check of an ONNX export against the
PyTorch policy it came from (ONNX Runtime, CPU provider)."""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import numpy as np
import torch

from s2e.anchors import Anchors
from s2e.bench.agents import StraightToGoalAgent
from s2e.bench.runner import make_env
from s2e.bench.suite import load_suite
from s2e.checkpoint import CHECKPOINT_KEY, POLICY_PREFIX, POSTTRAIN_CLASS, PRETRAIN_CLASS, policy_entry, policy_ram
from s2e.export import DeployablePolicy
from s2e.export_meta import ONNX_FILE
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.model.ram import RAMConfig, wrap_with_ram
from s2e.onnx_runtime import OnnxStreamingPolicy, make_session
from s2e.timing import TimingSpec

#: Stated tolerances of ONNX Runtime (CPU) against the PyTorch policy, float32 both: metres for
#: trajectories, probability for the mixture weights, m/s and rad/s for the command.
TRAJECTORY_ATOL, PROBABILITY_ATOL, COMMAND_ATOL = 1e-4, 1e-5, 1e-4
#: The best mode is compared only where its probability leads the runner-up by more than this
#: (a near tie may pick the other mode under float rounding; never happened in these tests).
TIE_MARGIN = 1e-4

TINY = {"d_model": 32, "cnn_channels": [8, 16, 16, 32], "fusion_heads": 2, "fusion_depth": 1, "num_anchors": 3}


def random_policy(preset: str, seed: int = 0, ram: bool = False, **overrides: Any) -> tuple[S2EPolicy, TimingSpec, Anchors]:
    """A randomly initialised policy of ``preset``; with ``ram`` wrapped by a Residual Attention Module
    whose gates and copy are perturbed away from zero, as after RL post-training (step 0 of RAM is
    the pretrained policy bit for bit, which would test nothing)."""
    torch.manual_seed(seed)
    config = PolicyConfig.preset(preset, **overrides)
    timing = TimingSpec(context_frames=config.context_frames, num_waypoints=config.num_waypoints)
    trajectories = torch.cumsum(torch.rand(config.num_anchors, config.num_waypoints, 2) * torch.tensor([0.3, 0.1]), 1)
    policy = S2EPolicy(config, trajectories[:, -1], trajectories)
    if ram:
        block = wrap_with_ram(policy, RAMConfig())
        with torch.no_grad():
            for param in [*block.gate_in.parameters(), *block.gate_out.parameters(), *block.residual.parameters()]:
                param.add_(torch.randn_like(param) * 0.1)
    anchors = Anchors(points=trajectories[:, -1].numpy(), trajectories=trajectories.numpy(), timing=timing, counts=np.ones(config.num_anchors, np.int64))
    return policy.eval(), timing, anchors


def write_policy_checkpoint(path: pathlib.Path, policy: S2EPolicy, timing: TimingSpec) -> pathlib.Path:
    """The checkpoint PretrainModule (no RAM) or PostTrainModule (RAM, strategy ``ram``) writes: their
    ``on_save_checkpoint`` entry, the policy under ``policy.``, and the class path the CLI records."""
    post = policy_ram(policy) is not None
    stored = policy_entry(policy, timing, strategy="ram" if post else None)
    class_path = POSTTRAIN_CLASS if post else PRETRAIN_CLASS
    torch.save(
        {
            "state_dict": {f"{POLICY_PREFIX}{k}": v for k, v in policy.state_dict().items()},
            CHECKPOINT_KEY: stored,
            "hyper_parameters": {"_class_path": class_path},
        },
        path,
    )
    return path


def rendered_sequence(size: int, steps: int) -> torch.Tensor:
    """[2, steps, 3, size, size] uint8: each control step's newest frame of two quick-suite episodes
    (sim domain) rendered while driving straight at the goal, as the policy would see them."""
    suite = load_suite("quick")
    episodes = suite.episodes[2:4]  # obstacle episodes: something to see
    env = make_env(suite, episodes, "sim", (size, size))
    agent = StraightToGoalAgent()
    obs, frames = env.reset(), []
    with torch.no_grad():
        for _ in range(steps):
            frames.append(obs["frames"][:, -1].clone())
            obs = env.step(obs.set("action", agent.act(obs, env))).get("next")
    return torch.stack(frames, 1)


def _assert_outputs_close(got: list[np.ndarray], want: tuple[torch.Tensor, ...], where: str) -> None:
    best, modes, probs, command = (w.numpy() for w in want)
    np.testing.assert_allclose(got[1], modes, atol=TRAJECTORY_ATOL, rtol=0, err_msg=f"modes_m {where}")
    np.testing.assert_allclose(got[2], probs, atol=PROBABILITY_ATOL, rtol=0, err_msg=f"mode_probs {where}")
    ranked = np.sort(probs, axis=-1)
    clear = ranked[:, -1] - ranked[:, -2] > TIE_MARGIN if probs.shape[1] > 1 else np.ones(len(probs), bool)
    assert clear.any(), f"every row is a near tie {where}: the best-mode check would test nothing"
    np.testing.assert_allclose(got[0][clear], best[clear], atol=TRAJECTORY_ATOL, rtol=0, err_msg=f"best_trajectory_m {where}")
    np.testing.assert_allclose(got[3][clear], command[clear], atol=COMMAND_ATOL, rtol=0, err_msg=f"command {where}")


def assert_onnx_matches(folder: pathlib.Path, deployable: DeployablePolicy, sequence: torch.Tensor, goal: torch.Tensor, threads: Optional[int] = 1) -> None:
    """ONNX Runtime on ``folder``'s graphs equals ``deployable`` within the stated tolerances: the full
    window at every step of ``sequence`` [B, T, 3, H, W] (one frame per control step) and the
    streaming encoder + decoder over the whole sequence, warm-up included."""
    full = make_session(folder / ONNX_FILE, threads)
    stream = OnnxStreamingPolicy(folder, deployable.stride, deployable.cache_length, threads)
    deployable.reset()
    k, stride = deployable.context_frames, deployable.stride
    with torch.no_grad():
        for t in range(sequence.shape[1]):
            streamed = stream.step(sequence[:, t].numpy(), goal.numpy())
            _assert_outputs_close(list(streamed), deployable.step(sequence[:, t], goal), f"(streaming, step {t})")
            assert stream.window_full() == deployable.window_full()
            window = sequence[:, [max(0, t - j * stride) for j in reversed(range(k))]]
            got = full.run(None, {"frames": window.numpy(), "goal": goal.numpy()})
            _assert_outputs_close(got, deployable(window, goal), f"(full window, step {t})")
