"""The batched CPU raycaster: B street scenes -> B camera frames, as tensor ops over columns and pixels.

Why a raycaster: the layout is a 2.5D world (a ground grid, extruded buildings, upright obstacles and
pedestrians) seen by a level camera, so every image column is one 2D ray and every pixel row one
elevation. Work is split accordingly:

* per column [B, W]: a vectorized grid DDA finds the first building face (a coarse max-pooled pass
  skips empty space, then exact cell crossings, in chunks, with finished rays dropped), and
  analytic ray/shape tests find every obstacle and pedestrian the ray meets; the ``layers``
  nearest of them are kept, sorted by depth;
* per pixel (laid out [B, W, H], column-major, until the final image): rows below the horizon are
  floor-cast with a per-row distance table, the wall covers the rows its extruded height spans,
  objects cover rows by their height (seen OVER low ones: their top face shows, and the facade
  above them), pedestrians by a legs/torso/head profile; only columns that meet objects are
  composited;
* colour is one gather of a texel index into a colour table holding the scenes' cached texture
  atlases (``s2e.sim.textures``), pedestrian clothing and sky rows, then Lambert light, distance fog,
  blur and sensor noise of the appearance domain (exposure, white balance and gamma are folded into
  the table and the light).

Limits: only the nearest building face per column is drawn (a taller building behind a lower one is
hidden by it), and at most ``layers`` objects per column (farther ones are hidden).

Camera: pinhole, square pixels, horizontal field of view ``hfov_deg``, pitch 0 (horizon at mid-height),
height ``camera_height`` above the ground. Depth (``with_depth``) is z-depth: metres along the optical
axis (not along the pixel's ray), ``max_distance`` where nothing is hit (sky, far ground).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from s2e.sim.appearance import AppearanceDomain, get_domain
from s2e.sim.scene import OBSTACLE_FIELDS, PEDESTRIAN_FIELDS, ObstacleKind, ObstacleShape, SceneBatch, Surface
from s2e.sim.textures import MAT_FACADE, MAT_LANE, MAT_OBSTACLE, NUM_MATERIALS, PED_PARTS, TEXTURE_SIZE, StyleCache

_COARSE = 8  # fine cells per coarse DDA block side
_NEAR = 0.05  # metres: intersections closer than this are clipped (the camera never sits inside a shape)
_LANE_DASH = 3.0  # metres per dash period (half painted)
# Pedestrian profile as fractions of body height / of radius (the disc radius is the shoulder width).
_HIP, _NECK, _HEAD = 0.47, 0.80, 0.85
_LEG_GAP, _LEG_OUTER, _NECK_HALF, _HEAD_HALF = 0.2, 0.75, 0.30, 0.45


@dataclass
class _WallHits:
    """First building face per column (``t`` = inf where none within range)."""

    t: Tensor  # [B, W] z-depth
    height: Tensor  # [B, W] metres of the hit building
    along: Tensor  # [B, W] world coordinate along the face (texture u)
    normal: Tensor  # [B, W, 2] outward face normal


@dataclass
class _ObjectLayers:
    """The nearest ``K`` objects (obstacles or pedestrians) per column, sorted near to far, [B, W, K]."""

    t_in: Tensor
    t_out: Tensor
    height: Tensor
    shade: Tensor
    texel: Tensor  # long: obstacles -> index of texel row 0 at this column; pedestrians -> colour slot
    is_ped: Tensor
    lateral: Tensor  # |offset of the ray from a pedestrian's axis| / radius (0 for obstacles)
    valid: Tensor


def _per_env(value: Tensor | float, batch: int, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a float or a tensor of shape [{batch}], got shape {tuple(t.shape)}")
    return t


def _check_scene(scene: SceneBatch, camera_xy: Tensor, camera_yaw: Tensor) -> int:
    """Shape checks with messages that name the offending tensor (instead of a crash deep in a gather)."""
    b = scene.batch_size
    grid = tuple(scene.surface.shape)
    expected = {
        "scene.surface": (scene.surface, grid if len(grid) == 3 else None),
        "scene.height": (scene.height, grid),
        "scene.origin": (scene.origin, (b, 2)),
        "scene.style_seed": (scene.style_seed, (b,)),
        "camera_xy": (camera_xy, (b, 2)),
        "camera_yaw": (camera_yaw, (b,)),
    }
    for name, (tensor, shape) in expected.items():
        if shape is None or tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape or '[B, H, W]'}, got {tuple(tensor.shape)}")
    for name, tensor, mask, width in (
        ("obstacles", scene.obstacles, scene.obstacle_mask, len(OBSTACLE_FIELDS)),
        ("pedestrians", scene.pedestrians, scene.pedestrian_mask, len(PEDESTRIAN_FIELDS)),
    ):
        if tensor.dim() != 3 or tensor.shape[0] != b or tensor.shape[2] != width:
            raise ValueError(f"scene.{name} must have shape [B={b}, N, {width}], got {tuple(tensor.shape)}")
        if tuple(mask.shape) != tuple(tensor.shape[:2]):
            raise ValueError(f"scene.{name[:-1]}_mask must have shape {tuple(tensor.shape[:2])}, got {tuple(mask.shape)}")
    if b < 1:
        raise ValueError("cannot render an empty scene batch")
    return b


class Raycaster:
    """Renders ``SceneBatch`` views in one appearance domain; see the module docstring for the model.

    Args:
        width, height: image size in pixels.
        domain: an ``AppearanceDomain`` or the name of a registered one.
        max_distance: farthest z-depth drawn (metres); beyond it the view fades into fog.
        device: where images are made (CPU by default; CUDA works unchanged).
        layers: how many objects per column are composited (the nearest ones; more are hidden).
    """

    def __init__(self, width: int, height: int, domain: str | AppearanceDomain = "sim",
                 max_distance: float = 40.0, device: str | torch.device = "cpu", layers: int = 3) -> None:
        if width < 2 or height < 2:
            raise ValueError(f"image size must be at least 2x2 pixels, got {width}x{height}")
        if max_distance <= 0 or layers < 1:
            raise ValueError(f"max_distance must be positive and layers >= 1, got {max_distance}, {layers}")
        self.width, self.height = int(width), int(height)
        self.domain = get_domain(domain)
        self.max_distance = float(max_distance)
        self.device = torch.device(device)
        self.layers = int(layers)
        self._styles = StyleCache(self.domain, self.device)
        d = self.domain
        sun = torch.tensor(d.sun_direction, dtype=torch.float32, device=self.device)
        self._sun_xy = sun[:2]
        self._top_shade = self._lambert(torch.tensor(max(float(sun[2]), 0.0))).item()  # ground and roofs
        # Camera response folded into colours: 8-bit scale, exposure and white balance multiply every
        # colour-table entry; display gamma applies to colours and to light separately (before fog).
        self._gain = torch.tensor(d.colour_cast, dtype=torch.float32, device=self.device) * (d.exposure * 255.0)
        self._fog = torch.tensor(d.fog_colour, dtype=torch.float32, device=self.device).pow(1 / d.gamma) * self._gain
        self._sky = [torch.tensor(c, dtype=torch.float32, device=self.device) for c in (d.sky_horizon, d.sky_top)]
        self._blur = self._gaussian(d.blur_sigma) if d.blur_sigma > 0 else None
        self._half = torch.tensor(0.5, device=self.device)  # rounding offset of the 8-bit conversion
        self._noise_bank: Tensor | None = None
        self._colours: tuple[Tensor, Tensor, int] | None = None  # (atlas the buffer was made from, buffer, tail offset)
        self._grid_cache: list = []

    # ------------------------------------------------------------------ public API
    def render(self, scene: SceneBatch, camera_xy: Tensor, camera_yaw: Tensor, camera_height: Tensor | float,
               hfov_deg: Tensor | float, with_depth: bool = False,
               noise_generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Frames uint8 [B, 3, H, W] and, if ``with_depth``, z-depth float [B, 1, H, W] in metres.

        A pure function of its inputs: the only randomness is sensor noise, drawn from
        ``noise_generator`` (``None`` gives a fixed noise pattern, so output is still deterministic).
        """
        b = _check_scene(scene, camera_xy, camera_yaw)
        dev = self.device
        scene = scene.to(dev) if scene.device != dev else scene
        cam = camera_xy.to(dev, torch.float32)
        yaw = camera_yaw.to(dev, torch.float32)
        cam_h = _per_env(camera_height, b, "camera_height", dev).view(b, 1, 1)
        fov = _per_env(hfov_deg, b, "hfov_deg", dev)
        if bool(((fov <= 0) | (fov >= 180)).any()):
            raise ValueError(f"hfov_deg must lie in (0, 180), got {fov.tolist()}")
        focal = (0.5 * self.width) / torch.tan(torch.deg2rad(fov) / 2)
        W, H = self.width, self.height
        col_slope = (0.5 * W - (torch.arange(W, device=dev) + 0.5)) / focal.view(b, 1)  # [B, W] leftward
        row_slope = (0.5 * H - (torch.arange(H, device=dev) + 0.5)) / focal.view(b, 1)  # [B, H] upward
        c, s = torch.cos(yaw).view(b, 1), torch.sin(yaw).view(b, 1)
        dirs = torch.stack([c - col_slope * s, s + col_slope * c], -1)  # [B, W, 2]; forward component 1

        atlas, repeat = self._styles.batch(scene.style_seed)
        colours, ped_offset, sky_offset = self._colour_buffer(atlas, scene, row_slope)
        wall_h, coarse, ground = self._grids(scene)
        wall = self._cast_walls(scene, (wall_h, coarse), cam, dirs)
        layers = self._intersect_objects(scene, cam, dirs, wall.t, ped_offset)
        # Pixels are laid out column-major [B, W, H] until the end: every quantity is per column.
        rows = row_slope.view(b, 1, H)
        index, shade, depth = self._background(scene, ground, cam, dirs, cam_h, rows, wall, repeat, sky_offset)
        self._composite_objects(layers, cam_h, rows, index, shade, depth)
        image = self._camera_response(colours, index, shade, depth, noise_generator)
        return image, (depth.transpose(1, 2).unsqueeze(1) if with_depth else None)

    # ------------------------------------------------------------------ geometry per column
    def _cast_walls(self, scene: SceneBatch, grids: tuple[Tensor, Tensor], cam: Tensor, dirs: Tensor) -> _WallHits:
        """First building face per column, by a coarse-then-fine grid DDA over all columns at once.

        Rays first march the max-pooled grid (``_COARSE`` cells per block) to the first block holding
        any building; rays that meet none (open streets, the sky) are finished at a fraction of the
        cost, the others march the fine grid from just before that block.
        """
        wall_h, coarse = grids
        b, w = dirs.shape[:2]
        res = float(scene.resolution)
        gh, gw = scene.surface.shape[1:]
        env = torch.arange(b, device=self.device).repeat_interleave(w)
        rays = dirs.reshape(-1, 2)
        g0 = ((cam - scene.origin.to(torch.float32)) / res + 1).repeat_interleave(w, 0)  # padded fine cells
        fine_dims = (gh + 2, gw + 2)
        coarse_dims = (-(-fine_dims[0] // _COARSE) + 2, -(-fine_dims[1] // _COARSE) + 2)
        g0_coarse = g0 / _COARSE + 1
        start_cell = g0_coarse.long()
        inside = coarse.take((env * coarse_dims[0] + start_cell[:, 1]) * coarse_dims[1] + start_cell[:, 0]) > 0
        t_block, _, _ = self._march(coarse, coarse_dims, env, g0_coarse, rays, res * _COARSE, self.max_distance)
        t_block = torch.where(inside, 0.0, t_block)
        near = t_block.isfinite().nonzero().squeeze(-1)
        best_t = torch.full_like(t_block, math.inf)
        best_h = torch.zeros_like(t_block)
        best_axis = torch.zeros(t_block.shape, dtype=torch.long, device=self.device)
        if near.numel():
            t0 = (t_block[near] - 1e-4).clamp_min(0)  # just before the block: an empty fine cell
            start = g0[near] + t0.unsqueeze(-1) * rays[near] / res
            t, h, axis = self._march(wall_h, fine_dims, env[near], start, rays[near], res, self.max_distance - t0)
            best_t[near], best_h[near], best_axis[near] = t + t0, h, axis
        best_t = torch.where(best_t <= self.max_distance, best_t, math.inf).view(b, w)
        point = cam.unsqueeze(1) + best_t.clamp_max(1e6).unsqueeze(-1) * dirs
        best_axis = best_axis.view(b, w)
        along = torch.where(best_axis == 0, point[..., 1], point[..., 0])
        sign = torch.where(dirs >= 0, 1.0, -1.0)
        normal = -sign * torch.stack([best_axis == 0, best_axis == 1], -1)
        return _WallHits(best_t, best_h.view(b, w), along, normal)

    def _march(self, grid: Tensor, dims: tuple[int, int], env: Tensor, g0: Tensor, rays: Tensor, cell: float,
               t_limit: Tensor | float, chunk: int = 16) -> tuple[Tensor, Tensor, Tensor]:
        """Exact DDA of N rays over a padded grid: (t, value, axis) of the first crossing into a cell > 0.

        The k-th crossing of a vertical gridline happens at t = (offset + k - 1) * cell / |dx| and
        enters column floor(gx0) + k * sign(dx) (likewise for horizontal gridlines). Crossings are
        tested ``chunk`` at a time; a hit is final once nearer than the next untested crossing of
        either axis, and rays drop out as soon as they are final or leave the grid. The grid's empty
        one-cell border lets out-of-grid crossings clamp onto empty cells instead of bounds checks.

        Args:
            grid: flat [B * rows * cols] values (> 0 = hit); dims = (rows, cols), padding included.
            env: [N] scene of each ray; g0: [N, 2] start in (col, row) cell units; rays: [N, 2] world
            direction per unit t; cell: metres per cell; t_limit: farthest t to search.
        """
        dev = self.device
        rows, cols = dims
        size = torch.tensor([cols - 1, rows - 1], device=dev, dtype=torch.float32)
        cell0 = g0.floor()
        inv = cell / rays.abs().clamp_min(1e-9)  # t per cell along each axis
        offset = torch.where(rays >= 0, 1 - (g0 - cell0), g0 - cell0)  # cells to the first crossing
        exit_t = (torch.where(rays >= 0, size - g0, g0 - 1).clamp_min(0) * inv).amin(-1)
        t_limit = torch.clamp_max(exit_t, t_limit)
        sign = torch.where(rays >= 0, 1.0, -1.0)
        params = torch.cat([offset, inv, g0, cell0, sign, rays / cell], -1)  # [N, 12]: one gather drops finished rays
        base = env * (rows * cols)
        n = g0.shape[0]
        best_t = torch.full((n,), math.inf, device=dev)
        best_h = torch.zeros(n, device=dev)
        best_axis = torch.zeros(n, dtype=torch.long, device=dev)
        active = torch.arange(n, device=dev)
        k0 = 1
        while active.numel():
            k = torch.arange(k0, k0 + chunk, device=dev, dtype=torch.float32)
            a_off, a_inv, a_g0, a_cell, a_sign, a_slope = params.index_select(0, active).split(2, -1)
            a_t, a_h, a_axis = (x.index_select(0, active) for x in (best_t, best_h, best_axis))
            for axis in (0, 1):
                t = (a_off[:, axis : axis + 1] + (k - 1)) * a_inv[:, axis : axis + 1]  # [A, C]
                along = (a_cell[:, axis : axis + 1] + a_sign[:, axis : axis + 1] * k).clamp(0, float(size[axis]))
                other = (a_g0[:, 1 - axis : 2 - axis] + t * a_slope[:, 1 - axis : 2 - axis]).floor()
                other = other.clamp(0, float(size[1 - axis]))
                col, row = (along, other) if axis == 0 else (other, along)
                h = grid.take(base.index_select(0, active).unsqueeze(1) + (row * cols + col).long())
                t_min, arg = torch.where(h > 0, t, math.inf).min(-1)
                closer = t_min < a_t
                a_t = torch.where(closer, t_min, a_t)
                a_h = torch.where(closer, h.gather(-1, arg.unsqueeze(-1)).squeeze(-1), a_h)
                a_axis = torch.where(closer, axis, a_axis)
            for best, value in ((best_t, a_t), (best_h, a_h), (best_axis, a_axis)):
                best.index_copy_(0, active, value)
            certain = ((a_off + (k0 + chunk - 1)) * a_inv).amin(-1)
            active = active[(a_t > certain) & (certain < t_limit[active])]
            k0 += chunk
        return best_t, best_h, best_axis

    def _intersect_objects(self, scene: SceneBatch, cam: Tensor, dirs: Tensor, wall_t: Tensor,
                           ped_offset: int) -> _ObjectLayers:
        """Ray tests against every obstacle (circle or oriented box) and pedestrian (circle) per column."""
        b, w = dirs.shape[:2]
        dev, T = self.device, TEXTURE_SIZE
        dx, dy = dirs[..., 0:1], dirs[..., 1:2]  # [B, W, 1]
        obs = scene.obstacles.to(torch.float32)
        rel_x, rel_y = (obs[..., 0] - cam[:, 0:1]).unsqueeze(1), (obs[..., 1] - cam[:, 1:2]).unsqueeze(1)  # [B, 1, O]
        yaw, hl, hw, oh = (obs[..., i].unsqueeze(1) for i in (2, 3, 4, 5))
        circle = obs[..., 6].round().long().unsqueeze(1) == int(ObstacleShape.CIRCLE)
        kind = obs[..., 7].round().long().clamp(0, len(ObstacleKind) - 1)

        c_in, c_out, c_nx, c_ny, c_u, _ = self._circles(dx, dy, rel_x, rel_y, hl)
        # Oriented box: slab test in the box frame.
        cy_, sy_ = torch.cos(yaw), torch.sin(yaw)
        ldx, ldy = dx * cy_ + dy * sy_, -dx * sy_ + dy * cy_
        ox, oy = -(rel_x * cy_ + rel_y * sy_), -(-rel_x * sy_ + rel_y * cy_)
        tx1, tx2 = self._slab(ox, ldx, hl)
        ty1, ty2 = self._slab(oy, ldy, hw)
        b_in, b_out = torch.maximum(tx1, ty1), torch.minimum(tx2, ty2)
        x_face = tx1 >= ty1
        lnx = torch.where(x_face, -torch.sign(ldx), 0.0)
        lny = torch.where(x_face, 0.0, -torch.sign(ldy))
        b_nx, b_ny = lnx * cy_ - lny * sy_, lnx * sy_ + lny * cy_
        qx, qy = ox + b_in * ldx, oy + b_in * ldy
        b_u = torch.where(x_face, (qy + hw) / (2 * hw).clamp_min(1e-6), (qx + hl) / (2 * hl).clamp_min(1e-6))

        o_in, o_out = torch.where(circle, c_in, b_in), torch.where(circle, c_out, b_out)
        o_nx, o_ny = torch.where(circle, c_nx, b_nx), torch.where(circle, c_ny, b_ny)
        o_u = torch.where(circle, c_u, b_u)
        tu = (o_u.clamp(0, 0.999) * T).long()
        mat = (torch.arange(b, device=dev).view(b, 1) * NUM_MATERIALS + MAT_OBSTACLE + kind).unsqueeze(1)
        o_texel = mat * (T * T) + tu
        o_valid = scene.obstacle_mask.unsqueeze(1) & (o_out > torch.clamp_min(o_in, _NEAR))

        peds = scene.pedestrians.to(torch.float32)
        p = peds.shape[1]
        pr_x, pr_y = (peds[..., 0] - cam[:, 0:1]).unsqueeze(1), (peds[..., 1] - cam[:, 1:2]).unsqueeze(1)
        radius, ph = peds[..., 4].unsqueeze(1), peds[..., 5].unsqueeze(1)
        p_in, p_out, p_nx, p_ny, _, lateral = self._circles(dx, dy, pr_x, pr_y, radius)
        slot = (torch.arange(b, device=dev).view(b, 1) * p + torch.arange(p, device=dev)) * PED_PARTS + ped_offset
        p_valid = scene.pedestrian_mask.unsqueeze(1) & (p_out > torch.clamp_min(p_in, _NEAR))

        cat = lambda a, bb: torch.cat([a.expand(b, w, -1), bb.expand(b, w, -1)], -1)  # noqa: E731
        t_in, t_out = cat(o_in, p_in).clamp_min(_NEAR), cat(o_out, p_out)
        valid = cat(o_valid, p_valid) & (t_in < wall_t.unsqueeze(-1)) & (t_in < self.max_distance)
        shade = self._lambert(cat(o_nx, p_nx) * self._sun_xy[0] + cat(o_ny, p_ny) * self._sun_xy[1])
        fields = {
            "t_in": t_in, "t_out": t_out, "height": cat(oh, ph), "shade": shade,
            "texel": cat(o_texel, slot.unsqueeze(1)),
            "is_ped": cat(torch.zeros_like(o_valid), torch.ones_like(p_valid)),
            "lateral": cat(torch.zeros_like(o_in), lateral.abs()), "valid": valid,
        }
        k = min(self.layers, t_in.shape[-1])
        order = torch.where(valid, t_in, math.inf).topk(k, dim=-1, largest=False, sorted=True).indices
        return _ObjectLayers(**{n: v.gather(-1, order) for n, v in fields.items()})

    @staticmethod
    def _circles(dx: Tensor, dy: Tensor, rx: Tensor, ry: Tensor, radius: Tensor):
        """Ray (origin 0, direction d) vs circles at rel (rx, ry): t_in, t_out, normal, u, lateral offset / r."""
        a = dx * dx + dy * dy
        proj = dx * rx + dy * ry
        disc = proj * proj - a * (rx * rx + ry * ry - radius * radius)
        root = disc.clamp_min(0).sqrt()
        t_in = torch.where(disc > 0, (proj - root) / a, math.inf)
        t_out = torch.where(disc > 0, (proj + root) / a, -math.inf)
        r = radius.clamp_min(1e-6)
        nx, ny = (t_in.clamp_max(1e6) * dx - rx) / r, (t_in.clamp_max(1e6) * dy - ry) / r
        u = torch.atan2(ny, nx) / (2 * math.pi) + 0.5
        lateral = (dx * ry - dy * rx) / (a.sqrt() * r)
        return t_in, t_out, nx, ny, u, lateral

    @staticmethod
    def _slab(origin: Tensor, direction: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
        safe = torch.where(direction.abs() < 1e-9, 1e-9, direction)
        t1, t2 = (-half - origin) / safe, (half - origin) / safe
        return torch.minimum(t1, t2), torch.maximum(t1, t2)

    # ------------------------------------------------------------------ pixels
    def _grids(self, scene: SceneBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Per-scene grids padded by one cell: wall height for the DDA (fine, and max-pooled by
        ``_COARSE`` to skip empty space), ground material for floor casting.

        The ground material already holds the road's lane marks (cells at ``lane_offset`` from the
        walkable edge, dashed) and the scene's atlas offset, so a floor pixel needs one gather. Both
        depend only on the scene tensors, so they are cached while those tensors stay unmodified
        (identity and in-place version), i.e. across all the steps of an episode.
        """
        tensors = (scene.surface, scene.height, scene.distance, scene.origin)
        key = tuple((id(t), t._version) for t in tensors)
        for k, _, grids in self._grid_cache:
            if k == key:
                return grids
        b, (gh, gw), res = scene.batch_size, scene.surface.shape[1:], float(scene.resolution)
        surface = scene.surface.long()
        wall_h = torch.where(surface == int(Surface.BUILDING), scene.height.to(torch.float32), 0.0)
        centres = (torch.arange(max(gh, gw), device=self.device, dtype=torch.float32) + 0.5) * res
        origin = scene.origin.to(torch.float32)
        wx = origin[:, 0].view(b, 1, 1) + centres[:gw].view(1, 1, gw)
        wy = origin[:, 1].view(b, 1, 1) + centres[:gh].view(1, gh, 1)
        margin = -scene.distance.to(torch.float32)
        lane = (surface == int(Surface.ROAD)) & ((margin - self.domain.lane_offset).abs() <= res / 2)
        lane = lane & (((wx + wy) / _LANE_DASH).frac() < 0.5)
        material = torch.where(lane, MAT_LANE, surface) + torch.arange(b, device=self.device).view(b, 1, 1) * NUM_MATERIALS
        border = (torch.arange(b, device=self.device) * NUM_MATERIALS + int(Surface.ROAD)).view(b, 1, 1)
        material = torch.cat([border.expand(b, gh, 1), material, border.expand(b, gh, 1)], 2)
        material = torch.cat([border.expand(b, 1, gw + 2), material, border.expand(b, 1, gw + 2)], 1)
        padded = F.pad(wall_h, (1, 1, 1, 1))
        coarse = F.pad(F.max_pool2d(padded.unsqueeze(1), _COARSE, ceil_mode=True).squeeze(1), (1, 1, 1, 1))
        # int32 material: half the bytes for the per-pixel floor gather to pull through the cache
        grids = (padded.reshape(-1), coarse.reshape(-1), material.reshape(-1).to(torch.int32))
        self._grid_cache = [(key, tensors, grids)] + self._grid_cache[:3]  # holding the tensors keeps ids unique
        return grids

    def _background(self, scene: SceneBatch, ground: Tensor, cam: Tensor, dirs: Tensor, cam_h: Tensor, rows: Tensor,
                    wall: _WallHits, repeat: Tensor, sky_offset: int) -> tuple[Tensor, Tensor, Tensor]:
        """Texel index, shade and z-depth [B, W, H] of sky, facades and floor."""
        b, H = rows.shape[0], self.height
        dev, T, res = self.device, TEXTURE_SIZE, float(scene.resolution)
        arange_b = torch.arange(b, device=dev)
        # Facades: rows whose height at the wall's depth lies on the building; texel rows count up
        # from the ground (the atlas stores row 0 at the top, hence the bitwise flip).
        wall_t = wall.t.unsqueeze(-1)  # [B, W, 1]
        z = torch.addcmul(cam_h, rows, wall_t)  # [B, W, H]
        on_wall = (z >= 0) & (z <= wall.height.unsqueeze(-1))
        texels_per_m = T / repeat[:, MAT_FACADE]  # [B, 2]
        tu = (wall.along * texels_per_m[:, 0:1]).floor().long() & (T - 1)
        column = ((arange_b.view(b, 1) * NUM_MATERIALS + MAT_FACADE) * T * T + tu).unsqueeze(-1)
        # Integer chains run in place: every [B, W, H] temporary is a fresh allocation otherwise.
        tv = (z * texels_per_m[:, 1].view(b, 1, 1)).long().bitwise_not_().bitwise_and_(T - 1).mul_(T).add_(column)
        sky = (sky_offset + arange_b.view(b, 1, 1) * H + torch.arange(H, device=dev).view(1, 1, H))
        index = torch.where(on_wall, tv, sky)
        wall_shade = self._lambert(wall.normal @ self._sun_xy)
        shade = torch.where(on_wall, wall_shade.unsqueeze(-1), 1.0)
        depth = torch.where(on_wall, wall_t, self.max_distance)
        # Floor: rows below the horizon, z-depth from the per-row table cam_h / -slope, one material
        # gather per pixel from the padded ground grid, texels from continuous grid coordinates.
        first = (H + 1) // 2
        t_floor = cam_h / -rows[..., first:]  # [B, 1, Hf]
        floor = t_floor < torch.clamp_max(wall_t, self.max_distance)
        g0 = (cam - scene.origin.to(torch.float32)) / res + 1
        gx = torch.addcmul(g0[:, 0].view(b, 1, 1), dirs[..., 0:1] / res, t_floor)  # [B, W, Hf]
        gy = torch.addcmul(g0[:, 1].view(b, 1, 1), dirs[..., 1:2] / res, t_floor)
        gh, gw = scene.surface.shape[1:]
        cell = gy.long().clamp_(0, gh + 1).mul_(gw + 2).add_(gx.long().clamp_(0, gw + 1))
        cell += (arange_b * ((gh + 2) * (gw + 2))).view(b, 1, 1)
        mat = ground.take(cell).long()  # scene-offset material id
        scale = (T * res / repeat.view(-1, 2)).t()  # [2, B * NUM_MATERIALS] texels per grid cell
        ftu = (gx * scale[0].take(mat)).long().bitwise_and_(T - 1)
        ftv = (gy * scale[1].take(mat)).long().bitwise_and_(T - 1)
        findex = mat.mul_(T).add_(ftv).mul_(T).add_(ftu)
        for full, value in ((index, findex), (depth, t_floor)):
            below = full[..., first:]
            torch.where(floor, value, below, out=below)  # in place: no temporary, no copy back
        shade[..., first:].masked_fill_(floor, self._top_shade)
        return index, shade, depth

    def _composite_objects(self, layers: _ObjectLayers, cam_h: Tensor, rows: Tensor,
                           index: Tensor, shade: Tensor, depth: Tensor) -> None:
        """Paint the per-column object layers over the background [B, W, H], far to near, in place.

        Only columns that meet an object are touched: they are gathered into [N, H] rows, painted,
        and scattered back, so the cost follows how much of the view objects take up.
        """
        b, w, H = index.shape
        T = TEXTURE_SIZE
        hit = layers.valid.any(-1).view(-1)
        cols = hit.nonzero().squeeze(-1)
        if cols.numel() == 0:
            return
        env = cols // w
        r, ch = rows.view(b, H).index_select(0, env), cam_h.view(b, 1).index_select(0, env)  # [N, H], [N, 1]
        flat = lambda x: x.reshape(b * w, -1).index_select(0, cols)  # noqa: E731
        idx, shd, dep = flat(index), flat(shade), flat(depth)
        sel = {name: flat(getattr(layers, name)) for name in layers.__dataclass_fields__}  # [N, K]
        for k in reversed(range(sel["t_in"].shape[1])):
            # Farther layers exist in fewer columns: work on this layer's own columns only.
            mine = sel["valid"][:, k].nonzero().squeeze(-1)
            if mine.numel() == 0:
                continue
            pick = lambda x: x.index_select(0, mine)  # noqa: E731
            t_in, t_out, top, ped, lat, texel, light = (
                pick(sel[n][:, k : k + 1]) for n in ("t_in", "t_out", "height", "is_ped", "lateral", "texel", "shade"))
            rk, chk = pick(r), pick(ch)
            z = torch.addcmul(chk, rk, t_in)  # height of the front face seen by each pixel
            side = (z >= 0) & (z <= top)
            roof = ~ped & (z > top) & (torch.addcmul(chk, rk, t_out) <= top)
            frac = (z / top.clamp_min(1e-3)).clamp(0, 1)
            head = ((lat / _HEAD_HALF) ** 2 + ((frac - (1 + _HEAD) / 2) / ((1 - _HEAD) / 2)) ** 2) <= 1
            body = torch.where(frac < _HIP, (lat > _LEG_GAP * (1 - frac / _HIP)) & (lat < _LEG_OUTER),
                               torch.where(frac < _NECK, True, torch.where(frac < _HEAD, lat < _NECK_HALF, head)))
            side = side & (~ped | body)
            part = (frac >= _HIP).long() + (frac >= _NECK).long()
            tv = ((1 - frac) * T).long().clamp(0, T - 1)
            new_idx = torch.where(side, texel + torch.where(ped, part, tv * T), torch.where(roof, texel, pick(idx)))
            new_shd = torch.where(side, light, torch.where(roof, self._top_shade, pick(shd)))
            roof_depth = (top - chk) / rk.clamp_max(-1e-6)
            new_dep = torch.where(side, t_in, torch.where(roof, roof_depth, pick(dep)))
            idx.index_copy_(0, mine, new_idx)
            shd.index_copy_(0, mine, new_shd)
            dep.index_copy_(0, mine, new_dep)
        for full, part_ in ((index, idx), (shade, shd), (depth, dep)):
            full.view(b * w, H).index_copy_(0, cols, part_)

    # ------------------------------------------------------------------ colours and camera
    def _colour_buffer(self, atlas: Tensor, scene: SceneBatch, row_slope: Tensor) -> tuple[Tensor, int, int]:
        """The flat colour table [N, 3]: scene atlases, then pedestrian colours, then sky rows.

        Kept between calls (rebuilt only when the atlas batch changes) so that a frame only writes its
        few hundred pedestrian and sky entries instead of copying the atlases.
        """
        b, p = scene.batch_size, scene.pedestrians.shape[1]
        tail = b * p * PED_PARTS + b * self.height
        if self._colours is None or self._colours[0] is not atlas or self._colours[1].shape[0] != atlas.shape[1] + tail:
            buffer = torch.empty(atlas.shape[1] + tail, 3, device=self.device)
            buffer[: atlas.shape[1]] = self._response(atlas.t())
            self._colours = (atlas, buffer, atlas.shape[1])
        _, buffer, ped_offset = self._colours
        sky_offset = ped_offset + b * p * PED_PARTS
        buffer[ped_offset:sky_offset] = self._response(self._styles.pedestrian_colours(scene.style_seed.to(self.device), p).t())
        elevation = (row_slope.clamp_min(0) * 2.5).clamp_max(1).reshape(-1, 1)  # 0 at the horizon, 1 ~ 22 deg up
        buffer[sky_offset:] = self._response(torch.lerp(self._sky[0].view(1, 3), self._sky[1].view(1, 3), elevation.sqrt()))
        return buffer, ped_offset, sky_offset

    @staticmethod
    def _gaussian(sigma: float) -> Tensor:
        radius = max(1, math.ceil(2 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        return k / k.sum()

    def _lambert(self, cos_sun: Tensor) -> Tensor:
        """Light on a surface whose normal has ``cos_sun`` with the sun, gamma applied."""
        d = self.domain
        return (d.ambient + d.sun_intensity * cos_sun.clamp_min(0)).pow(1 / d.gamma)

    def _response(self, colours: Tensor) -> Tensor:
        """Linear colours [N, 3] -> colour-table entries (gamma, exposure, white balance, 8-bit scale)."""
        return colours.clamp(0, 1).pow(1 / self.domain.gamma) * self._gain

    def _camera_response(self, colours: Tensor, index: Tensor, shade: Tensor, depth: Tensor,
                         generator: torch.Generator | None) -> Tensor:
        """Colour-table indices [B, W, H] -> uint8 [B, 3, H, W]: light, fog, blur, noise, quantization.

        Two multiply-adds per channel: 0.5 + fog_colour * (1 - fog), plus colour * light * fog; the
        table entries already carry the camera gain (``_response``), and the 0.5 makes truncation round.
        """
        d = self.domain
        b, w, h = index.shape
        fog = depth.masked_fill(depth >= self.max_distance, 0.0).div_(-d.fog_distance).exp_()  # no fog on the sky
        # Written into the interior of a buffer padded by the blur radius along W, so that the blur
        # needs no padding copy.
        r = len(self._blur) // 2 if self._blur is not None else 0
        padded = torch.empty(b, w + 2 * r, h, 3, device=self.device)
        rgb = padded.narrow(1, r, w)
        torch.addcmul(self._half, (1 - fog).unsqueeze(-1), self._fog, out=rgb)
        texels = F.embedding(index.view(-1), colours).view(b, w, h, 3)  # a row gather, faster than index_select
        rgb.addcmul_(texels, (shade * fog).unsqueeze(-1))
        # Blur and noise work on the [B, W, H, 3] layout (elementwise, so the same sums as on the
        # [B, 3, H, W] image; the noise bank is read through the matching strided view).
        if self._blur is not None:
            rgb = self._blurred(padded, r)
        rgb = rgb.permute(0, 3, 2, 1)  # [B, 3, H, W] view
        if d.noise_std > 0:  # the noise add makes the image contiguous: one strided pass, not two
            noise = self._noise(rgb.numel(), generator).view(b, 3, h, w)
            rgb = torch.add(rgb, noise, out=torch.empty(b, 3, h, w, device=self.device))
        return rgb.clamp_(0, 255).to(torch.uint8, memory_format=torch.contiguous_format)

    def _blurred(self, padded: Tensor, r: int) -> Tensor:
        """Separable Gaussian blur of [B, W, H, 3] (given inside ``padded``, [B, W + 2r, H, 3]) by
        shifted sums with replicated borders (cheaper than conv2d here): along W first, then H."""
        k = self._blur.tolist()
        b, w, h = padded.shape[0], padded.shape[1] - 2 * r, padded.shape[2]
        padded[:, :r] = padded[:, r : r + 1]
        padded[:, r + w :] = padded[:, r + w - 1 : r + w]
        padded_h = torch.empty(b, w, h + 2 * r, 3, device=padded.device)
        out = padded_h.narrow(2, r, h)
        torch.mul(padded.narrow(1, 0, w), k[0], out=out)
        for i in range(1, len(k)):
            out.add_(padded.narrow(1, i, w), alpha=k[i])
        padded_h[:, :, :r] = padded_h[:, :, r : r + 1]
        padded_h[:, :, r + h :] = padded_h[:, :, r + h - 1 : r + h]
        out = padded_h.narrow(2, 0, h) * k[0]
        for i in range(1, len(k)):
            out.add_(padded_h.narrow(2, i, h), alpha=k[i])
        return out

    def _noise(self, count: int, generator: torch.Generator | None) -> Tensor:
        """Gaussian noise of std ``noise_std``: a window of a fixed bank at an offset drawn from ``generator``.

        Drawing fresh normals for every pixel costs as much as the rest of the frame; a random window
        into a bank twice the frame size is indistinguishable at 8-bit quantization.
        """
        if self._noise_bank is None or self._noise_bank.numel() < 2 * count:
            g = torch.Generator(device="cpu").manual_seed(0x5EED)
            self._noise_bank = (self.domain.noise_std * torch.randn(2 * count, generator=g)).to(self.device)
        if generator is None:
            start = 0
        else:
            start = int(torch.randint(0, count + 1, (1,), generator=generator, device=generator.device))
        return self._noise_bank[start : start + count]
