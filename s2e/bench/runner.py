"""Run a batch of suite episodes side by side in one ``NavEnv`` and record what each produced.

Unlike ``s2e.sim.rollout.run_episodes`` (whose controllers see only the env), benchmark agents act
on the observation the env returns, as a deployed policy would; the loop also measures the path
length each robot drove and keeps full traces (frames, poses, pedestrians) only for the few
episodes that become videos and plots. An episode is frozen in the record once it is done while
the rest of the batch runs on.

Camera ablation (``frames``, see ``s2e.bench.report.FRAME_MODES``): the agent may be shown uniform
grey frames or another episode's frames instead of its own camera. Only what the agent observes changes; the env,
the metrics and the traces (videos show the true camera) do not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase

from s2e.bench.agents import Agent
from s2e.bench.metrics import STUCK_DISTANCE, STUCK_WINDOW_S, EpisodeResult
from s2e.bench.report import FRAME_MODES
from s2e.bench.suite import EpisodeSpec, Suite, SuiteScenes
from s2e.sim.env import NavEnv, NavEnvConfig

GREY = 128  # the value of every pixel under frames="grey"


def check_frames_mode(frames: str, smallest_batch: Optional[int] = None, fix: str = "run at least 2 episodes side by side") -> None:
    """An unknown mode, or ``shuffled`` when a batch holds a single episode (it has no other episode's
    frames to show), is a ValueError; ``fix`` says how to get batches of 2 or more."""
    if frames not in FRAME_MODES:
        raise ValueError(f"unknown frames mode {frames!r}; known modes: {list(FRAME_MODES)}")
    if frames == "shuffled" and smallest_batch is not None and smallest_batch < 2:
        raise ValueError(f"frames='shuffled' shows each episode the frames of another episode of its batch, but a batch holds a single episode; {fix}")


def ablate_frames(obs: TensorDictBase, frames: str) -> TensorDictBase:
    """The observation as the agent sees it under ``frames`` (a shallow copy; ``obs`` is untouched)."""
    if frames == "real":
        return obs
    check_frames_mode(frames, obs.batch_size[0])
    seen = obs.clone(recurse=False)
    true = obs["frames"]
    return seen.set("frames", torch.full_like(true, GREY) if frames == "grey" else true.roll(1, dims=0))


@dataclass
class EpisodeTrace:
    """Everything a top-down plot and a video of one episode need (numpy, world metres)."""

    surface: np.ndarray  # [H, W] Surface classes
    origin: np.ndarray  # [2] world position of the grid corner
    resolution: float
    obstacles: np.ndarray  # [O, 8]
    route: np.ndarray  # [R, 2]
    robot_radius: float
    xy: list[np.ndarray] = field(default_factory=list)  # per step [2]
    pedestrians: list[np.ndarray] = field(default_factory=list)  # per step [P, 6]
    frames: list[np.ndarray] = field(default_factory=list)  # per step [H, W, 3] uint8
    result: Optional[EpisodeResult] = None


def make_env(suite: Suite, episodes: Sequence[EpisodeSpec], domain: str, image_size: tuple[int, int], device: torch.device | str = "cpu") -> NavEnv:
    """A ``NavEnv`` with one env per episode, replaying them through :class:`SuiteScenes`.

    The env's ``task`` only steers procedural generation, which a suite replaces; "both" admits
    every distractor kind. Render noise is seeded from the batch's first episode.
    """
    config = NavEnvConfig(
        task="both",
        robot=suite.robot,
        timing=suite.timing,
        image_size=tuple(image_size),
        domain=domain,
        scene=suite.scene,
        arrival_radius=suite.arrival_radius,
        time_limit_factor=suite.time_limit_factor,
        time_limit_slack=suite.time_limit_slack,
    )
    return NavEnv(config, num_envs=len(episodes), device=device, seed=episodes[0].seed, scenes=SuiteScenes(suite, episodes))


def _trace_start(env: NavEnv, i: int) -> EpisodeTrace:
    scene = env.world.scene
    return EpisodeTrace(
        surface=scene.surface[i].cpu().numpy(),
        origin=scene.origin[i].cpu().numpy(),
        resolution=float(scene.resolution),
        obstacles=scene.obstacles[i][scene.obstacle_mask[i]].cpu().numpy(),
        route=scene.route[i, : int(scene.route_length[i])].cpu().numpy(),
        robot_radius=env.robot.radius,
    )


def _trace_step(env: NavEnv, obs, trace: EpisodeTrace, i: int) -> None:
    scene = env.world.scene
    trace.xy.append(env.robot_xy[i].cpu().numpy().copy())
    trace.pedestrians.append(scene.pedestrians[i][scene.pedestrian_mask[i]].cpu().numpy().copy())
    trace.frames.append(obs["frames"][i, -1].permute(1, 2, 0).cpu().numpy())


def run_batch(
    env: NavEnv, agent: Agent, episodes: Sequence[EpisodeSpec], domain: str, trace: Sequence[int] = (), frames: str = "real"
) -> tuple[list[EpisodeResult], dict[int, EpisodeTrace]]:
    """Run every episode of ``env`` (built by :func:`make_env` for ``episodes``) to its end, the
    agent seeing its frames as ``frames`` says (``FRAME_MODES``).

    Returns one result per episode (in order) and traces for the batch indices in ``trace``.
    """
    n = env.batch_size[0]
    if len(episodes) != n:
        raise ValueError(f"the env has {n} envs but {len(episodes)} episodes were given")
    check_frames_mode(frames, n, fix="give run_batch 2 or more episodes")
    obs = env.reset()
    traces = {i: _trace_start(env, i) for i in trace}
    for i, t in traces.items():
        _trace_step(env, obs, t, i)
    live = torch.ones(n, dtype=torch.bool, device=env.device)
    driven = torch.zeros(n, dtype=torch.float64, device=env.device)
    window_steps = max(1, round(STUCK_WINDOW_S / env.config.timing.control_dt))
    recent = deque([env.robot_xy.clone()], maxlen=window_steps + 1)  # positions over the last STUCK_WINDOW_S seconds
    results: list[Optional[EpisodeResult]] = [None] * n
    while live.any():
        action = agent.act(ablate_frames(obs, frames), env)
        before = env.robot_xy.clone()
        obs = env.step(obs.set("action", action)).get("next")
        driven += torch.where(live, (env.robot_xy - before).norm(dim=-1).double(), torch.zeros_like(driven))
        recent.append(env.robot_xy.clone())
        for i, t in traces.items():
            if live[i]:
                _trace_step(env, obs, t, i)
        done = obs["done"][:, 0] & live
        seconds = env.time
        moved = (torch.stack(list(recent)) - env.robot_xy).norm(dim=-1).amax(0) if done.any() else None  # [N] farthest from here lately
        for i in done.nonzero()[:, 0].tolist():
            spec = episodes[i]
            results[i] = EpisodeResult(
                episode_id=spec.id,
                task=spec.task,
                domain=domain,
                success=bool(obs["success"][i, 0]),
                route_completion=float(obs["route_completion"][i, 0]),
                collisions=int(obs["collisions"][i, 0]),
                time_s=round(float(seconds[i]), 6),
                path_length=float(driven[i]),
                route_length=float(env.world.route_total[i]),
                stuck=not bool(obs["success"][i, 0]) and float(moved[i]) < STUCK_DISTANCE,
            )
            if i in traces:
                traces[i].result = results[i]
        live &= ~done
    return [r for r in results if r is not None], traces
