"""NavEnv as a TorchRL environment: specs, resets, determinism, frame stacking, rewards, termination."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import check_env_specs, step_mdp

from s2e.bench.agents import StraightToGoalAgent
from s2e.sim.compiled import CompilePolicy
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.expert import ExpertPlanner
from s2e.sim.generator import SceneConfig
from s2e.sim.physics import ObstacleSet
from s2e.sim.rewards import TERMS
from s2e.sim.tasks import TASKS
from s2e.timing import TimingSpec

SMALL = NavEnvConfig(image_size=(16, 16), scene=SceneConfig(route_length=(6.0, 8.0)))


def _forward(env: NavEnv, speed: float = 0.8) -> torch.Tensor:
    return torch.tensor([speed, 0.1]).expand(env.batch_size[0], 2).clone()


@pytest.mark.parametrize("robot", ["wheeled", "quadruped"])
@pytest.mark.parametrize("task", list(TASKS))
def test_check_env_specs_for_every_task_and_robot(task, robot):
    env = NavEnv(replace(SMALL, task=task, robot=robot), num_envs=2, seed=0)
    check_env_specs(env)
    td = env.rollout(3)
    assert td["next", "frames"].shape == (2, 3, 5, 3, 16, 16)
    assert td["next", "frames"].dtype == torch.uint8
    assert set(td["next", "reward_terms"].keys()) == set(TERMS)


def test_depth_frames_are_stacked_when_asked():
    env = NavEnv(replace(SMALL, with_depth=True), num_envs=2, seed=0)
    check_env_specs(env)
    td = env.reset()
    assert td["depth"].shape == (2, 5, 1, 16, 16) and (td["depth"] > 0).any()


def test_frame_period_must_be_a_multiple_of_the_control_period():
    with pytest.raises(ValueError, match="multiple of control_dt"):
        NavEnv(replace(SMALL, timing=TimingSpec(frame_dt=0.25, control_dt=0.1)), num_envs=1)


def test_stacked_frames_are_exactly_frame_dt_apart():
    timing = TimingSpec(context_frames=4, frame_dt=0.3, control_dt=0.1)
    env = NavEnv(replace(SMALL, timing=timing, task="empty"), num_envs=2, seed=4)
    td = env.reset()
    history = [td["frames"][:, -1].clone()]
    for step in range(1, 13):
        td = step_mdp(env.step(td.set("action", _forward(env))))
        history.append(td["frames"][:, -1].clone())
        for j in range(4):  # frame j is (3 - j) * 3 control steps old, clamped at the episode start
            assert torch.equal(td["frames"][:, j], history[max(step - (3 - j) * 3, 0)])
    assert not torch.equal(history[0], history[-1])  # the view changed as the robot moved


def test_same_seed_same_rollout_and_different_seed_differs():
    def run(seed: int):
        env = NavEnv(replace(SMALL, task="both"), num_envs=3, seed=seed)
        torch.manual_seed(123)  # rollout's random actions come from the global generator
        return env.rollout(15)

    a, b, c = run(7), run(7), run(8)
    for key in ("frames", "goal", "reward", "collisions"):
        assert torch.equal(a["next", key], b["next", key])
    assert not torch.equal(a["next", "goal"], c["next", "goal"])


def test_partial_reset_resets_only_the_masked_envs():
    env = NavEnv(replace(SMALL, task="pedestrian"), num_envs=3, seed=2)
    td = env.reset()
    for _ in range(5):
        td = step_mdp(env.step(td.set("action", _forward(env))))
    xy, goal, frames = env.robot_xy.clone(), env.world.scene.goal.clone(), td["frames"].clone()
    mask = torch.tensor([[True], [False], [True]])
    out = env.reset(td.clone().set("_reset", mask))
    keep = ~mask[:, 0]
    assert torch.equal(env.robot_xy[keep], xy[keep]) and torch.equal(env.world.scene.goal[keep], goal[keep])
    assert torch.equal(out["frames"][keep], frames[keep])
    assert torch.equal(env.robot_xy[mask[:, 0]], env.world.scene.start[mask[:, 0]])  # back at a start
    assert not torch.equal(env.world.scene.goal[mask[:, 0]], goal[mask[:, 0]])  # new scenes
    reset_frames = out["frames"][mask[:, 0]]
    assert torch.equal(reset_frames, reset_frames[:, :1].expand_as(reset_frames))  # history = first frame
    assert (env.time[mask[:, 0]] == 0).all() and (env.time[keep] > 0).all()
    # Obstacles are prepared once per reset for the steps' collision queries: the new scenes' ones.
    prepared, fresh = env._obstacles, ObstacleSet.of(env.world.scene.obstacles, env.world.scene.obstacle_mask)
    assert all(torch.equal(getattr(prepared, f.name), getattr(fresh, f.name)) for f in fields(ObstacleSet))


def test_a_compiling_renderer_draws_partial_resets_as_whole_batches(monkeypatch):
    """Compiled stages are specialised on the batch size: a compiling env renders resets as its whole
    batch (one shape for the whole run) and keeps the reset rows, which match an eager env's."""
    batches = []

    def traced(fn, **kwargs):  # stands in for torch.compile: runs the stage eagerly, records its batch
        def run(*args):
            if fn.__name__ == "_object_spans":
                batches.append(args[1].shape[0])  # scene.obstacles [B, O, 8]
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", traced)
    policy = CompilePolicy()
    outputs = []
    for compiling in (True, False):
        env = NavEnv(replace(SMALL, task="pedestrian"), num_envs=3, seed=2)
        env.renderer.compiled, env.renderer.compile_policy = compiling, policy
        td = env.reset()
        for _ in range(3):
            td = step_mdp(env.step(td.set("action", _forward(env))))
        outputs.append(env.reset(td.clone().set("_reset", torch.tensor([[False], [True], [False]])))["frames"])
    report = policy.report()
    assert all(stage["error"] is None for stage in report["stages"].values())
    assert report["stages"]["crowd._advance"]["compiled_calls"] > 0  # the crowd follows the renderer's policy
    assert set(batches) == {3}
    assert torch.equal(outputs[0][1], outputs[1][1])


