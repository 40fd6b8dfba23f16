"""Top-down trajectory plots (PNG) and camera videos (mp4) of traced benchmark episodes.

A number says how often a policy fails; the plot and the video say how (cutting a corner through
a facade, freezing in front of a crowd, brushing a bench), which is what one needs to fix it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2e.bench.runner import EpisodeTrace
from s2e.sim.scene import ObstacleShape, Surface
from s2e.video_io import write_mp4

#: One colour per ``Surface`` value, in enum order.
SURFACE_COLOURS = {
    Surface.SIDEWALK: "#d9d3c7",
    Surface.ROAD: "#55555a",
    Surface.CURB: "#a0a0a0",
    Surface.GRASS: "#8cbf6e",
    Surface.BUILDING: "#7d5543",
    Surface.PLAZA: "#eadfc4",
}


def plot_topdown(trace: EpisodeTrace, path: str | Path, title: str) -> Path:
    """Ground classes, obstacles, route, the robot's path and the pedestrians' tracks, around the route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Circle, Polygon

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    size = trace.surface.shape
    extent = [trace.origin[0], trace.origin[0] + size[1] * trace.resolution, trace.origin[1], trace.origin[1] + size[0] * trace.resolution]
    colours = ListedColormap([SURFACE_COLOURS[s] for s in Surface])
    ax.imshow(trace.surface, origin="lower", extent=extent, cmap=colours, vmin=0, vmax=len(Surface) - 1, interpolation="nearest")
    for x, y, yaw, hl, hw, _height, shape, _kind in trace.obstacles:
        if int(shape) == ObstacleShape.CIRCLE:
            ax.add_patch(Circle((x, y), hl, color="#d95f02"))
        else:
            c, s = np.cos(yaw), np.sin(yaw)
            corners = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]]) @ np.array([[c, s], [-s, c]]) + [x, y]
            ax.add_patch(Polygon(corners, color="#d95f02"))
    tracks = trace.pedestrians
    if tracks and len(tracks[0]) and all(len(p) == len(tracks[0]) for p in tracks):
        stacked = np.stack(tracks)  # [T, P, 6]
        for j in range(stacked.shape[1]):
            ax.plot(stacked[:, j, 0], stacked[:, j, 1], color="#7570b3", lw=0.8, alpha=0.7)
            ax.add_patch(Circle(tuple(stacked[-1, j, :2]), stacked[-1, j, 4], color="#7570b3"))
    xy = np.stack(trace.xy)
    ax.plot(trace.route[:, 0], trace.route[:, 1], "--", color="#1f78b4", lw=1.5, label="route")
    ax.plot(xy[:, 0], xy[:, 1], color="#e31a1c", lw=2, label="robot")
    ax.add_patch(Circle(tuple(xy[-1]), trace.robot_radius, color="#e31a1c"))
    ax.plot(*trace.route[0], "o", color="#33a02c", label="start")
    ax.plot(*trace.route[-1], "*", color="#1f78b4", ms=12, label="goal")
    points = np.concatenate([trace.route, xy])
    ax.set_xlim(points[:, 0].min() - 4, points[:, 0].max() + 4)
    ax.set_ylim(points[:, 1].min() - 4, points[:, 1].max() + 4)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_video(trace: EpisodeTrace, path: str | Path, fps: float) -> Path | None:
    """The camera frames of one episode as mp4; None when the frame size is odd (H.264 needs even)."""
    h, w = trace.frames[0].shape[:2]
    if h % 2 or w % 2:
        return None
    write_mp4(path, trace.frames, fps)
    return Path(path)
