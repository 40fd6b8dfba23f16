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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from datamodules.episode import Trajectory  # noqa: E402
from datamodules.shard_writer import EpisodeShardWriter  # noqa: E402
from s2e.sim.env import NavEnv, NavEnvConfig  # noqa: E402
from s2e.sim.expert import ExpertPlanner  # noqa: E402
from s2e.sim.generator import SceneConfig  # noqa: E402
from s2e.sim.rollout import EpisodeRecord, ExpertStyle, expert_controller, run_episodes  # noqa: E402
from s2e.sim.tasks import TASKS  # noqa: E402
from s2e.timing import TimingSpec  # noqa: E402
from s2e.video_io import write_mp4  # noqa: E402


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


def render_demo_data(args: argparse.Namespace) -> dict:
    scene = SceneConfig(route_length=tuple(args.route_length))
    config = NavEnvConfig(task=args.task, robot=args.robot, image_size=args.size, domain=args.domain, scene=scene, timing=TimingSpec())
    noise = torch.Generator().manual_seed(args.seed)
    written = skipped = frames = batch = 0
    start = time.perf_counter()
    with EpisodeShardWriter(args.out, prefix=args.prefix, max_count=args.shard_episodes) as writer:
        while written < args.episodes:
            n = min(args.envs, args.episodes - written)
            env = NavEnv(config, num_envs=n, seed=args.seed * 100_003 + batch)
            style = ExpertStyle.sample(n, noise, noise_std=(args.noise_v, args.noise_omega),
                                       drift_std=(args.drift_v, args.drift_omega), drift_tau=args.drift_tau)
            records = run_episodes(env, expert_controller(ExpertPlanner(env.robot), style, noise))
            for i, record in enumerate(records):
                if not record.success or len(record.t) < 2:
                    skipped += 1
                    continue
                buf = io.BytesIO()
                write_mp4(buf, record.frames, fps=1.0 / config.timing.control_dt)
                traj = Trajectory(t=record.t, xy=record.xy, yaw=record.yaw, speed=record.speed)
                styled = {"speed_scale": float(style.speed_scale[i]), "side_bias": float(style.side_bias[i]), "noise_std": list(style.noise_std),
                          "drift_std": list(style.drift_std), "drift_tau": style.drift_tau}
                key = f"{args.prefix}_{args.task}_{args.robot}_s{args.seed}_b{batch:04d}_e{i:03d}"
                writer.write(key, buf.getvalue(), traj, episode_meta(env, record, styled, args))
                written += 1
                frames += len(record.t)
            batch += 1
            if batch > 4 * (args.episodes // max(args.envs, 1) + 1):
                raise RuntimeError(f"the expert failed too often: {skipped} failed episodes, {written} written")
    shards = [str(p) for p in writer.shard_paths]  # after the writer closed: the last shard counts too
    seconds = time.perf_counter() - start
    return {"episodes": written, "skipped_failed": skipped, "frames": frames, "seconds": round(seconds, 2),
            "frames_per_s": round(frames / max(seconds, 1e-9), 1), "shards": shards}


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
    parser.add_argument("--noise-v", type=float, default=0.05, help="speed noise std as a fraction of the limit")
    parser.add_argument("--noise-omega", type=float, default=0.1, help="yaw-rate noise std as a fraction of the limit")
    parser.add_argument("--drift-v", type=float, default=0.0, help="std of a slow speed drift (fraction of the limit): recovery demonstrations")
    parser.add_argument("--drift-omega", type=float, default=0.0, help="std of a slow yaw-rate drift (fraction of the limit): recovery demonstrations")
    parser.add_argument("--drift-tau", type=float, default=1.0, help="correlation time of the drift, seconds")
    parser.add_argument("--prefix", default="sim", help="shard file and episode key prefix")
    parser.add_argument("--shard-episodes", type=int, default=200, help="episodes per shard")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.episodes < 1 or args.envs < 1:
        raise SystemExit("--episodes and --envs must be >= 1")
    summary = render_demo_data(args)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
