"""A splat scene bundle inside ``NavEnv``: its layout as the scene source, its Gaussians as the renderer.

``SplatScenes`` turns the layout into the per-scene arrays ``stack_scenes`` batches (the same keys
``generate_scene_arrays`` returns): walkable cells become sidewalk, solid cells buildings, the
distance fields come from the same helpers, and each reset picks a route (either direction) and
places the task's obstacles and pedestrians along it with the procedural generator's own
placement rules, keeping those inside the spawn regions. Physics, crowd, rewards and metrics
therefore run unchanged. ``SplatRenderer`` draws the capture plus every env's obstacles and
pedestrians (as Gaussian assets, at their current positions), a few envs per rasterizer call.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.generator import SceneConfig, World, place_obstacles, polyline_cumlen, signed_distance, spawn_pedestrians, stack_scenes
from s2e.sim.render import per_env
from s2e.sim.robots import RobotProfile, get_robot
from s2e.sim.scene import SceneBatch, Surface
from s2e.sim.tasks import get_tasks
from s2e.splat.assets import scene_assets
from s2e.splat.camera import level_viewmats, pinhole_intrinsics
from s2e.splat.gaussians import Gaussians
from s2e.splat.layout import SplatLayout, load_layout
from s2e.splat.ply import SplatFileError, load_ply
from s2e.splat.reference import rasterize

BACKENDS = ("auto", "reference", "gsplat")


def load_splat_scene(ply_path: str | Path, layout_path: str | Path, min_overlap: float = 0.2) -> tuple[Gaussians, SplatLayout]:
    """A validated bundle: the capture's Gaussians moved into the world frame, and its layout.

    A wrong ``world_from_splat`` (a y-down capture left unrotated, a scale off by 100) puts the
    capture beside its own layout; fewer than ``min_overlap`` of the Gaussians over the layout's
    grid is reported as exactly that rather than rendered as an empty street.
    """
    layout = load_layout(layout_path)
    gaussians = load_ply(ply_path).transformed(torch.as_tensor(layout.world_from_splat, dtype=torch.float32))
    means = gaussians.means.numpy()
    cells = layout.cell_of(means[:, :2])
    inside = float(((cells >= 0) & (cells < np.array(layout.shape))).all(-1).mean())
    if inside < min_overlap:
        lo, hi = np.quantile(means, [0.05, 0.95], axis=0)
        x0, y0 = layout.origin
        h, w = layout.shape
        raise SplatFileError(
            f"{ply_path}: only {inside:.0%} of the Gaussians lie over the layout's grid (x {x0:.1f}..{x0 + w * layout.resolution:.1f}, "
            f"y {y0:.1f}..{y0 + h * layout.resolution:.1f} m); after world_from_splat the capture spans x {lo[0]:.1f}..{hi[0]:.1f}, "
            f"y {lo[1]:.1f}..{hi[1]:.1f}, z {lo[2]:.1f}..{hi[2]:.1f} m. Check {layout_path}'s world_from_splat (z must point up, metres)."
        )
    return gaussians, layout


class SplatScenes:
    """Scene source over one layout (see the module docstring).

    ``config`` supplies obstacle and pedestrian counts and padding; routes are the layout's, whole
    (its ``route_length`` range does not apply), and grids take the layout's resolution.
    """

    def __init__(self, layout: SplatLayout, config: SceneConfig, robot: RobotProfile | str) -> None:
        self.layout = layout.validate()
        self.robot = get_robot(robot)
        longest = max(len(r) for r in layout.routes)
        self.config = replace(config, resolution=float(layout.resolution), max_route_vertices=max(config.max_route_vertices, longest))
        surface = np.full(layout.shape, Surface.ROAD, np.uint8)
        surface[layout.walkable] = Surface.SIDEWALK
        surface[layout.solid] = Surface.BUILDING
        res = layout.resolution
        self._grids = {
            "surface": surface,
            "height": layout.height.astype(np.float32),
            "distance": signed_distance(layout.walkable, res),
            "solid_distance": (distance_transform_edt(~layout.solid) * res - res / 2).astype(np.float32)
            if layout.solid.any()
            else np.full(layout.shape, 1e3, np.float32),
            "origin": np.asarray(layout.origin, np.float32),
        }
        self._routes = [(r.astype(np.float64), polyline_cumlen(r)) for r in layout.routes]

    def _clearance_at(self, point: np.ndarray) -> float:
        r, c = np.clip(self.layout.cell_of(point), 0, np.array(self.layout.shape) - 1)
        return float(self._grids["distance"][r, c])

    def scene_arrays(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One scene's arrays: a route of the layout in a random direction, obstacles and pedestrians along it."""
        route, cum = self._routes[int(rng.integers(len(self._routes)))]
        if rng.random() < 0.5:
            route = route[::-1].copy()
            cum = polyline_cumlen(route)
        cfg = self.config
        n_obs = int(rng.integers(cfg.num_obstacles[0], cfg.num_obstacles[1] + 1))
        n_ped = int(rng.integers(cfg.num_pedestrians[0], cfg.num_pedestrians[1] + 1))
        obstacles = place_obstacles(rng, n_obs, route, cum, self._clearance_at, self.robot, cfg)
        obstacles = obstacles[self.layout.in_spawn_region(obstacles[:, :2])] if len(obstacles) else obstacles
        peds, goal_a, goal_b, speeds = spawn_pedestrians(rng, n_ped, route, cum, self._clearance_at, route[0], self.robot)
        if len(peds):
            keep = self.layout.in_spawn_region(peds[:, :2])
            peds, goal_a, goal_b, speeds = peds[keep], goal_a[keep], goal_b[keep], speeds[keep]
        along = np.array([self._clearance_at(p) for p in route])
        return {
            **self._grids,
            "obstacles": obstacles,
            "pedestrians": peds,
            "goal_a": goal_a,
            "goal_b": goal_b,
            "speeds": speeds,
            "route": route.astype(np.float32),
            "cum": cum.astype(np.float32),
            "half_width": np.float32(max(float(np.median(along)), self.robot.radius)),
            "style_seed": int(rng.integers(2**31 - 1)),
        }

    def sample(self, count: int, rng: np.random.Generator, device: torch.device) -> World:
        return stack_scenes([self.scene_arrays(rng) for _ in range(count)], self.config, device)


