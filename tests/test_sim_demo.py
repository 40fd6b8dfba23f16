"""render_demo_data writes shards whose members load back (trajectory, video, metadata)."""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
import torch

from datamodules.episode import Trajectory
from s2e.scripts import render_demo_data


def test_demo_shards_load_back(tmp_path):
    summary = render_demo_data.run(
        ["--out", str(tmp_path), "--episodes", "3", "--envs", "2", "--size", "32x48", "--route-length", "5", "6", "--task", "both", "--seed", "3"]
    )
    assert summary["episodes"] == 3
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted(tmp_path.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, ext = info.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    assert len(members) == 3
    for sample in members.values():
        traj = Trajectory.from_npz_bytes(sample["traj.npz"]).validate()
        meta = json.loads(sample["json"])
        with av.open(io.BytesIO(sample["mp4"])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == len(traj.t) and frames[0].shape == (32, 48, 3)
        assert abs(meta["fps"] - 10.0) < 1e-9 and abs(traj.t[1] - traj.t[0] - 0.1) < 1e-9
        assert meta["source"] == "s2e-sim" and meta["license"] == "generated" and meta["embodiment"] == "wheeled"
        assert abs(meta["camera"]["fx"] - 24.0) < 1e-6  # 90 degree hfov, 48 px wide
        assert meta["domain"] == "recorded" and meta["success"]
        assert traj.speed is not None and traj.speed.max() <= 1.5 + 1e-6
        assert traj.xy[-1].tolist() != traj.xy[0].tolist()


def test_sim_preview_writes_views_and_a_decodable_episode_video(tmp_path):
    from PIL import Image

    from s2e.scripts import sim_preview

    summary = sim_preview.run(["--task", "obstacle", "--robot", "quadruped", "--out", str(tmp_path), "--size", "48x64", "--seed", "1"])
    assert Image.open(tmp_path / "ego.png").size == (64, 48)
    top = Image.open(tmp_path / "topdown.png")
    colours = np.unique(np.asarray(top.convert("RGB")).reshape(-1, 3), axis=0)
    assert top.size[0] > 200 and len(colours) > 10  # a drawn map, not a blank canvas
    with av.open(str(tmp_path / "episode.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == summary["frames"]
    assert summary["success"]


def test_demo_shards_stream_through_the_datamodule_unchanged(tmp_path):
    from datamodules.nav_video import NavVideoDataModule

    render_demo_data.run(
        ["--out", str(tmp_path), "--episodes", "2", "--envs", "2", "--size", "32x32", "--route-length", "8", "9", "--task", "obstacle", "--seed", "5"]
    )
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    dm = NavVideoDataModule(
        train_shards=shards, image_size=(32, 32), batch_size=4, num_workers=0, shuffle_buffer=0, goal_horizon_s=(1.0, 3.0), samples_per_epoch=24
    )
    dm.setup("fit")
    batches = [dm.consume_skip_counts(b) for b in dm.train_dataloader()]
    assert sum(b["frames"].shape[0] for b in batches) == 24
    first = batches[0]
    assert first["frames"].dtype == torch.uint8 and first["frames"].shape[1:] == (5, 3, 32, 32)
    # an expert driving forward: normalized waypoints move ahead, scale is a plausible metres-per-step
    assert (first["waypoints"][:, -1, 0] > 0).all() and ((first["scale"] > 0.05) & (first["scale"] < 1.5 * 0.3 + 1e-6)).all()
    assert not any(dm.skip_counts().values())


def test_expert_drift_is_a_slow_offset_with_the_asked_spread():
    """Recovery demonstrations: the drifted expert's commands differ from the plain expert's by an
    Ornstein-Uhlenbeck offset (std drift_std x limits, lag-1 correlation exp(-dt / tau)), unlike
    white noise, which decorrelates every step."""
    from s2e.sim.env import NavEnv, NavEnvConfig
    from s2e.sim.expert import ExpertPlanner
    from s2e.sim.rollout import ExpertStyle, expert_controller

    env = NavEnv(NavEnvConfig(task="empty", image_size=(16, 16)), num_envs=4, seed=5)
    env.reset()
    planner = ExpertPlanner(env.robot)
    base = ExpertStyle.sample(4, torch.Generator().manual_seed(0), noise_std=(0.0, 0.0))
    drifted = ExpertStyle(base.speed_scale, base.side_bias, drift_std=(0.1, 0.3), drift_tau=1.0)
    plain = expert_controller(planner, base)(env)
    control = expert_controller(planner, drifted, torch.Generator().manual_seed(1))
    offsets = torch.stack([control(env) - plain for _ in range(400)])  # same state: the offset alone
    omega = offsets[..., 1]
    assert abs(float(omega.std()) / (0.3 * env.robot.max_omega) - 1.0) < 0.35
    lag1 = float(torch.corrcoef(torch.stack([omega[:-1].flatten(), omega[1:].flatten()]))[0, 1])
    assert abs(lag1 - np.exp(-env.config.timing.control_dt / 1.0)) < 0.08
    white = expert_controller(planner, ExpertStyle(base.speed_scale, base.side_bias, noise_std=(0.1, 0.3)), torch.Generator().manual_seed(1))
    white_omega = torch.stack([white(env) - plain for _ in range(100)])[..., 1]
    assert abs(float(torch.corrcoef(torch.stack([white_omega[:-1].flatten(), white_omega[1:].flatten()]))[0, 1])) < 0.3


def test_takeover_alternates_drivers_and_marks_what_the_expert_drove():
    """Intervention data: the command each step is the learner's or the expert's as the schedule
    says, learner turns last learner_s, expert turns at least the policy's horizon, and the per-pose
    mask says who drove (the final pose counts as demonstrated)."""
    from s2e.sim.env import NavEnv, NavEnvConfig
    from s2e.sim.rollout import TakeoverController

    env = NavEnv(NavEnvConfig(task="empty", image_size=(16, 16)), num_envs=6, seed=3)
    env.reset()
    learner = lambda env: torch.full((6, 2), 0.25)  # noqa: E731
    expert = lambda env: torch.full((6, 2), -0.5)  # noqa: E731
    control = TakeoverController(
        learner, expert, 6, control_dt=0.1, generator=torch.Generator().manual_seed(0), learner_s=(0.5, 1.0), expert_s=(0.2, 0.4), horizon_s=1.0
    )
    commands = torch.stack([control(env) for _ in range(200)])  # [S, N, 2]
    by_learner = commands[..., 0] == 0.25
    assert torch.equal(by_learner, ~torch.stack(control.demonstrated))
    for i in range(6):
        flags = by_learner[:, i].int().tolist()
        runs, value, length = [], flags[0], 0
        for f in flags:
            if f == value:
                length += 1
            else:
                runs.append((value, length))
                value, length = f, 1
        inner = runs[1:]  # the first run started at a random point of its draw
        assert inner and all(5 <= n <= 10 for v, n in inner if v) and all(12 <= n <= 14 for v, n in inner if not v), runs
    mask = control.demonstrated_poses(0, 50)
    assert mask.tolist() == (~by_learner[:49, 0]).tolist() + [True]


def _drive_and_watch(takeover_clearance):
    """200 steps of a straight-driving learner and a turn-in-place expert in obstacle scenes: the
    clearance before each step, whether the learner drove it, and the controller."""
    from s2e.sim.env import NavEnv, NavEnvConfig
    from s2e.sim.physics import footprint_clearance
    from s2e.sim.rollout import TakeoverController

    env = NavEnv(NavEnvConfig(task="obstacle", image_size=(16, 16)), num_envs=8, seed=5)
    obs = env.reset()
    learner = lambda env: torch.tensor([[1.2, 0.0]]).expand(8, 2)  # noqa: E731
    expert = lambda env: torch.tensor([[0.0, 1.5]]).expand(8, 2)  # noqa: E731
    control = TakeoverController(
        learner,
        expert,
        8,
        control_dt=0.1,
        generator=torch.Generator().manual_seed(1),
        learner_s=(100.0, 100.0),
        expert_s=(0.5, 0.5),
        horizon_s=0.5,
        takeover_clearance=takeover_clearance,
    )
    clearance, by_learner, touching = [], [], []
    for _ in range(200):
        clearance.append(footprint_clearance(env.world, env.robot_xy[:, None], env.robot.radius).total[:, 0].clone())
        touching.append(env.contacts.in_contact.clone())
        command = control(env)
        by_learner.append(command[:, 0] > 0)
        obs = env.step(obs.set("action", command)).get("next")
    return torch.stack(clearance), torch.stack(by_learner), torch.stack(touching), control


def test_gated_takeover_hands_over_before_the_learner_comes_too_close():
    """Human-gated DAgger: with takeover_clearance the expert drives every step that starts within
    the gate's distance of something solid, so the learner never drives into it; without the gate
    the same learner does, which is what makes the gate matter."""
    clearance, by_learner, _, control = _drive_and_watch((0.3, 0.3))
    assert control.gated_takeovers > 0
    assert not (by_learner & (clearance <= 0.3)).any()
    assert torch.equal(~by_learner, torch.stack(control.demonstrated))
    ungated_clearance, ungated_learner, _, ungated = _drive_and_watch(None)
    assert ungated.gated_takeovers == 0
    assert (ungated_learner & (ungated_clearance <= 0.3)).any()


def test_takeover_at_zero_clearance_hands_over_on_touch():
    """``takeover_clearance (0, 0)``: the expert takes over once the learner touches something.
    Blocked motion leaves a pushing robot a few mm short of contact, so a gate on clearance <= 0
    alone would never fire and the learner would stay pinned; the env's contact state must."""
    _, by_learner, touching, control = _drive_and_watch((0.0, 0.0))
    ungated_clearance, ungated_learner, ungated_touching, _ = _drive_and_watch(None)
    assert (ungated_learner & ungated_touching).sum() > 20  # the straight learner pins itself for many steps
    assert not (ungated_clearance[ungated_touching] <= 0).all()  # ... at a positive clearance
    assert control.gated_takeovers > 0
    assert not (by_learner & touching).any()


def test_takeover_clearance_must_be_an_ordered_non_negative_range():
    import pytest

    from s2e.sim.rollout import TakeoverController

    with pytest.raises(ValueError, match="takeover_clearance"):
        TakeoverController(lambda e: None, lambda e: None, 2, 0.1, torch.Generator(), takeover_clearance=(0.3, 0.1))


def _closest_obstacle_pass(safety: float) -> tuple[float, bool]:
    """The expert (``safety`` metres) through 6 obstacle scenes: its smallest footprint clearance
    to a static obstacle, and whether every episode arrived."""
    from s2e.sim.env import NavEnv, NavEnvConfig
    from s2e.sim.expert import ExpertConfig, ExpertPlanner
    from s2e.sim.physics import footprint_clearance
    from s2e.sim.rollout import expert_controller, run_episodes

    env = NavEnv(NavEnvConfig(task="obstacle", image_size=(16, 16)), num_envs=6, seed=8)
    expert = expert_controller(ExpertPlanner(env.robot, ExpertConfig(safety=safety)))
    closest = [float("inf")]

    def watch(env):
        clearance = footprint_clearance(env.world, env.robot_xy[:, None], env.robot.radius, with_pedestrians=False).obstacle
        closest[0] = min(closest[0], float(clearance.min()))
        return expert(env)

    records = run_episodes(env, watch)
    return closest[0], all(r.success for r in records)


def test_expert_safety_sets_how_wide_it_passes_obstacles():
    """--expert-safety: demonstrations keep the asked margin (a learner imitates to within its own
    error), and still arrive; the default skims obstacles at its 0.1 m."""
    default, default_arrived = _closest_obstacle_pass(0.1)
    wide, wide_arrived = _closest_obstacle_pass(0.35)
    assert default_arrived and wide_arrived
    assert default < 0.2
    assert wide >= 0.3


def test_gate_and_margin_options_refuse_what_cannot_apply(tmp_path, capsys):
    """--takeover-clearance without a learner and a negative --expert-safety are usage errors that
    say why, before anything renders."""
    import pytest

    base = ["--out", str(tmp_path), "--episodes", "1", "--size", "16x16"]
    with pytest.raises(SystemExit):
        render_demo_data.run([*base, "--takeover-clearance", "0.0", "0.2"])
    assert "--takeover-clearance needs --learner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        render_demo_data.run([*base, "--expert-safety", "-0.1"])
    assert "--expert-safety must be >= 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
