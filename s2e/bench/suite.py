"""NavBench episode suites: fixed, versioned lists of episodes stored as small JSON files.

A benchmark number is only comparable if every policy drives exactly the same episodes. A suite
therefore stores, per episode, everything that defines it besides the street layout: task, route
(its first vertex is the start pose, heading along the first segment, as ``NavEnv`` resets),
static obstacles, pedestrians with their goals and speeds, the appearance style seed and the
render-noise seed. The layout (occupancy grid, distance fields, facades) is large, so it is
regenerated from the episode's ``scene_seed`` with the suite's stored ``SceneConfig``; layout
generation is deterministic (see ``s2e.sim.generator``).

Scene seeds are drawn from the "benchmark" stream of ``s2e.sim.seeds``: training envs draw from the
disjoint "train" stream, so a suite's streets are never trained on, whatever seeds training used.
A suite with a scene seed of another purpose is refused, not warned about: its numbers would
measure memorised streets, and a warning scrolls past in a benchmark log while the report it
produces looks like any other. Such a suite predates the seed streams; tools/make_suite.py
rewrites it.

Loading a suite (and making one, which reloads what it made) checks it against its own layouts and
against sane ranges, so an impossible suite fails before any policy drives it: every problem is a
ValueError naming the suite, the episode (index and id) and the field, e.g. ``suite quick.json
episode 3 (obstacle/s01/forward): start (12.0, 4.5) is inside a building``. Per episode: start and
goal lie in the scene, the robot's footprint fits at both (no building, no obstacle; no pedestrian
at the start), the start is farther than ``arrival_radius`` from the goal (else the episode succeeds
before the robot moves), the time limit is at least the time the route takes at the robot's top
speed, all numbers are finite and the seeds are integers of the right stream. Suite fields must lie
in ``ARRIVAL_RADIUS_RANGE``, ``TIME_LIMIT_FACTOR_RANGE`` and ``TIME_LIMIT_SLACK_RANGE``.

Every task of a suite uses the same scene seeds, hence the same streets and routes: only the
distractors differ, so per-task differences isolate obstacles and crowds. A scene gives at most
two episodes: the generated route ("forward") and the same route driven from its goal back to its
start ("reverse", obstacles approached from the other side; pedestrians spawned near the new start
are dropped, as the generator does for the original start).

Suites name their appearance domain (``domain``); a run may evaluate them in other domains too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from s2e.config_parsing import dataclass_from_dict
from s2e.sim.generator import SceneConfig, World, generate_scene_arrays, stack_scenes
from s2e.sim.physics import footprint_clearance
from s2e.sim.robots import get_robot
from s2e.sim.seeds import draw_scene_seeds, purpose_of
from s2e.sim.tasks import TASKS, get_task
from s2e.timing import TimingSpec

SUITE_FORMAT = 1
SUITES_DIR = Path(__file__).resolve().parent / "suites"
VARIANTS = ("forward", "reverse")
#: Metres a pedestrian must keep from the start (plus the robot radius), as in the generator.
_START_KEEPOUT = 2.5
#: Suite, episode and style seeds lie in ``[0, SEED_BOUND)``: the generator draws them as
#: ``rng.integers(2**31 - 1)``, and renderers keep style seeds in integer tensors.
SEED_BOUND = 2**31 - 1

#: Allowed ``Suite.arrival_radius``, metres (inclusive). Arrival means the robot's centre comes within
#: the radius, so a radius <= 0 never succeeds; below 0.1 m (less than the 0.15 m the wheeled robot
#: drives per 0.1 s control step) success would measure stopping precision, not navigation. Above
#: 2 m, half the shortest route ``SceneConfig.validate`` allows (4 m), an episode could count as a
#: success with half its route undriven.
ARRIVAL_RADIUS_RANGE: tuple[float, float] = (0.1, 2.0)
#: Allowed ``Suite.time_limit_factor`` (time limit = factor * route length / top speed + slack),
#: inclusive. A negative factor gives longer routes less time; 0 is a fixed limit of ``slack``
#: seconds. Above 10 a robot still under way has averaged less than a tenth of its top speed:
#: longer limits only let stalled episodes run on (benchmark time grows with the limit).
TIME_LIMIT_FACTOR_RANGE: tuple[float, float] = (0.0, 10.0)
#: Allowed ``Suite.time_limit_slack``, seconds (inclusive): time on top of driving, for turning on
#: the spot at the start and waiting for pedestrians. Negative slack takes that time away; 120 s
#: is twelve times the standard suite's 10 s, more than any wait in a scene of a few dozen metres.
TIME_LIMIT_SLACK_RANGE: tuple[float, float] = (0.0, 120.0)
#: Array fields of an episode and the shape of one row (``()``: a list of numbers).
_EPISODE_ARRAYS: dict[str, tuple[int, ...]] = {"route": (2,), "obstacles": (8,), "pedestrians": (6,), "pedestrian_goals": (4,), "pedestrian_speeds": ()}


@dataclass(frozen=True)
class EpisodeSpec:
    """One benchmark episode (see the module docstring). Arrays are float32, world metres."""

    id: str
    task: str
    scene_seed: int
    variant: str
    seed: int
    style_seed: int
    route: np.ndarray  # [R, 2]
    obstacles: np.ndarray  # [O, 8] OBSTACLE_FIELDS
    pedestrians: np.ndarray  # [P, 6] PEDESTRIAN_FIELDS
    pedestrian_goals: np.ndarray  # [P, 4] goal_a (x, y), goal_b (x, y)
    pedestrian_speeds: np.ndarray  # [P]

    @property
    def route_length(self) -> float:
        return float(np.linalg.norm(np.diff(self.route.astype(np.float64), axis=0), axis=1).sum())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = np.round(value.astype(np.float64), 4).tolist() if isinstance(value, np.ndarray) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodeSpec":
        """Parse one episode and check its own fields; the caller's error prefix names the suite and episode."""
        expected = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != expected:
            raise ValueError(f"episode keys {sorted(data) if isinstance(data, dict) else data!r} differ from {sorted(expected)}")
        get_task(str(data["task"]))
        if data["variant"] not in VARIANTS:
            raise ValueError(f"unknown variant {data['variant']!r}; known variants: {list(VARIANTS)}")
        arrays = {name: _float_array(data[name], name, row) for name, row in _EPISODE_ARRAYS.items()}
        route = arrays["route"]
        if len(route) < 2:
            raise ValueError("a route needs at least 2 vertices")
        segments = np.linalg.norm(np.diff(route, axis=0), axis=1)
        if not segments.all():
            raise ValueError(f"route vertices {int(np.argmin(segments))} and {int(np.argmin(segments)) + 1} coincide: a zero-length segment has no direction")
        if not len(arrays["pedestrians"]) == len(arrays["pedestrian_goals"]) == len(arrays["pedestrian_speeds"]):
            raise ValueError("pedestrians, pedestrian_goals and pedestrian_speeds differ in length")
        if (arrays["pedestrian_speeds"] < 0).any():
            raise ValueError("pedestrian_speeds must be >= 0")
        purpose = purpose_of(data["scene_seed"])
        if purpose != "benchmark":
            raise ValueError(
                f"scene_seed {data['scene_seed']} belongs to the {purpose!r} scene-seed stream, not 'benchmark': a benchmark on "
                "those streets measures memorisation (see s2e.sim.seeds); rewrite the suite with tools/make_suite.py"
            )
        seeds = {k: _seed(data[k], k) for k in ("seed", "style_seed")}
        return cls(id=str(data["id"]), task=str(data["task"]), variant=str(data["variant"]), scene_seed=int(data["scene_seed"]), **seeds, **arrays)