class SplatRenderer:
    """Frames of a captured scene with each env's obstacles and pedestrians splatted in (``FrameRenderer``).

    Args:
        gaussians: the capture, already in the world frame (``load_splat_scene``).
        width, height: image size in pixels.
        backend: "gsplat" (CUDA), "reference" (pure PyTorch, CPU or GPU) or "auto" (gsplat when the
            device is CUDA and gsplat imports, else the reference).
        background: RGB in [0, 1] where nothing is splatted (sky).
        max_distance: depth reported where nothing is hit, metres.
        device: where frames are made.
        cameras_per_call: envs rendered per rasterizer call. Each env sees the capture plus its own
            assets, so a call holds that many copies of the capture: this bounds the memory.

    Sensor noise is not modelled: ``noise_generator`` is accepted for the contract and unused.
    """

    def __init__(
        self,
        gaussians: Gaussians,
        width: int,
        height: int,
        backend: str = "auto",
        background: tuple[float, float, float] = (0.62, 0.72, 0.86),
        max_distance: float = 40.0,
        device: str | torch.device = "cpu",
        cameras_per_call: int = 8,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown splat backend {backend!r}; known: {BACKENDS}")
        if width < 2 or height < 2:
            raise ValueError(f"image size must be at least 2x2 pixels, got {width}x{height}")
        self.device = torch.device(device)
        if cameras_per_call < 1:
            raise ValueError(f"cameras_per_call must be >= 1, got {cameras_per_call}")
        self.width, self.height, self.max_distance = int(width), int(height), float(max_distance)
        self.cameras_per_call = int(cameras_per_call)
        self.gaussians = gaussians.to(self.device)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        if backend == "auto":
            backend = "gsplat" if self.device.type == "cuda" and _gsplat_available() else "reference"
        if backend == "gsplat":
            from s2e.splat.gsplat_backend import import_gsplat, rasterize_gsplat

            import_gsplat()
            self._rasterize = rasterize_gsplat
        else:
            self._rasterize = rasterize
        self.backend = backend

    def render(
        self,
        scene: SceneBatch,
        camera_xy: Tensor,
        camera_yaw: Tensor,
        camera_height: Tensor | float,
        hfov_deg: Tensor | float,
        with_depth: bool = False,
        noise_generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Frames uint8 [B, 3, H, W] and, if ``with_depth``, z-depth float [B, 1, H, W] (``max_distance`` where empty)."""
        b, dev = scene.batch_size, self.device
        if tuple(camera_xy.shape) != (b, 2) or tuple(camera_yaw.shape) != (b,):
            raise ValueError(f"camera_xy must be [{b}, 2] and camera_yaw [{b}], got {tuple(camera_xy.shape)} and {tuple(camera_yaw.shape)}")
        scene = scene.to(dev) if scene.device != dev else scene
        views = level_viewmats(camera_xy.to(dev, torch.float32), camera_yaw.to(dev, torch.float32), per_env(camera_height, b, "camera_height", dev))
        intrinsics = pinhole_intrinsics(per_env(hfov_deg, b, "hfov_deg", dev), self.width, self.height)
        parts = []
        for start in range(0, b, self.cameras_per_call):
            stop = min(b, start + self.cameras_per_call)
            sets = [Gaussians.cat([self.gaussians, scene_assets(scene, i)]) for i in range(start, stop)]
            parts.append(self._rasterize(sets, views[start:stop], intrinsics[start:stop], self.width, self.height, self.background))
        rgb, depth, alpha = (torch.cat(p) for p in zip(*parts))
        image = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()
        if not with_depth:
            return image, None
        depth = torch.where(alpha >= 0.5, depth, torch.full_like(depth, self.max_distance)).clamp(max=self.max_distance)
        return image, depth[:, None]


def _gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def make_splat_env(
    config: NavEnvConfig, gaussians: Gaussians, layout: SplatLayout, num_envs: int = 1, device: str | torch.device = "cpu", seed: int = 0, backend: str = "auto"
) -> NavEnv:
    """``NavEnv`` on a splat scene: the config's task, robot, timing, image size and rewards, the bundle's world."""
    robot = get_robot(config.robot)
    tasks = get_tasks(config.task)
    if len(tasks) > 1:
        raise ValueError(f"a splat env has one task (its scene is one captured place), got the mix {[t.name for t in tasks]}")
    scenes = SplatScenes(layout, tasks[0].apply(config.scene), robot)
    h, w = config.image_size
    renderer = SplatRenderer(gaussians, w, h, backend=backend, max_distance=config.scene.extent, device=device)
    return NavEnv(config, num_envs=num_envs, device=device, seed=seed, scenes=scenes, renderer=renderer)