def test_reward_is_the_weighted_sum_of_its_terms():
    env = NavEnv(replace(SMALL, task="both"), num_envs=4, seed=1)
    torch.manual_seed(0)
    td = env.rollout(10)
    weights = env.config.rewards.weights()
    total = sum(w * td["next", "reward_terms", t] for t, w in weights.items())
    torch.testing.assert_close(td["next", "reward"], total)


def test_expert_episode_terminates_with_success_and_route_completion():
    env = NavEnv(replace(SMALL, task="obstacle"), num_envs=3, seed=5)
    planner = ExpertPlanner(env.robot)
    td = env.reset()
    arrivals = torch.zeros(3)
    for _ in range(300):
        td = env.step(td.set("action", planner.plan(env.world, env.robot_xy, env.robot_yaw).action))
        arrivals += td["next", "reward_terms", "arrival"][:, 0]
        if td["next", "done"].all():
            break
        td = step_mdp(td)
    nxt = td["next"]
    assert nxt["terminated"].all() and nxt["success"].all() and not nxt["truncated"].any()
    assert torch.equal(arrivals, torch.ones(3))  # the arrival bonus is paid once
    assert torch.equal(nxt["route_completion"], torch.ones(3, 1))


def test_standing_still_times_out_as_truncated():
    env = NavEnv(replace(SMALL, task="empty", time_limit_factor=0.0, time_limit_slack=1.05), num_envs=2, seed=0)  # 11 steps
    td = env.reset()
    for step in range(10):
        td = env.step(td.set("action", torch.zeros(2, 2)))
        assert not td["next", "done"].any()
        td = step_mdp(td)
    td = env.step(td.set("action", torch.zeros(2, 2)))
    assert td["next", "truncated"].all() and not td["next", "terminated"].any()
    assert (td["next", "route_completion"] < 0.05).all()


def test_action_repeat_holds_the_command_and_sums_the_rewards_of_the_held_periods():
    """One step of an env with action_repeat 2 == two steps of the plain env with the same command."""
    held = NavEnv(replace(SMALL, task="both", action_repeat=2), num_envs=3, seed=7)
    plain = NavEnv(replace(SMALL, task="both"), num_envs=3, seed=7)
    td_held, td_plain = held.reset(), plain.reset()
    for _ in range(6):
        action = _forward(held, speed=1.0)
        td_held = held.step(td_held.set("action", action))
        first = plain.step(td_plain.set("action", action))
        second = plain.step(step_mdp(first).set("action", action))
        torch.testing.assert_close(held.robot_xy, plain.robot_xy)
        torch.testing.assert_close(td_held["next", "reward"], first["next", "reward"] + second["next", "reward"])
        for term in TERMS:
            torch.testing.assert_close(td_held["next", "reward_terms", term], first["next", "reward_terms", term] + second["next", "reward_terms", term])
        td_held, td_plain = step_mdp(td_held), step_mdp(second)
    assert held.stride == plain.stride // 2  # every rendered frame of the held env is a context frame
    assert torch.equal(held.time, plain.time)


def test_an_episode_that_ends_inside_the_held_periods_stops_there():
    config = replace(SMALL, task="empty", time_limit_factor=0.0, time_limit_slack=0.1, action_repeat=2)  # a 1-period limit
    env = NavEnv(config, num_envs=2, seed=0)
    td = env.reset()
    start = env.robot_xy.clone()
    td = env.step(td.set("action", _forward(env, speed=1.0)))
    assert td["next", "truncated"].all()
    assert torch.equal(env._steps, torch.ones(2, dtype=torch.long))  # the second held period never ran
    moved = (env.robot_xy - start).norm(dim=-1)
    assert ((moved > 0.05) & (moved < 1.0 * 0.1 + 1e-4)).all()  # one period at 1 m/s, not two


def test_action_repeat_must_divide_the_frame_period():
    with pytest.raises(ValueError, match="does not divide"):
        NavEnv(replace(SMALL, action_repeat=3), num_envs=1)  # frame_dt 0.2 s is 2 control periods