def _float_array(value: Any, name: str, row: tuple[int, ...]) -> np.ndarray:
    """A JSON list as a finite float32 array of shape [n, *row] (an empty list gives n = 0)."""
    shape = "[" + ", ".join(["n", *map(str, row)]) + "]"
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):  # ragged lists, strings
        raise ValueError(f"{name} must be a finite {shape} list") from None
    if array.size == 0:
        return np.zeros((0, *row), np.float32)
    if array.ndim != 1 + len(row) or array.shape[1:] != row or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a finite {shape} list")
    return array


def _seed(value: Any, name: str) -> int:
    """A suite, episode or style seed: a JSON integer in ``[0, SEED_BOUND)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_BOUND:
        raise ValueError(f"{name} must be an integer in [0, {SEED_BOUND}), got {value!r}")
    return value


def _number(data: dict[str, Any], name: str, bounds: tuple[float, float], unit: str) -> float:
    """A suite field that must be a JSON number within ``bounds`` (inclusive; NaN and inf fall outside)."""
    value = data[name]
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}]{unit}, got {value!r} (see {name.upper()}_RANGE in s2e.bench.suite)")
    return float(value)


@dataclass(frozen=True)
class Suite:
    """A named list of episodes plus everything the env needs to replay them identically.

    Attributes:
        name: suite name (file stem of the standard suites).
        domain: appearance domain the suite is meant for (a run may add others).
        robot: robot profile name.
        timing: the TimingSpec episodes are stepped with; a policy must match it.
        scene: the SceneConfig layouts are regenerated with (and the padding sizes).
        arrival_radius, time_limit_factor, time_limit_slack: the ``NavEnvConfig`` success and
            time-limit settings (time limit = factor * route length / max speed + slack).
        seed: the seed the suite was generated from.
        episodes: the episodes, in the order they run.
    """

    name: str
    domain: str
    robot: str
    timing: TimingSpec
    scene: SceneConfig
    arrival_radius: float
    time_limit_factor: float
    time_limit_slack: float
    seed: int
    episodes: tuple[EpisodeSpec, ...] = field(default_factory=tuple)

    @property
    def tasks(self) -> list[str]:
        """Tasks present, in the canonical order of ``s2e.sim.tasks.TASKS``."""
        present = {e.task for e in self.episodes}
        return [t for t in TASKS if t in present]

    def select(self, tasks: Optional[Sequence[str]] = None, max_episodes_per_task: Optional[int] = None) -> "Suite":
        """A sub-suite with only ``tasks`` (unknown names are an error) and at most N episodes per task."""
        wanted = [get_task(t).name for t in tasks] if tasks else self.tasks
        missing = set(wanted) - set(self.tasks)
        if missing:
            raise ValueError(f"suite {self.name!r} has no episodes of task(s) {sorted(missing)}; it has {self.tasks}")
        kept, counts = [], {t: 0 for t in wanted}
        for episode in self.episodes:
            if episode.task in counts and (max_episodes_per_task is None or counts[episode.task] < max_episodes_per_task):
                kept.append(episode)
                counts[episode.task] += 1
        return replace(self, episodes=tuple(kept))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SUITE_FORMAT,
            "name": self.name,
            "domain": self.domain,
            "robot": self.robot,
            "timing": self.timing.to_dict(),
            "scene": asdict(self.scene),
            "arrival_radius": self.arrival_radius,
            "time_limit_factor": self.time_limit_factor,
            "time_limit_slack": self.time_limit_slack,
            "seed": self.seed,
            "episodes": [e.to_dict() for e in self.episodes],
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: two reports with the same fingerprint ran the same episodes."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path


def scene_config_from_dict(data: dict[str, Any]) -> SceneConfig:
    """SceneConfig from JSON (lists back to the tuples the dataclass declares)."""
    return dataclass_from_dict(SceneConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def suite_from_dict(data: dict[str, Any], where: str = "suite") -> Suite:
    """Parse and check a suite document (see the module docstring); every problem is a ValueError naming ``where``."""
    if not isinstance(data, dict) or data.get("format") != SUITE_FORMAT:
        raise ValueError(f"{where}: not a NavBench suite of format {SUITE_FORMAT} (got format {data.get('format') if isinstance(data, dict) else None!r})")
    try:
        robot = get_robot(data["robot"])
        suite = Suite(
            name=str(data["name"]),
            domain=str(data["domain"]),
            robot=robot.name,
            timing=TimingSpec.from_dict(data["timing"]),
            scene=scene_config_from_dict(data["scene"]).validate(robot),
            arrival_radius=_number(data, "arrival_radius", ARRIVAL_RADIUS_RANGE, " m"),
            time_limit_factor=_number(data, "time_limit_factor", TIME_LIMIT_FACTOR_RANGE, ""),
            time_limit_slack=_number(data, "time_limit_slack", TIME_LIMIT_SLACK_RANGE, " s"),
            seed=_seed(data["seed"], "seed"),
        )
        documents = data["episodes"]
        if not isinstance(documents, list) or not documents:
            raise ValueError("the suite has no episodes")
    except KeyError as err:
        raise ValueError(f"{where}: missing field {err}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    scenes = SuiteScenes(suite, ())
    episodes = []
    for i, document in enumerate(documents):
        label = f"{where} episode {i}" + (f" ({document['id']})" if isinstance(document, dict) and "id" in document else "")
        try:
            episode = EpisodeSpec.from_dict(document)
            _check_episode(suite, episode, scenes)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
        episodes.append(episode)
    return replace(suite, episodes=tuple(episodes))


def _check_episode(suite: Suite, episode: EpisodeSpec, scenes: SuiteScenes) -> None:
    """Raise a ValueError if ``episode`` cannot run as meant in its layout under the suite's settings.

    The layout comes from ``scenes`` (as replay regenerates it) and clearances from the physics'
    own ``footprint_clearance``, so "inside a building" here is exactly what the robot would hit.
    """
    scene, robot = suite.scene, scenes.robot
    if len(episode.route) > scene.max_route_vertices or len(episode.obstacles) > scene.num_obstacles[1] or len(episode.pedestrians) > scene.num_pedestrians[1]:
        raise ValueError("more route vertices, obstacles or pedestrians than its SceneConfig pads to")
    start, goal = episode.route[0], episode.route[-1]
    gap = float(np.linalg.norm(goal.astype(np.float64) - start))
    if gap <= suite.arrival_radius:
        raise ValueError(
            f"start {_xy(start)} is {gap:.2f} m from the goal {_xy(goal)}, within arrival_radius {suite.arrival_radius} m: "
            "the episode succeeds before the robot moves"
        )
    drive = episode.route_length / robot.max_speed
    limit = suite.time_limit_factor * drive + suite.time_limit_slack
    if limit < drive:
        raise ValueError(
            f"time limit {limit:.1f} s (time_limit_factor {suite.time_limit_factor} and time_limit_slack {suite.time_limit_slack} s) "
            f"is shorter than the {drive:.1f} s its {episode.route_length:.1f} m route takes at the {robot.name} robot's top speed"
        )
    world = stack_scenes([scenes.arrays(episode)], scene, "cpu")
    low = world.scene.origin[0].numpy()
    clearance = footprint_clearance(world, torch.as_tensor(np.stack([start, goal]))[None], robot.radius)
    for k, (name, point) in enumerate((("start", start), ("goal", goal))):
        if not ((point >= low) & (point <= low + scene.extent)).all():
            raise ValueError(f"{name} {_xy(point)} is outside the scene, the {scene.extent} m square from {_xy(low)}")
        wall = float(clearance.wall[0, k]) + robot.radius  # metres to the nearest building
        if wall <= 0:
            raise ValueError(f"{name} {_xy(point)} is inside a building")
        if wall < robot.radius:
            raise ValueError(f"{name} {_xy(point)} is {wall:.2f} m from a building, closer than the {robot.name} robot's footprint radius {robot.radius} m")
        if float(clearance.obstacle[0, k]) < 0:
            raise ValueError(f"{name} {_xy(point)} overlaps an obstacle: the robot's footprint does not fit there")
    if float(clearance.pedestrian[0, 0]) < 0:
        raise ValueError(f"start {_xy(start)} overlaps a pedestrian: the episode would open with a collision")


def _xy(point: np.ndarray) -> str:
    """A point as errors print it: ``(12.0, 4.5)``."""
    return f"({float(point[0]):.1f}, {float(point[1]):.1f})"


def resolve_suite_path(suite: str | Path) -> Path:
    """A suite name (``quick``, ``standard``: files in ``s2e/bench/suites``) or a path to a JSON file."""
    path = Path(suite)
    if path.suffix != ".json":
        path = SUITES_DIR / f"{suite}.json"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.json"))
        raise FileNotFoundError(f"suite file not found: {path} (built-in suites: {known}; write others with tools/make_suite.py)")
    return path


def load_suite(suite: str | Path) -> Suite:
    """Load a suite by name or path (see :func:`resolve_suite_path`)."""
    path = resolve_suite_path(suite)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"suite {path} is not valid JSON: {err}") from None
    return suite_from_dict(data, f"suite {path}")


# ---------------------------------------------------------------------- generation


def _reverse(arrays: dict[str, np.ndarray], robot_radius: float) -> dict[str, np.ndarray]:
    """The same scene driven from goal to start; pedestrians too close to the new start are dropped."""
    route = arrays["route"][::-1].copy()
    keep = np.linalg.norm(arrays["pedestrians"][:, :2] - route[0], axis=1) >= _START_KEEPOUT + robot_radius
    out = dict(arrays, route=route)
    for key in ("pedestrians", "goal_a", "goal_b", "speeds"):
        out[key] = arrays[key][keep]
    return out


def make_suite(
    name: str,
    seed: int,
    scenes_per_task: int,
    episodes_per_scene: int = 2,
    tasks: Sequence[str] = tuple(TASKS),
    robot: str = "wheeled",
    domain: str = "sim",
    scene: SceneConfig = SceneConfig(),
    timing: TimingSpec = TimingSpec(),
    arrival_radius: float = 1.0,
    time_limit_factor: float = 2.0,
    time_limit_slack: float = 10.0,
) -> Suite:
    """Generate a suite deterministically from ``seed`` (same arguments -> the same JSON).

    Scene seeds come from the "benchmark" stream of ``s2e.sim.seeds``, disjoint from the "train"
    stream training envs draw from, so no suite scene is ever a training scene.
    """
    if scenes_per_task < 1:
        raise ValueError(f"scenes_per_task must be >= 1, got {scenes_per_task}")
    if not 1 <= episodes_per_scene <= len(VARIANTS):
        raise ValueError(f"episodes_per_scene must be 1 or 2 (variants {VARIANTS}), got {episodes_per_scene}")
    profile = get_robot(robot)
    scene.validate(profile)
    specs = [get_task(t) for t in tasks]
    rng = np.random.default_rng(seed)
    scene_seeds = draw_scene_seeds("benchmark", rng, scenes_per_task)
    episodes = []
    for task in specs:
        config = task.apply(scene)
        for i, scene_seed in enumerate(scene_seeds):
            arrays = generate_scene_arrays(scene_seed, config, profile)
            for variant in VARIANTS[:episodes_per_scene]:
                a = arrays if variant == "forward" else _reverse(arrays, profile.radius)
                episodes.append(
                    EpisodeSpec(
                        id=f"{task.name}/s{i:02d}/{variant}",
                        task=task.name,
                        scene_seed=scene_seed,
                        variant=variant,
                        seed=int(rng.integers(2**31 - 1)),
                        style_seed=int(a["style_seed"]),
                        route=a["route"],
                        obstacles=a["obstacles"],
                        pedestrians=a["pedestrians"],
                        pedestrian_goals=np.concatenate([a["goal_a"], a["goal_b"]], axis=1).reshape(-1, 4),
                        pedestrian_speeds=a["speeds"],
                    )
                )
    suite = Suite(name, domain, profile.name, timing, scene, arrival_radius, time_limit_factor, time_limit_slack, seed, tuple(episodes))
    return suite_from_dict(json.loads(json.dumps(suite.to_dict())), f"suite {name!r}")  # what a reload gives: rounded, checked


# ---------------------------------------------------------------------- replay


class SuiteScenes:
    """``NavEnv`` scene source that hands out a fixed list of episodes, in order, exactly once.

    Layout grids are regenerated once per scene seed and shared by the episodes of that scene.
    """

    def __init__(self, suite: Suite, episodes: Sequence[EpisodeSpec]) -> None:
        self.suite = suite
        self.episodes = list(episodes)
        self.robot = get_robot(suite.robot)
        self._next = 0
        self._layouts: dict[int, dict[str, np.ndarray]] = {}

    def arrays(self, episode: EpisodeSpec) -> dict[str, np.ndarray]:
        """The episode as the per-scene arrays ``stack_scenes`` takes."""
        if episode.scene_seed not in self._layouts:
            self._layouts[episode.scene_seed] = generate_scene_arrays(episode.scene_seed, self.suite.scene, self.robot)
        layout = self._layouts[episode.scene_seed]
        route = episode.route
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route.astype(np.float64), axis=0), axis=1))])
        return {
            **{k: layout[k] for k in ("surface", "height", "distance", "solid_distance", "origin", "half_width")},
            "route": route,
            "cum": cum.astype(np.float32),
            "obstacles": episode.obstacles,
            "pedestrians": episode.pedestrians,
            "goal_a": episode.pedestrian_goals[:, :2].copy(),
            "goal_b": episode.pedestrian_goals[:, 2:].copy(),
            "speeds": episode.pedestrian_speeds,
            "style_seed": episode.style_seed,
        }

    def sample(self, count: int, rng: np.random.Generator, device: torch.device) -> World:
        if self._next + count > len(self.episodes):
            raise RuntimeError(f"the suite scene source holds {len(self.episodes)} episodes and {self._next} were handed out; {count} more were asked for")
        batch = self.episodes[self._next : self._next + count]
        self._next += count
        return stack_scenes([self.arrays(e) for e in batch], self.suite.scene, device)
