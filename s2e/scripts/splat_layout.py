"""Build a splat scene's layout file from its Gaussians (or a mesh) and draw it from above to check.

    python tools/splat_layout.py --ply data/splat/street.ply --out data/splat/street.layout.json
    python tools/splat_layout.py --ply capture.ply --mesh capture_mesh.npz --world-from-splat 1 0 0 0  0 0 -1 0  0 1 0 0  0 0 0 1 \\
        --z-range 0.3 1.6 --route 0,0 12,0 12,8 --out data/splat/capture.layout.json

The scene (after ``--world-from-splat``, a row-major 4x4 similarity into the z-up metric world,
then lowered by ``--ground-z`` so the ground is at z = 0) is sampled; samples between ``--z-range``
mark solid cells, samples within 0.15 m of the ground mark ground, and the free ground connected
to the largest free region is walkable. Without ``--route`` the longest route through the walkable area is chosen. Writes the layout JSON, its
``.grid.npz``, a top-down PNG (``--png``, default next to the layout) and ``<stem>.ego.png``, the
robot camera's view from the route's start (a capture that is upside down or sideways shows at
once); the last printed line is one JSON object with what was measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s2e.sim.robots import ROBOTS, RobotProfile, get_robot
from s2e.splat.camera import level_viewmats, pinhole_intrinsics
from s2e.splat.layout import save_layout
from s2e.splat.ply import load_ply
from s2e.splat.reference import rasterize
from s2e.splat.slicer import bounds_of, draw_top_down, gaussian_samples, layout_from_points, load_mesh_npz, mesh_samples


def _point(text: str) -> np.ndarray:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"route points are x,y in metres, got {text!r}") from None
    return np.array([x, y])


def ego_preview(gaussians, route: np.ndarray, robot: RobotProfile, size: str, path: Path) -> Path:
    """The robot camera's view from the route's start along its first leg (reference renderer): is the world up?"""
    width, height = (int(v) for v in size.lower().split("x"))
    heading = route[1] - route[0]
    xy = torch.tensor(route[:1], dtype=torch.float32)
    yaw = torch.tensor([float(np.arctan2(heading[1], heading[0]))])
    views = level_viewmats(xy, yaw, torch.tensor([robot.camera_height]))
    rgb, _, _ = rasterize(
        gaussians, views, pinhole_intrinsics(torch.tensor([robot.hfov_deg]), width, height), width, height, background=torch.tensor([0.62, 0.72, 0.86])
    )
    Image.fromarray((rgb[0].clamp(0, 1) * 255).round().byte().numpy()).save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ply", type=Path, required=True, help="INRIA-layout 3DGS .ply")
    parser.add_argument("--mesh", type=Path, help="optional mesh .npz (vertices [V,3], faces [F,3]) sliced instead of the Gaussians")
    parser.add_argument("--out", type=Path, required=True, help="layout JSON to write (the grid goes next to it)")
    parser.add_argument("--png", type=Path, help="top-down PNG (default: <out stem>.png)")
    parser.add_argument("--world-from-splat", type=float, nargs=16, help="row-major 4x4 similarity .ply -> world (z up, metres)")
    parser.add_argument("--resolution", type=float, default=0.2, help="metres per grid cell")
    parser.add_argument("--z-range", type=float, nargs=2, default=(0.3, 1.6), help="slab of heights above the ground that blocks the robot")
    parser.add_argument(
        "--ground-z",
        type=float,
        default=0.0,
        help="height of the ground after --world-from-splat; the layout's transform lowers it to z = 0, where cameras expect it",
    )
    parser.add_argument("--no-ground-check", action="store_true", help="treat every free cell as ground")
    parser.add_argument("--min-opacity", type=float, default=0.3, help="fainter Gaussians (floaters) are ignored")
    parser.add_argument("--bounds", type=float, nargs=4, help="xmin ymin xmax ymax (default: the scene's extent + 1 m)")
    parser.add_argument("--robot", default="wheeled", choices=sorted(ROBOTS), help="footprint the automatic route must fit")
    parser.add_argument("--route", type=_point, nargs="+", help="route vertices x,y (world metres), start first")
    parser.add_argument("--wall-height", type=float, default=3.0, help="height given to solid cells")
    parser.add_argument("--ego-size", default="128x72", help="WIDTHxHEIGHT of the ego preview from the route's start ('0' skips it)")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Build and write the layout and its previews; prints and returns the summary."""
    parser = build_parser()
    args = parser.parse_args(argv)

    world = np.eye(4) if args.world_from_splat is None else np.asarray(args.world_from_splat).reshape(4, 4)
    world[2, 3] -= args.ground_z  # the simulator's cameras stand on z = 0
    gaussians = load_ply(args.ply).transformed(torch.as_tensor(world, dtype=torch.float32))
    if args.mesh is not None:
        vertices, faces = load_mesh_npz(args.mesh)
        vertices = vertices @ world[:3, :3].T + world[:3, 3]
        points = mesh_samples(vertices, faces, args.resolution)
    else:
        low = args.z_range[0] if args.no_ground_check else min(-0.2, args.z_range[0])
        points = gaussian_samples(gaussians, args.min_opacity, (low, args.z_range[1]))
    if len(points) == 0:
        parser.error("nothing to slice: no Gaussian reaches --min-opacity and no mesh was given")
    bounds = tuple(args.bounds) if args.bounds else bounds_of(points)
    layout = layout_from_points(
        points,
        bounds,
        args.resolution,
        tuple(args.z_range),
        None if args.no_ground_check else 0.0,
        get_robot(args.robot).radius,
        [np.stack(args.route)] if args.route else None,
        args.wall_height,
    )
    layout.world_from_splat = world
    out = save_layout(args.out, layout)
    png = draw_top_down(layout, args.png or out.with_suffix(".png"), points)
    route = layout.routes[0]
    ego = None if args.ego_size == "0" else ego_preview(gaussians, route, get_robot(args.robot), args.ego_size, out.with_suffix(".ego.png"))
    summary = {
        "gaussians": len(gaussians),
        "samples": int(len(points)),
        "grid": list(layout.shape),
        "resolution": layout.resolution,
        "walkable_m2": round(float(layout.walkable.sum()) * layout.resolution**2, 2),
        "solid_m2": round(float(layout.solid.sum()) * layout.resolution**2, 2),
        "route_m": round(float(np.linalg.norm(np.diff(route, axis=0), axis=1).sum()), 2),
        "route_vertices": len(route),
        "layout": str(out),
        "png": str(png),
        "ego_png": str(ego) if ego else None,
    }
    print(
        f"{summary['gaussians']} Gaussians -> {layout.shape[0]}x{layout.shape[1]} cells at {layout.resolution} m: "
        f"{summary['walkable_m2']} m2 walkable, {summary['solid_m2']} m2 solid, route {summary['route_m']} m"
    )
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