def _straight_at_goal(env: NavEnv, steps: int) -> tuple[list[TensorDictBase], torch.Tensor]:
    """Drive every env straight at its goal (through obstacles) for ``steps`` steps, with resets off:
    the step outputs and the step at which each env's first contact event happened (-1: none)."""
    agent = StraightToGoalAgent()
    td, outputs = env.reset(), []
    first_contact = torch.full((env.batch_size[0],), -1)
    for step in range(steps):
        td = env.step(td.set("action", agent.act(td, env)))
        outputs.append(td["next"])
        new = (td["next", "reward_terms", "collision"][:, 0] < 0) & (first_contact < 0)
        first_contact[new] = step
        td = step_mdp(td)
    return outputs, first_contact


@pytest.mark.parametrize("action_repeat", [1, 2])
def test_end_on_contact_ends_the_episode_at_the_first_contact_as_terminated(action_repeat):
    """Straight at the goal through an obstacle course: with ``end_on_contact`` the step of the first
    contact event is the episode's last (terminated, not a success, not truncated); the same scenes
    without it keep going, pinned."""
    config = replace(SMALL, task="obstacle", action_repeat=action_repeat)
    ending, first_contact = _straight_at_goal(NavEnv(replace(config, end_on_contact=True), num_envs=6, seed=3), 60)
    plain, plain_contact = _straight_at_goal(NavEnv(config, num_envs=6, seed=3), 60)
    assert torch.equal(first_contact, plain_contact)  # same scenes, same motion up to the contact
    touched = (first_contact >= 0).nonzero()[:, 0]
    assert len(touched) >= 2, "the obstacle task must put obstacles on the straight line"
    for env_index in touched.tolist():
        step = int(first_contact[env_index])
        out = ending[step]
        assert out["done"][env_index] and out["terminated"][env_index]
        assert not out["truncated"][env_index] and not out["success"][env_index]
        assert not plain[step]["done"][env_index]  # without the option the pinned episode goes on
        assert not plain[step + 1]["done"][env_index]
        assert all(not plain[s]["success"][env_index] for s in range(step, 60))


def _distractor_counts(env: NavEnv) -> tuple[list[int], list[int]]:
    scene = env.world.scene
    return scene.obstacle_mask.sum(1).tolist(), scene.pedestrian_mask.sum(1).tolist()


def test_a_task_mix_gives_every_scene_the_distractors_of_its_own_task():
    """RL on a mix trains one batch on several NavBench tasks: each scene draws its task from the
    list and gets exactly that task's distractors, also at a partial reset."""
    names = ("empty", "obstacle", "pedestrian", "both")
    env = NavEnv(replace(SMALL, task=names, scene=SceneConfig()), num_envs=24, seed=5)  # routes long enough for obstacles
    check_env_specs(env)
    td = env.reset()
    first = env.scenes.last_tasks.copy()
    assert set(first.tolist()) == {0, 1, 2, 3}  # 24 draws: every task is in the batch

    def assert_counts_match(tasks, rows):
        obstacles, pedestrians = _distractor_counts(env)
        for row, t in zip(rows, tasks):
            spec = TASKS[names[t]]
            assert (obstacles[row] > 0) == spec.obstacles and (pedestrians[row] > 0) == spec.pedestrians

    assert_counts_match(first, range(24))
    mask = torch.zeros(24, 1, dtype=torch.bool)
    mask[::3] = True
    env.reset(td.clone().set("_reset", mask))
    rows = mask[:, 0].nonzero()[:, 0].tolist()
    assert len(env.scenes.last_tasks) == len(rows)
    assert_counts_match(env.scenes.last_tasks, rows)
    keep = [r for r in range(24) if r not in rows]
    assert_counts_match(first[keep], keep)  # the other envs keep their scenes and tasks


def test_a_task_mix_is_seeded_and_weighted_by_repetition():
    def draws(task, seed):
        env = NavEnv(replace(SMALL, task=task), num_envs=64, seed=seed)
        env.reset()
        return env.scenes.last_tasks

    assert (draws(("empty", "both"), 1) == draws(("empty", "both"), 1)).all()
    weighted = draws(("obstacle", "obstacle", "obstacle", "empty"), 1)
    assert (weighted < 3).sum() > 32  # three of four slots are obstacle
    one = NavEnv(replace(SMALL, task=("both",)), num_envs=2, seed=1)
    assert one.task.name == "both"  # a one-task list is that task


@pytest.mark.parametrize(("task", "message"), [((), "at least one task"), (("empty", "stairs"), "unknown task 'stairs'")])
def test_a_bad_task_mix_is_a_clear_error(task, message):
    with pytest.raises(ValueError, match=message):
        NavEnv(replace(SMALL, task=task), num_envs=1)


def test_a_mixed_env_has_no_single_task():
    env = NavEnv(replace(SMALL, task=("empty", "both")), num_envs=1)
    with pytest.raises(ValueError, match="mixes tasks"):
        env.task
