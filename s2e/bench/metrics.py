"""NavBench metrics, their exact definitions, and percentile-bootstrap confidence intervals.

Per episode i (all from the env's own bookkeeping, see ``s2e.sim.env``):

* **SR**, success rate: S_i = 1 if the robot came within ``arrival_radius`` metres of the goal
  before the episode's time limit (``time_limit_factor * route length / max speed + slack``),
  else 0. SR = mean S_i.
* **RC**, route completion: the furthest arc length along the route polyline the robot reached
  (its position projected onto the route), divided by the route length, in [0, 1]; 1 on success.
  RC = mean over episodes.
* **CT**, collision times: the number of contact events in the episode (a contact with a wall,
  obstacle or pedestrian that starts; staying in contact counts once). CT = mean per episode.
* **SPL**, success weighted by path length: S_i * L_i / max(L_i, P_i), with P_i the length of the
  path the robot drove and L_i = max(route length - arrival_radius, 0) the shortest drive that
  reaches the arrival circle along the route. SPL = mean over episodes.
* **Stuck**: 1 if the robot did not arrive and moved less than ``STUCK_DISTANCE`` metres during the
  last ``STUCK_WINDOW_S`` seconds of its episode (pinned against something, or turning in place),
  else 0. Stuck = mean over episodes. It tells a policy that drives into an obstacle and never backs
  away (no recovery) from one that wanders off or runs out of time while moving.
* **TtG**, time to goal: seconds from the start to arrival, averaged over successful episodes
  only (undefined, reported as null, when none succeeded).

Each mean comes with a two-sided percentile bootstrap interval: episodes are resampled with
replacement ``resamples`` times from a generator seeded with ``seed``, so the interval is
deterministic for a given set of episodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

#: metric key -> column label, in report order.
#: The row of a summary that pools every task.
OVERALL = "overall"
METRICS: dict[str, str] = {"success_rate": "SR", "route_completion": "RC", "collisions": "CT", "stuck": "Stuck", "spl": "SPL", "time_to_goal": "TtG (s)"}

#: An unsuccessful episode whose robot moved less than this many metres during its last
#: ``STUCK_WINDOW_S`` seconds counts as stuck (see the module docstring).
STUCK_DISTANCE = 0.5
STUCK_WINDOW_S = 5.0


@dataclass
class EpisodeResult:
    """What one episode produced (the raw material of every metric)."""

    episode_id: str
    task: str
    domain: str
    success: bool
    route_completion: float
    collisions: int
    time_s: float  # when the episode ended (arrival or time limit)
    path_length: float  # metres driven
    route_length: float  # metres along the route polyline
    stuck: bool = False  # ended without arriving, hardly moving (STUCK_DISTANCE, STUCK_WINDOW_S)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spl(result: EpisodeResult, arrival_radius: float) -> float:
    """Success weighted by path length of one episode (see the module docstring)."""
    if not result.success:
        return 0.0
    shortest = max(result.route_length - arrival_radius, 0.0)
    return shortest / max(shortest, result.path_length) if shortest > 0 else 1.0


def episode_values(results: Sequence[EpisodeResult], arrival_radius: float) -> dict[str, np.ndarray]:
    """Per-episode samples of every metric (time to goal: successful episodes only)."""
    return {
        "success_rate": np.array([float(r.success) for r in results]),
        "route_completion": np.array([r.route_completion for r in results], dtype=np.float64),
        "collisions": np.array([r.collisions for r in results], dtype=np.float64),
        "stuck": np.array([float(r.stuck) for r in results]),
        "spl": np.array([spl(r, arrival_radius) for r in results]),
        "time_to_goal": np.array([r.time_s for r in results if r.success], dtype=np.float64),
    }


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[Optional[float], Optional[float]]:
    """Percentile-bootstrap interval of the mean; (None, None) for no samples."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None, None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize_values(values: dict[str, np.ndarray], resamples: int, level: float, seed: int) -> dict[str, dict[str, Any]]:
    """{metric: {mean, ci_low, ci_high, n}} for per-episode samples."""
    out = {}
    for name in METRICS:
        v = values[name]
        low, high = bootstrap_ci(v, resamples, level, seed)
        out[name] = {"mean": float(v.mean()) if v.size else None, "ci_low": low, "ci_high": high, "n": int(v.size)}
    return out


def summarize(results: Sequence[EpisodeResult], arrival_radius: float, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Metrics per task (in first-seen order) and over all episodes: {"tasks": {task: ...}, "overall": ...}."""
    if not results:
        raise ValueError("no episode results to summarize")
    tasks = list(dict.fromkeys(r.task for r in results))
    per_task = {t: summarize_values(episode_values([r for r in results if r.task == t], arrival_radius), resamples, level, seed) for t in tasks}
    overall = summarize_values(episode_values(results, arrival_radius), resamples, level, seed)
    return {"tasks": per_task, "overall": overall, "episodes": len(results)}


def format_metric(entry: dict[str, Any], digits: int = 2) -> str:
    """``0.50 [0.25, 0.75]`` (or ``-`` when undefined)."""
    mean = entry.get("mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
