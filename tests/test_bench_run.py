"""NavBench runs: the benchmark discriminates (expert >> straight-to-goal where distractors matter),
reruns are identical, and a checkpoint, its path and its TorchScript export score the same."""

from __future__ import annotations

import pathlib
from dataclasses import replace

import lightning.pytorch as pl
import pytest
from test_bench_cli import tiny_checkpoint

from s2e.bench.agents import build_agent
from s2e.bench.metrics import summarize
from s2e.bench.module import NavBenchDataModule, NavBenchModule
from s2e.bench.runner import make_env, run_batch
from s2e.bench.suite import make_suite
from s2e.sim.generator import SceneConfig
from s2e.timing import TimingMismatchError, TimingSpec


def _run(suite, kind: str):
    env = make_env(suite, suite.episodes, "sim", (8, 8))
    results, _ = run_batch(env, build_agent(kind), suite.episodes, "sim")
    return results


def test_expert_beats_straight_to_goal_on_obstacles_and_pedestrians() -> None:
    # straight sidewalks only: driving straight at the goal is right there unless something is in the way
    scene = replace(SceneConfig(), layouts=("straight",), route_length=(12.0, 16.0), num_pedestrians=(8, 10))
    suite = make_suite("discriminate", seed=11, scenes_per_task=5, episodes_per_scene=1, tasks=["obstacle", "pedestrian"], scene=scene, time_limit_slack=3.0)
    expert = summarize(_run(suite, "expert"), suite.arrival_radius, resamples=200)["tasks"]
    straight = summarize(_run(suite, "straight"), suite.arrival_radius, resamples=200)["tasks"]
    sr = lambda s, t: s[t]["success_rate"]["mean"]  # noqa: E731
    ct = lambda s, t: s[t]["collisions"]["mean"]  # noqa: E731
    assert sr(expert, "obstacle") == 1.0 and sr(straight, "obstacle") <= 0.6  # blocked by benches, bins, boxes
    assert ct(expert, "obstacle") == 0.0 and ct(straight, "obstacle") >= 0.4
    assert sr(expert, "pedestrian") == 1.0 and ct(expert, "pedestrian") == 0.0
    assert ct(straight, "pedestrian") >= 1.0  # it gets there by walking into people
    stuck = lambda s, t: s[t]["stuck"]["mean"]  # noqa: E731
    # straight-to-goal pushes into what blocks it until time runs out; the expert never ends pinned
    assert stuck(straight, "obstacle") >= 0.4 and stuck(straight, "obstacle") <= 1 - sr(straight, "obstacle")
    assert stuck(expert, "obstacle") == 0.0 and stuck(expert, "pedestrian") == 0.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bench_run_ckpt"))


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def short_suite(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Two short episodes with a tight time limit: enough to compare runs, quick to run."""
    scene = replace(SceneConfig(), route_length=(7.0, 8.0))
    suite = make_suite(
        "short", seed=4, scenes_per_task=1, episodes_per_scene=1, tasks=["obstacle", "both"], scene=scene, time_limit_factor=1.0, time_limit_slack=1.0
    )
    return suite.save(tmp_path_factory.mktemp("suite") / "short.json")


def _test(out: pathlib.Path, suite: pathlib.Path | str = "quick", ckpt_path=None, **model) -> dict:
    module = NavBenchModule(out_dir=str(out), videos=0, plots=0, bootstrap_resamples=200, **model)
    data = NavBenchDataModule(str(suite), num_envs=4)
    _trainer().test(module, datamodule=data, ckpt_path=None if ckpt_path is None else str(ckpt_path), verbose=False)
    return module.report


def test_reruns_are_identical_and_every_way_to_load_the_policy_agrees(checkpoint: pathlib.Path, short_suite: pathlib.Path, tmp_path: pathlib.Path) -> None:
    first = _test(tmp_path / "a", short_suite, ckpt_path=checkpoint)
    again = _test(tmp_path / "b", short_suite, ckpt_path=checkpoint)
    by_path = _test(tmp_path / "c", short_suite, policy_path=str(checkpoint))
    assert first["agent"] == "tiny" and len(first["episodes"]) == 2
    assert first["episodes"] == again["episodes"] == by_path["episodes"]
    assert first["results"] == again["results"] == by_path["results"]


@pytest.mark.slow
def test_the_torchscript_export_scores_like_its_checkpoint(checkpoint: pathlib.Path, short_suite: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from s2e.checkpoint import load_policy_from_checkpoint
    from s2e.export import export_policy

    policy, timing, anchors = load_policy_from_checkpoint(checkpoint)
    export_policy(policy, timing, anchors, tmp_path / "export")
    first = _test(tmp_path / "a", short_suite, policy_path=str(checkpoint))
    scripted = _test(tmp_path / "d", short_suite, policy_path=str(tmp_path / "export"))
    assert scripted["agent"] == "export"
    for a, b in zip(first["episodes"], scripted["episodes"], strict=True):  # same controller limits as the wheeled robot's
        assert (a["episode_id"], a["success"], a["collisions"]) == (b["episode_id"], b["success"], b["collisions"])
        assert a["route_completion"] == pytest.approx(b["route_completion"], abs=1e-3)


def test_random_baseline_is_seeded(short_suite: pathlib.Path, tmp_path: pathlib.Path) -> None:
    a = _test(tmp_path / "a", short_suite, agent="random", seed=3)
    b = _test(tmp_path / "b", short_suite, agent="random", seed=3)
    c = _test(tmp_path / "c", short_suite, agent="random", seed=4)
    assert a["episodes"] == b["episodes"] and a["agent"] == "random"
    assert a["run"] == {"num_envs": 4, "image_size": [96, 96], "lookahead_time": 0.6, "source": None, "frames": "real"}
    assert [e["path_length"] for e in a["episodes"]] != [e["path_length"] for e in c["episodes"]]


def test_a_checkpoint_for_another_timing_is_refused_before_any_episode(tmp_path: pathlib.Path) -> None:
    other = tiny_checkpoint(tmp_path, TimingSpec(waypoint_dt=0.5), name="slow.ckpt")
    with pytest.raises(TimingMismatchError, match=r"waypoint_dt: policy 'slow'=0.5 vs suite 'quick'=0.3"):
        _test(tmp_path / "out", ckpt_path=other)  # the quick suite, refused before its first episode
    with pytest.raises(TimingMismatchError, match=r"waypoint_dt: policy 'slow'=0.5 vs suite 'quick'=0.3"):
        _test(tmp_path / "out", policy_path=str(other))
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(ValueError, match="--ckpt_path was given but model.init_args.agent is 'expert'"):
        _test(tmp_path / "out", ckpt_path=other, agent="expert")
    with pytest.raises(ValueError, match="agent 'policy' needs a checkpoint"):
        _test(tmp_path / "out")
