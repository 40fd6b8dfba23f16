"""Scene-seed purposes: training scenes and NavBench suites are held out from each other by construction."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pytest

from s2e.bench.suite import load_suite, make_suite
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.generator import SceneConfig, generate_scene_arrays
from s2e.sim.robots import get_robot
from s2e.sim.scene_source import ProceduralScenes
from s2e.sim.seeds import NUM_DRAWS, NUM_PURPOSES, PURPOSES, SEED_LIMIT, draw_scene_seeds, purpose_of, scene_seed

ROBOT = get_robot("wheeled")
SUITES = ("quick", "standard", "large")
#: Training env seeds whose scenes are compared layout by layout (plus every built-in suite's seed).
TRAIN_SEEDS = range(24)
#: Scenes per training env seed compared by layout: the first ones its resets generate.
SCENES_PER_SEED = 4


def _grid_key(arrays: dict[str, np.ndarray]) -> str:
    """The street layout: surface classes and heights of the occupancy grid."""
    return hashlib.sha256(arrays["surface"].tobytes() + arrays["height"].tobytes()).hexdigest()


def _route_key(route: np.ndarray) -> bytes:
    """A route independent of its direction (suites also drive it reversed) and of JSON rounding."""
    r = np.round(np.asarray(route, np.float64), 2) + 0.0  # + 0.0: -0.0 -> 0.0
    return min(r.tobytes(), r[::-1].copy().tobytes())


@lru_cache(maxsize=None)
def _scene(seed: int, config: SceneConfig) -> tuple[str, bytes]:
    arrays = generate_scene_arrays(seed, config, ROBOT)
    return _grid_key(arrays), _route_key(arrays["route"])


@lru_cache(maxsize=None)
def _suite_keys() -> tuple[set[str], set[bytes], set[int]]:
    grids, routes, seeds = set(), set(), set()
    for name in SUITES:
        suite = load_suite(name)
        for episode in suite.episodes:
            grids.add(_scene(episode.scene_seed, suite.scene)[0])
            routes.add(_route_key(episode.route))
            seeds.add(episode.scene_seed)
    return grids, routes, seeds


def _pre_split_draws(count: int, rng: np.random.Generator) -> list[int]:
    """What ``ProceduralScenes`` drew before the seed streams (checkpoints and demo data made then saw these)."""
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


def _training_scene_seeds() -> dict[str, list[int]]:
    """Scene seeds training draws, by origin: ``ProceduralScenes`` on a fresh generator, ``NavEnv(seed=s)``
    resets, ``tools/render_demo_data.py --seed 0`` (one ``NavEnv`` of 20 envs per batch), and the
    same ``NavEnv`` resets as they drew before the streams existed."""
    seeds = sorted(set(TRAIN_SEEDS) | {load_suite(name).seed for name in SUITES})
    source = ProceduralScenes(SceneConfig(), ROBOT)
    out: dict[str, list[int]] = {"ProceduralScenes": [], "NavEnv": [], "render_demo_data": [], "pre-split NavEnv": []}
    for s in seeds:
        out["ProceduralScenes"] += source.draw_seeds(SCENES_PER_SEED, np.random.default_rng(s))
        env = NavEnv(NavEnvConfig(image_size=(8, 8)), seed=s)
        state = env._rng.bit_generator.state
        out["NavEnv"] += env.scenes.draw_seeds(SCENES_PER_SEED, env._rng)
        env._rng.bit_generator.state = state
        out["pre-split NavEnv"] += _pre_split_draws(SCENES_PER_SEED, env._rng)
    demo = NavEnvConfig(task="both", image_size=(8, 8), scene=SceneConfig(route_length=(15.0, 25.0)))
    for batch in range(4):
        env = NavEnv(demo, num_envs=20, seed=0 * 100_003 + batch)
        out["render_demo_data"] += env.scenes.draw_seeds(20, env._rng)
    return out


@pytest.mark.parametrize("name", SUITES)
def test_every_built_in_suite_episode_has_a_benchmark_scene_seed(name: str) -> None:
    suite = load_suite(name)
    assert {purpose_of(e.scene_seed) for e in suite.episodes} == {"benchmark"}


def test_no_suite_scene_is_a_training_scene() -> None:
    grids, routes, suite_seeds = _suite_keys()
    training = _training_scene_seeds()
    # The comparison catches a shared scene: a suite seed generated as training would generate it
    # (training's SceneConfig, not the suite's) matches by layout, and by route where the route lengths agree.
    env_config = NavEnv(NavEnvConfig(image_size=(8, 8))).scene_config
    for name in SUITES:
        suite = load_suite(name)
        grid, route = _scene(suite.episodes[0].scene_seed, env_config)
        assert grid in grids
        assert (route in routes) == (suite.scene.route_length == env_config.route_length)
    for origin, seeds in training.items():
        if not origin.startswith("pre-split"):
            assert {purpose_of(s) for s in seeds} == {"train"}, origin
        assert not set(seeds) & suite_seeds, origin
        keys = [_scene(s, env_config) for s in seeds]
        assert len({g for g, _ in keys}) > 0.9 * len(seeds), origin  # distinct streets, not one layout hashed many times
        shared = [(s, g in grids, r in routes) for s, (g, r) in zip(seeds, keys) if g in grids or r in routes]
        assert not shared, f"{origin} trains on suite scenes: {shared}"


def test_training_and_benchmark_seed_streams_are_disjoint_over_many_draws() -> None:
    streams = {p: draw_scene_seeds(p, np.random.default_rng(0), 20_000) for p in PURPOSES}  # same generator state
    for purpose, seeds in streams.items():
        assert {purpose_of(s) for s in seeds} == {purpose}
        assert min(seeds) >= 0 and max(seeds) < SEED_LIMIT
    for a in PURPOSES:
        for b in PURPOSES:
            if a != b:
                assert not set(streams[a]) & set(streams[b]), (a, b)
    # Broad seed-level check: no fresh training generator of 5000 seeds reaches a built-in suite's
    # scene seeds, neither as it draws now nor as it drew before the streams existed.
    suite_seeds = _suite_keys()[2]
    source = ProceduralScenes(SceneConfig(), ROBOT)
    for draw in (source.draw_seeds, _pre_split_draws):
        assert not any(set(draw(64, np.random.default_rng(s))) & suite_seeds for s in range(5000)), draw
    # A suite drawn with any seed only has benchmark scene seeds.
    assert {
        purpose_of(e.scene_seed) for s in range(3) for e in make_suite("x", s, 3, 1, tasks=["empty"], scene=SceneConfig(route_length=(8.0, 10.0))).episodes
    } == {"benchmark"}


def test_purpose_of_accepts_every_valid_seed_and_rejects_the_rest() -> None:
    rng = np.random.default_rng(1)
    edges = np.arange(NUM_PURPOSES + 1)[:, None] * NUM_DRAWS + np.arange(-2, 3)[None]  # around every block boundary
    valid = np.concatenate([edges[(edges >= 0) & (edges < SEED_LIMIT)], rng.integers(0, SEED_LIMIT, 10_000)])
    for seed in valid.tolist():
        purpose = purpose_of(seed)
        assert scene_seed(purpose, seed - PURPOSES.index(purpose) * NUM_DRAWS) == seed  # exactly one purpose's draw
    assert [purpose_of(np.int64(i * NUM_DRAWS)) for i in range(NUM_PURPOSES)] == list(PURPOSES)
    assert [purpose_of(scene_seed(p, 0)) for p in PURPOSES] == list(PURPOSES)
    assert [purpose_of(scene_seed(p, NUM_DRAWS - 1)) for p in PURPOSES] == list(PURPOSES)
    assert SEED_LIMIT <= 2**31 - 1
    for bad in (-1, SEED_LIMIT, 2**40, 1.0, "3", True):
        with pytest.raises(ValueError):
            purpose_of(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown scene-seed purpose 'test'; known purposes"):
        scene_seed("test", 0)
    with pytest.raises(ValueError, match="draw must be in"):
        scene_seed("train", NUM_DRAWS)


def test_procedural_scenes_draw_their_purpose_and_generate_what_they_drew() -> None:
    config = SceneConfig(route_length=(8.0, 10.0))
    train, validation = ProceduralScenes(config, ROBOT), ProceduralScenes(config, ROBOT, purpose="validation")
    assert train.purpose == "train" and NavEnv(NavEnvConfig(image_size=(8, 8))).scenes.purpose == "train"
    assert {purpose_of(s) for s in validation.draw_seeds(50, np.random.default_rng(0))} == {"validation"}
    seeds = train.draw_seeds(2, np.random.default_rng(3))
    world = train.sample(2, np.random.default_rng(3), "cpu")
    for i, seed in enumerate(seeds):
        route = generate_scene_arrays(seed, config, ROBOT)["route"]
        np.testing.assert_allclose(world.scene.route[i, : len(route)].numpy(), route)
    with pytest.raises(ValueError, match="unknown scene-seed purpose 'bench'"):
        ProceduralScenes(config, ROBOT, purpose="bench")
