"""NavBench metrics: scripted drives in the real env with known SR / RC / CT / SPL, and the bootstrap."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from s2e.bench.agents import StraightToGoalAgent
from s2e.bench.metrics import EpisodeResult, bootstrap_ci, format_metric, spl, summarize
from s2e.bench.runner import make_env, run_batch
from s2e.bench.suite import make_suite
from s2e.sim.generator import SceneConfig
from s2e.sim.scene import ObstacleKind, ObstacleShape

ROBOT_RADIUS = 0.3  # the wheeled robot


class ScriptedAgent:
    """Per env: ``full`` drives straight to the goal, ``stop`` never moves, ``half`` drives until half
    the route is covered then stops, ``wall`` drives straight to the goal into a barrier."""

    name, timing, image_size = "scripted", None, None

    def __init__(self, plans: list[str]) -> None:
        self.plans = plans
        self.straight = StraightToGoalAgent()

    def act(self, obs, env) -> torch.Tensor:
        command = self.straight.act(obs, env)
        stop = torch.tensor([p == "stop" for p in self.plans]) | (torch.tensor([p == "half" for p in self.plans]) & (env.route_completion >= 0.5))
        return torch.where(stop[:, None], torch.zeros_like(command), command)


@pytest.fixture(scope="module")
def scripted():
    """Four straight sidewalk episodes: full drive, standing still, half way, into a barrier across the route."""
    scene = replace(SceneConfig(), layouts=("straight",), route_length=(8.0, 9.0))
    suite = make_suite("scripted", seed=3, scenes_per_task=4, episodes_per_scene=1, tasks=["empty"], scene=scene, time_limit_factor=1.2, time_limit_slack=2.0)
    episodes = list(suite.episodes)
    wall = episodes[3]
    (a, b) = wall.route[0].astype(np.float64), wall.route[-1].astype(np.float64)
    middle, heading = (a + b) / 2, math.atan2(*(b - a)[::-1])
    barrier = np.array([[*middle, heading, 0.2, 3.0, 1.0, float(ObstacleShape.BOX), float(ObstacleKind.BOX)]], np.float32)
    episodes[3] = replace(wall, obstacles=barrier)
    suite = replace(suite, episodes=tuple(episodes))
    env = make_env(suite, suite.episodes, "sim", (8, 8))
    results, _ = run_batch(env, ScriptedAgent(["full", "stop", "half", "wall"]), suite.episodes, "sim")
    return suite, results


def test_scripted_drives_give_the_known_success_completion_and_collisions(scripted) -> None:
    suite, (full, stop, half, wall) = scripted
    limit = lambda e: math.ceil((suite.time_limit_factor * e.route_length / 1.5 + suite.time_limit_slack) / 0.1 - 1e-6) * 0.1  # noqa: E731

    assert full.success and full.route_completion == 1.0 and full.collisions == 0
    assert full.path_length == pytest.approx(full.route_length - suite.arrival_radius, abs=0.2)  # stops on entering the radius
    assert full.time_s < limit(suite.episodes[0])

    assert not stop.success and stop.route_completion == 0.0 and stop.collisions == 0 and stop.path_length == 0.0
    assert stop.time_s == pytest.approx(limit(suite.episodes[1]))  # ran to the time limit

    step = 1.5 * 0.1 / half.route_length  # one control step at top speed, as a route fraction
    assert not half.success and 0.5 <= half.route_completion <= 0.5 + step + 1e-6 and half.collisions == 0

    # the barrier's near face is 0.2 m before the middle; the robot's disc stops at its radius from it
    blocked_at = 0.5 - (0.2 + ROBOT_RADIUS) / wall.route_length
    assert not wall.success and wall.collisions == 1  # pushing against it for seconds is one contact
    assert wall.route_completion == pytest.approx(blocked_at, abs=0.02)


def test_summary_of_the_scripted_drives(scripted) -> None:
    suite, results = scripted
    summary = summarize(results, suite.arrival_radius, resamples=500, seed=0)
    overall = summary["overall"]
    assert overall["success_rate"]["mean"] == 0.25
    assert overall["collisions"]["mean"] == 0.25
    assert overall["route_completion"]["mean"] == pytest.approx(np.mean([r.route_completion for r in results]))
    assert overall["spl"]["mean"] == pytest.approx(spl(results[0], suite.arrival_radius) / 4)
    assert overall["time_to_goal"]["n"] == 1 and overall["time_to_goal"]["mean"] == results[0].time_s
    assert summary["tasks"]["empty"] == overall  # one task: the same episodes
    assert summarize(results, suite.arrival_radius, resamples=500, seed=0) == summary  # deterministic


def _result(success: bool, rc: float = 1.0, collisions: int = 0, time_s: float = 10.0, path: float = 10.0, route: float = 11.0) -> EpisodeResult:
    return EpisodeResult("e", "obstacle", "sim", success, rc, collisions, time_s, path, route)


def test_spl_definition() -> None:
    assert spl(_result(True, path=10.0, route=11.0), 1.0) == 1.0  # drove exactly route - radius
    assert spl(_result(True, path=20.0, route=11.0), 1.0) == pytest.approx(0.5)  # twice as long
    assert spl(_result(False, path=10.0), 1.0) == 0.0
    assert spl(_result(True, path=0.5, route=0.8), 1.0) == 1.0  # started inside the arrival radius


def test_bootstrap_interval_is_seeded_brackets_the_mean_and_shrinks_with_more_episodes() -> None:
    rng = np.random.default_rng(0)
    small = (rng.random(20) < 0.5).astype(float)
    low, high = bootstrap_ci(small, 2000, 0.95, seed=1)
    assert low <= small.mean() <= high and low < high
    assert bootstrap_ci(small, 2000, 0.95, seed=1) == (low, high)
    big = np.tile(small, 10)
    big_low, big_high = bootstrap_ci(big, 2000, 0.95, seed=1)
    assert big_high - big_low < (high - low) / 2
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0)
    assert bootstrap_ci(np.array([])) == (None, None)
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_ci(small, level=1.5)


def test_time_to_goal_is_undefined_without_successes() -> None:
    summary = summarize([_result(False, rc=0.3), _result(False, rc=0.5)], 1.0, resamples=100)
    ttg = summary["overall"]["time_to_goal"]
    assert ttg == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    assert format_metric(ttg) == "-"
    assert summary["overall"]["route_completion"]["mean"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no episode results"):
        summarize([], 1.0)
