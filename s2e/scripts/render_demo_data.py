"""Render expert demonstrations in the simulator into video shards (the demo's stand-in for real video).

    python tools/render_demo_data.py --out data/demo_shards --episodes 40 --domain recorded --size 96x96

Episodes run batched (``--envs`` side by side). Each one is an expert rollout with its own style
(top speed, preferred passing side, action noise), so the data is multi-modal like human video.
Every episode becomes one shard sample: ``<key>.mp4`` (H.264 at fps = 1 / control_dt),
``<key>.traj.npz`` (t / xy / yaw / speed at the frame times) and ``<key>.json`` (fps, source,
embodiment, scene, domain, license, camera intrinsics from the robot's horizontal field of view).
Episodes where the expert failed are skipped and counted. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tensordict import TensorDictBase

from datamodules.episode import Trajectory
from datamodules.shard_writer import EpisodeShardWriter
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.expert import ExpertConfig, ExpertPlanner
from s2e.sim.generator import SceneConfig
from s2e.sim.rollout import Controller, EpisodeRecord, ExpertStyle, TakeoverController, expert_controller, run_episodes
from s2e.sim.tasks import TASKS
from s2e.timing import TimingSpec
from s2e.video_io import write_mp4


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 96x96 (HxW), got {text!r}") from exc
    if h < 8 or w < 8 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"size must be even and at least 8x8 (H.264), got {text!r}")
    return h, w


def episode_meta(env: NavEnv, record: EpisodeRecord, style: dict, args: argparse.Namespace) -> dict:
    h, w = env.config.image_size
    return {
        "fps": 1.0 / env.config.timing.control_dt,
        "source": "s2e-sim",
        "embodiment": env.robot.name,
        "scene": f"procedural-{record.style_seed}",
        "task": env.task.name,
        "domain": env.config.domain,
        "license": "generated",
        "camera": {**env.robot.intrinsics(w, h), "height_m": env.robot.camera_height, "hfov_deg": env.robot.hfov_deg},
        "timing": env.config.timing.to_dict(),
        "expert": style,
        "success": record.success,
        "collisions": record.collisions,
    }


def learner_controller(checkpoint: Path, config: NavEnvConfig) -> tuple[Callable[[TensorDictBase], None], Controller]:
    """(observe, controller) driving a trained policy's best mode, as NavBench drives it: ``observe``
    hands the controller each observation (the policy needs frames and goal, the expert the env)."""
    from s2e.bench.agents import PolicyAgent, check_agent_fits

    agent = PolicyAgent.from_checkpoint(checkpoint)
    check_agent_fits(agent, config.timing, "render_demo_data")
    if tuple(agent.image_size) != tuple(config.image_size):
        raise ValueError(f"--learner takes {agent.image_size[0]}x{agent.image_size[1]} frames; render with --size to match")
    seen: dict = {}

    def drive(env: NavEnv):
        return agent.act(seen["obs"], env)

    return (lambda obs: seen.__setitem__("obs", obs)), drive


def env_config(args: argparse.Namespace) -> NavEnvConfig:
    """The env the command line describes (task, robot, frame size, appearance domain, scene)."""
    scene = SceneConfig(route_length=tuple(args.route_length), num_obstacles=tuple(args.num_obstacles))
    return NavEnvConfig(task=args.task, robot=args.robot, image_size=args.size, domain=args.domain, scene=scene, timing=TimingSpec())


def render_demo_data(args: argparse.Namespace, learner: Optional[tuple[Callable[[TensorDictBase], None], Controller]] = None) -> dict:
    """Render ``args.episodes`` successful episodes into shards; with ``learner`` (see
    :func:`learner_controller`), as intervention data: the learner drives and the expert takes over."""
    config = env_config(args)
    noise = torch.Generator().manual_seed(args.seed)
    written = skipped = frames = batch = gated = demonstrated_frames = 0
    start = time.perf_counter()
    with EpisodeShardWriter(args.out, prefix=args.prefix, max_count=args.shard_episodes) as writer:
        while written < args.episodes:
            n = min(args.envs, args.episodes - written)
            env = NavEnv(config, num_envs=n, seed=args.seed * 100_003 + batch)
            style = ExpertStyle.sample(
                n, noise, noise_std=(args.noise_v, args.noise_omega), drift_std=(args.drift_v, args.drift_omega), drift_tau=args.drift_tau
            )
            expert = expert_controller(ExpertPlanner(env.robot, ExpertConfig(safety=args.expert_safety)), style, noise)
            takeover = observe = None
            if learner is not None:
                observe, drive = learner
                takeover = TakeoverController(
                    drive,
                    expert,
                    n,
                    config.timing.control_dt,
                    noise,
                    learner_s=tuple(args.learner_seconds),
                    expert_s=tuple(args.expert_seconds),
                    horizon_s=config.timing.horizon,
                    takeover_clearance=None if args.takeover_clearance is None else tuple(args.takeover_clearance),
                )
            records = run_episodes(env, takeover or expert, observe=observe)
            for i, record in enumerate(records):
                if not record.success or len(record.t) < 2:
                    skipped += 1
                    continue
                buf = io.BytesIO()
                write_mp4(buf, record.frames, fps=1.0 / config.timing.control_dt)
                demonstrated = takeover.demonstrated_poses(i, len(record.t)) if takeover is not None else None
                traj = Trajectory(t=record.t, xy=record.xy, yaw=record.yaw, speed=record.speed, demonstrated=demonstrated)
                styled = {
                    "speed_scale": float(style.speed_scale[i]),
                    "side_bias": float(style.side_bias[i]),
                    "noise_std": list(style.noise_std),
                    "drift_std": list(style.drift_std),
                    "drift_tau": style.drift_tau,
                    "safety_m": args.expert_safety,
                }
                key = f"{args.prefix}_{args.task}_{args.robot}_s{args.seed}_b{batch:04d}_e{i:03d}"
                writer.write(key, buf.getvalue(), traj, episode_meta(env, record, styled, args))
                written += 1
                frames += len(record.t)
                demonstrated_frames += len(record.t) if demonstrated is None else int(demonstrated.sum())
            gated += takeover.gated_takeovers if takeover is not None else 0
            batch += 1
            if batch > 4 * (args.episodes // max(args.envs, 1) + 1):
                raise RuntimeError(f"the expert failed too often: {skipped} failed episodes, {written} written")
    shards = [str(p) for p in writer.shard_paths]  # after the writer closed: the last shard counts too
    seconds = time.perf_counter() - start
    return {
        "episodes": written,
        "skipped_failed": skipped,
        "frames": frames,
        "demonstrated_frames": demonstrated_frames,
        "gated_takeovers": gated,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / max(seconds, 1e-9), 1),
        "shards": shards,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the tar shards")
    parser.add_argument("--episodes", type=int, required=True, help="episodes to write")
    parser.add_argument("--domain", default="recorded", help="appearance domain of the renderer")
    parser.add_argument("--task", default="both", choices=list(TASKS))
    parser.add_argument("--robot", default="wheeled", choices=["wheeled", "quadruped"])
    parser.add_argument("--size", type=parse_size, default=(96, 96), help="frame size HxW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--envs", type=int, default=20, help="episodes simulated side by side")
    parser.add_argument("--route-length", type=float, nargs=2, default=(15.0, 25.0), metavar=("MIN", "MAX"), help="route length range, metres")
    parser.add_argument(
        "--num-obstacles",
        type=int,
        nargs=2,
        default=SceneConfig.num_obstacles,
        metavar=("MIN", "MAX"),
        help="static obstacles per scene (tasks with obstacles)",
    )
    parser.add_argument("--noise-v", type=float, default=0.05, help="speed noise std as a fraction of the limit")
    parser.add_argument("--noise-omega", type=float, default=0.1, help="yaw-rate noise std as a fraction of the limit")
    parser.add_argument("--drift-v", type=float, default=0.0, help="std of a slow speed drift (fraction of the limit): recovery demonstrations")
    parser.add_argument("--drift-omega", type=float, default=0.0, help="std of a slow yaw-rate drift (fraction of the limit): recovery demonstrations")
    parser.add_argument("--drift-tau", type=float, default=1.0, help="correlation time of the drift, seconds")
    parser.add_argument(
        "--learner", type=Path, default=None, help="policy checkpoint that drives between takeovers: intervention (DAgger) data whose futures are the expert's"
    )
    parser.add_argument("--learner-seconds", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"), help="how long the learner drives at a time")
    parser.add_argument(
        "--expert-seconds",
        type=float,
        nargs=2,
        default=(1.0, 4.0),
        metavar=("MIN", "MAX"),
        help="how long the expert drives after a takeover, beyond the policy's horizon",
    )
    parser.add_argument(
        "--takeover-clearance",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="with --learner: the expert also takes over once the robot comes within this many metres (drawn per turn) of anything solid or a person "
        "(human-gated DAgger; pair it with long --learner-seconds so labels land where the learner fails)",
    )
    parser.add_argument(
        "--expert-safety",
        type=float,
        default=ExpertConfig.safety,
        help="metres of clearance the expert keeps from obstacles and people (arcs closer count as collisions); a learner "
        "imitates it only to within its own error, so demonstrations need a margin wider than that error",
    )
    parser.add_argument("--prefix", default="sim", help="shard file and episode key prefix")
    parser.add_argument("--shard-episodes", type=int, default=200, help="episodes per shard")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Render as the command line says, print the summary as one JSON line and return it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.envs < 1:
        parser.error("--episodes and --envs must be >= 1")
    if args.takeover_clearance is not None and args.learner is None:
        parser.error("--takeover-clearance needs --learner (the policy the expert takes over from)")
    if args.expert_safety < 0:
        parser.error(f"--expert-safety must be >= 0 metres, got {args.expert_safety}")
    learner = None
    if args.learner is not None:
        try:
            learner = learner_controller(args.learner, env_config(args))
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    summary = render_demo_data(args, learner)
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    run(argv)
