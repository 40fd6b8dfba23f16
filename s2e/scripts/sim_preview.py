"""Preview one simulated expert episode: an egocentric frame, a top-down map and the episode video.

    python tools/sim_preview.py --task both --robot wheeled --out artifacts/preview

Writes ``ego.png`` (the camera view halfway through the episode), ``topdown.png`` (ground classes,
obstacles, route, the robot's path, pedestrian tracks) and ``episode.mp4``; the last printed line
is one JSON object describing the episode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from s2e.sim.env import NavEnv, NavEnvConfig  # noqa: E402
from s2e.sim.expert import ExpertPlanner  # noqa: E402
from s2e.sim.rollout import EpisodeRecord, expert_controller, run_episodes  # noqa: E402
from s2e.sim.scene import ObstacleShape, Surface  # noqa: E402
from s2e.sim.tasks import TASKS  # noqa: E402
from s2e.video_io import write_mp4  # noqa: E402

#: Map colours per ``Surface`` value (sidewalk, road, curb, grass, building, plaza).
_SURFACE_COLOURS = ["#cfc8bb", "#4a4a4f", "#9a9a9a", "#7fae62", "#8a5a44", "#e3d9c0"]


def draw_topdown(env: NavEnv, record: EpisodeRecord, path: Path) -> None:
    scene = env.world.scene
    surface = scene.surface[0].numpy()
    origin = scene.origin[0].numpy()
    extent = [origin[0], origin[0] + surface.shape[1] * scene.resolution, origin[1], origin[1] + surface.shape[0] * scene.resolution]
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.imshow(surface, origin="lower", extent=extent, cmap=ListedColormap(_SURFACE_COLOURS), vmin=0, vmax=len(Surface) - 1, interpolation="nearest")
    for row in scene.obstacles[0][scene.obstacle_mask[0]].numpy():
        x, y, yaw, hl, hw = row[:5]
        if int(row[6]) == ObstacleShape.CIRCLE:
            ax.add_patch(Circle((x, y), hl, color="#d05a1e"))
        else:
            corner = np.array([x, y]) - np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]) @ np.array([hl, hw])
            ax.add_patch(Rectangle(corner, 2 * hl, 2 * hw, angle=np.degrees(yaw), color="#d05a1e"))
    route = scene.route[0, : int(scene.route_length[0])].numpy()
    ax.plot(route[:, 0], route[:, 1], "--", color="#1f5fbf", lw=1.5, label="route")
    if record.pedestrians:
        tracks = [p for p in record.pedestrians if len(p)]
        if tracks and all(len(p) == len(tracks[0]) for p in tracks):
            stacked = np.stack(tracks)
            for j in range(stacked.shape[1]):
                ax.plot(stacked[:, j, 0], stacked[:, j, 1], color="#7b3294", lw=0.8, alpha=0.6)
            for x, y, _, _, r, _ in stacked[-1]:
                ax.add_patch(Circle((x, y), r, color="#7b3294"))
    ax.plot(record.xy[:, 0], record.xy[:, 1], color="#e31a1c", lw=2, label="robot")
    ax.add_patch(Circle(tuple(record.xy[-1]), env.robot.radius, color="#e31a1c"))
    ax.plot(*route[0], "go", label="start")
    ax.plot(*route[-1], "b*", ms=12, label="goal")
    pad = 4.0
    ax.set_xlim(min(route[:, 0].min(), record.xy[:, 0].min()) - pad, max(route[:, 0].max(), record.xy[:, 0].max()) + pad)
    ax.set_ylim(min(route[:, 1].min(), record.xy[:, 1].min()) - pad, max(route[:, 1].max(), record.xy[:, 1].max()) + pad)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{env.task.name} / {env.robot.name}: success={record.success} collisions={record.collisions}")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="both", choices=list(TASKS))
    parser.add_argument("--robot", default="wheeled", choices=["wheeled", "quadruped"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--domain", default="sim")
    parser.add_argument("--size", default="120x160", help="frame size HxW (even)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Run one expert episode and write its previews; prints and returns the summary."""
    args = build_parser().parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    env = NavEnv(NavEnvConfig(task=args.task, robot=args.robot, image_size=(h, w), domain=args.domain), num_envs=1, seed=args.seed)
    record = run_episodes(env, expert_controller(ExpertPlanner(env.robot)), record_pedestrians=True)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(record.frames[len(record.frames) // 2]).save(args.out / "ego.png")
    draw_topdown(env, record, args.out / "topdown.png")
    write_mp4(args.out / "episode.mp4", record.frames, fps=1.0 / env.config.timing.control_dt)
    summary = {
        "task": args.task,
        "robot": args.robot,
        "success": record.success,
        "collisions": record.collisions,
        "route_completion": record.route_completion,
        "seconds": float(record.t[-1]),
        "frames": len(record.frames),
        "files": [str(args.out / n) for n in ("ego.png", "topdown.png", "episode.mp4")],
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
