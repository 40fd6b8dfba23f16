"""NavBench refuses impossible suites when they are loaded or made, naming suite, episode and field."""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from s2e.bench.suite import SUITES_DIR, Suite, load_suite, make_suite
from s2e.sim.generator import SceneConfig, generate_scene_arrays
from s2e.sim.robots import get_robot
from s2e.sim.seeds import scene_seed

SMALL = replace(SceneConfig(), route_length=(8.0, 10.0))
Document = dict[str, Any]
#: Changes a valid suite document, given a point inside a building of its episode's layout.
Mutation = Callable[[Document, list[float]], None]


@pytest.fixture(scope="module")
def small() -> Suite:
    """A one-episode suite of task "both" (it has obstacles and pedestrians to move)."""
    return make_suite("small", seed=5, scenes_per_task=1, episodes_per_scene=1, tasks=["both"], scene=SMALL)


@pytest.fixture(scope="module")
def building_point(small: Suite) -> list[float]:
    """The point deepest inside a building of the episode's layout."""
    layout = generate_scene_arrays(small.episodes[0].scene_seed, small.scene, get_robot(small.robot))
    depth = distance_transform_edt(layout["height"] > 0)
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    assert depth[row, col] > 3  # a building, several cells from its walls
    return [float(layout["origin"][0] + (col + 0.5) * small.scene.resolution), float(layout["origin"][1] + (row + 0.5) * small.scene.resolution)]


def _write(document: Document, path: pathlib.Path) -> pathlib.Path:
    path.write_text(json.dumps(document))
    return path


def _route(doc: Document) -> list[list[float]]:
    return doc["episodes"][0]["route"]


def _episode(*keys: Any, value: Callable[[Document, list[float]], Any]) -> Mutation:
    """Set ``episodes[0][keys[0]][keys[1]]...`` to ``value(document, building point)``."""

    def mutate(doc: Document, building: list[float]) -> None:
        target = doc["episodes"][0]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(doc, building)

    return mutate


def _suite(**values: Any) -> Mutation:
    return lambda doc, building: doc.update(values)


XY = r"\(-?\d+\.\d, -?\d+\.\d\)"
#: name -> (mutation, "episode" or "suite": where the error is, the error after "suite PATH[ episode 0 (both/s00/forward)]: ").
CASES: dict[str, tuple[Mutation, str, str]] = {
    "start inside a building": (_episode("route", 0, value=lambda d, b: b), "episode", rf"start {XY} is inside a building"),
    "goal inside a building": (_episode("route", -1, value=lambda d, b: b), "episode", rf"goal {XY} is inside a building"),
    "start outside the scene": (
        _episode("route", 0, value=lambda d, b: [1000.0, 0.0]),
        "episode",
        r"start \(1000\.0, 0\.0\) is outside the scene, the 40\.0 m square",
    ),
    "start on an obstacle": (_episode("obstacles", 0, slice(0, 2), value=lambda d, b: _route(d)[0]), "episode", rf"start {XY} overlaps an obstacle"),
    "start on a pedestrian": (_episode("pedestrians", 0, slice(0, 2), value=lambda d, b: _route(d)[0]), "episode", rf"start {XY} overlaps a pedestrian"),
    "start == goal": (
        _episode("route", slice(None), value=lambda d, b: [_route(d)[0], _route(d)[-1], _route(d)[0]]),
        "episode",
        rf"start {XY} is 0\.00 m from the goal {XY}, within arrival_radius 1\.0 m",
    ),
    "zero-length segment": (_episode("route", 1, value=lambda d, b: _route(d)[0]), "episode", r"route vertices 0 and 1 coincide"),
    "non-finite route": (_episode("route", 0, value=lambda d, b: [float("nan"), 0.0]), "episode", r"route must be a finite \[n, 2\] list"),
    "non-finite pedestrian speed": (
        _episode("pedestrian_speeds", 0, value=lambda d, b: float("inf")),
        "episode",
        r"pedestrian_speeds must be a finite \[n\] list",
    ),
    "unknown task": (_episode("task", value=lambda d, b: "stairs"), "episode", r"unknown task 'stairs'; known tasks"),
    "training scene seed": (
        _episode("scene_seed", value=lambda d, b: scene_seed("train", 7)),
        "episode",
        r"scene_seed 7 belongs to the 'train' scene-seed stream, not 'benchmark'",
    ),
    "float episode seed": (_episode("seed", value=lambda d, b: 1.5), "episode", r"seed must be an integer in \[0, 2147483647\), got 1\.5"),
    "zero time limit": (
        _suite(time_limit_factor=0.0, time_limit_slack=0.0),
        "episode",
        r"time limit 0\.0 s \(time_limit_factor 0\.0 and time_limit_slack 0\.0 s\) is shorter than the \d+\.\d s its",
    ),
    "arrival radius 1000": (_suite(arrival_radius=1000.0), "suite", r"arrival_radius must be a number in \[0\.1, 2\.0\] m, got 1000\.0"),
    "negative arrival radius": (_suite(arrival_radius=-1.0), "suite", r"arrival_radius must be a number in \[0\.1, 2\.0\] m, got -1\.0"),
    "NaN arrival radius": (_suite(arrival_radius=float("nan")), "suite", r"arrival_radius must be a number in \[0\.1, 2\.0\] m, got nan"),
    "negative slack": (_suite(time_limit_slack=-5.0), "suite", r"time_limit_slack must be a number in \[0\.0, 120\.0\] s, got -5\.0"),
}


def test_the_valid_document_loads(small: Suite, tmp_path: pathlib.Path) -> None:
    suite = load_suite(_write(small.to_dict(), tmp_path / "small.json"))
    assert suite.fingerprint() == small.fingerprint()
    assert len(suite.episodes[0].obstacles) and len(suite.episodes[0].pedestrians)  # the cases below move one of each


@pytest.mark.parametrize("name", CASES)
def test_an_impossible_suite_is_refused_naming_suite_episode_and_field(small: Suite, building_point: list[float], tmp_path: pathlib.Path, name: str) -> None:
    mutate, level, problem = CASES[name]
    document = small.to_dict()
    mutate(document, building_point)
    path = _write(document, tmp_path / "bad.json")
    where = re.escape(f"suite {path}") + (re.escape(" episode 0 (both/s00/forward)") if level == "episode" else "")
    with pytest.raises(ValueError, match=f"^{where}: {problem}"):
        load_suite(path)


def test_making_a_suite_applies_the_same_checks() -> None:
    with pytest.raises(ValueError, match=r"^suite 'x': arrival_radius must be a number in \[0\.1, 2\.0\] m, got 1000"):
        make_suite("x", seed=0, scenes_per_task=1, episodes_per_scene=1, tasks=["empty"], scene=SMALL, arrival_radius=1000)
    with pytest.raises(ValueError, match=r"^suite 'x' episode 0 \(empty/s00/forward\): time limit .* is shorter than"):
        make_suite("x", seed=0, scenes_per_task=1, episodes_per_scene=1, tasks=["empty"], scene=SMALL, time_limit_factor=0.1, time_limit_slack=0.0)


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_suite_passes_the_checks(path: pathlib.Path) -> None:
    assert load_suite(path).episodes
