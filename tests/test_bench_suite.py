"""NavBench suites: deterministic generation, the committed suites, replay through NavEnv, errors."""

from __future__ import annotations

import json
import pathlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from s2e.bench.module import NavBenchDataModule
from s2e.bench.suite import SUITES_DIR, SuiteScenes, load_suite, make_suite
from s2e.sim.generator import SceneConfig, generate_scene_arrays
from s2e.sim.robots import get_robot

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = replace(SceneConfig(), route_length=(8.0, 10.0))


def test_generation_is_deterministic_and_the_seed_matters() -> None:
    a = make_suite("a", seed=5, scenes_per_task=2, scene=SMALL)
    b = make_suite("a", seed=5, scenes_per_task=2, scene=SMALL)
    c = make_suite("a", seed=6, scenes_per_task=2, scene=SMALL)
    assert a.to_dict() == b.to_dict() and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert len(a.episodes) == 4 * 2 * 2 and a.tasks == ["empty", "obstacle", "pedestrian", "both"]


def test_tasks_share_streets_and_routes_and_differ_only_in_distractors() -> None:
    suite = make_suite("a", seed=5, scenes_per_task=3, episodes_per_scene=1, scene=SMALL)
    by_task = {t: [e for e in suite.episodes if e.task == t] for t in suite.tasks}
    for i in range(3):
        empty, obstacle, pedestrian = by_task["empty"][i], by_task["obstacle"][i], by_task["pedestrian"][i]
        assert empty.scene_seed == obstacle.scene_seed == pedestrian.scene_seed
        np.testing.assert_array_equal(empty.route, obstacle.route)
        assert len(empty.obstacles) == len(empty.pedestrians) == 0
        assert len(obstacle.obstacles) > 0 and len(obstacle.pedestrians) == 0
        assert len(pedestrian.pedestrians) > 0 and len(pedestrian.obstacles) == 0


def test_committed_suites_are_what_the_tool_writes(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "quick.json"
    result = subprocess.run(
        [sys.executable, "tools/make_suite.py", "--preset", "quick", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (SUITES_DIR / "quick.json").read_bytes()
    assert json.loads(result.stdout.strip().splitlines()[-1])[0]["episodes"] == 8
    standard = load_suite("standard")
    assert standard.tasks == ["empty", "obstacle", "pedestrian", "both"] and len(standard.episodes) == 96
    assert {e.variant for e in standard.episodes} == {"forward", "reverse"}
    assert (SUITES_DIR / "standard.json").stat().st_size < 200_000


def test_replay_reproduces_the_generated_scene_and_the_reverse_variant() -> None:
    suite = make_suite("a", seed=5, scenes_per_task=1, episodes_per_scene=2, tasks=["both"], scene=SMALL)
    forward, reverse = suite.episodes
    robot = get_robot(suite.robot)
    original = generate_scene_arrays(forward.scene_seed, suite.scene, robot)
    arrays = SuiteScenes(suite, suite.episodes).arrays(forward)
    np.testing.assert_array_equal(arrays["surface"], original["surface"])
    np.testing.assert_allclose(arrays["route"], original["route"], atol=1e-4)
    np.testing.assert_allclose(arrays["obstacles"], original["obstacles"], atol=1e-4)
    np.testing.assert_allclose(reverse.route, forward.route[::-1])
    kept = np.linalg.norm(reverse.pedestrians[:, :2] - reverse.route[0], axis=1)
    assert (kept >= 2.5 + robot.radius).all()  # nobody spawns on the new start

    source = SuiteScenes(suite, suite.episodes)
    world = source.sample(2, np.random.default_rng(0), torch.device("cpu"))
    torch.testing.assert_close(world.scene.goal[1], torch.as_tensor(forward.route[0]))
    with pytest.raises(RuntimeError, match="holds 2 episodes and 2 were handed out"):
        source.sample(1, np.random.default_rng(0), torch.device("cpu"))


def test_bad_suites_and_selections_fail_clearly(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"suite file not found: .*nope.json \(built-in suites: \['large', 'quick', 'standard'\]"):
        load_suite(tmp_path / "nope.json")
    data = json.loads((SUITES_DIR / "quick.json").read_text())
    data["episodes"][0]["task"] = "stairs"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown task 'stairs'; known tasks"):
        load_suite(bad)
    data = json.loads((SUITES_DIR / "quick.json").read_text())
    data["episodes"][0]["obstacles"] = [[0.0] * 8] * 50
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="more route vertices, obstacles or pedestrians than its SceneConfig pads to"):
        load_suite(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_suite(bad)
    with pytest.raises(ValueError, match="episodes_per_scene must be 1 or 2"):
        make_suite("x", 0, 1, episodes_per_scene=3)
    with pytest.raises(ValueError, match="unknown appearance domain 'mars'"):
        NavBenchDataModule("quick", domains=["mars"])
    quick = load_suite("quick")
    only = quick.select(["obstacle"], max_episodes_per_task=1)
    assert [e.task for e in only.episodes] == ["obstacle"]
    with pytest.raises(ValueError, match="unknown task 'stairs'"):
        quick.select(["stairs"])


def test_data_module_batches_every_episode_once_per_domain() -> None:
    data = NavBenchDataModule("quick", domains=["sim", "recorded"], num_envs=3)
    batches = list(data.test_dataloader())
    assert [b.domain for b in batches] == ["sim"] * 3 + ["recorded"] * 3
    assert [len(b.episodes) for b in batches] == [3, 3, 2] * 2
    ids = [e.id for b in batches if b.domain == "sim" for e in b.episodes]
    assert ids == [e.id for e in data.suite.episodes]
    assert [b.first_index for b in batches[:3]] == [0, 3, 6]
