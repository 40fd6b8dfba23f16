"""The batched CPU raycaster: B street scenes -> B camera frames, as tensor ops over columns and pixels.

Why a raycaster: the layout is a 2.5D world (a ground grid, extruded buildings, upright obstacles and
pedestrians) seen by a level camera, so every image column is one 2D ray and every pixel row one
elevation. Work is split accordingly:

* per column [B, W]: one dense test against the scene's facade segments (``s2e.sim.facades``: the
  runs of building faces, a few dozen per street, derived per scene by ``s2e.sim.scene_grids``)
  finds the first building face (layouts with more than ``MAX_FACADES`` faces per scene use a
  vectorized grid DDA instead: a coarse max-pooled pass skips empty space, then exact cell
  crossings, in chunks, with finished rays dropped), and analytic ray/shape tests find every
  obstacle and pedestrian the ray meets; the ``layers``
  nearest of them are kept, sorted by depth, and turned into intervals of pixel-row slope (the
  rows each one's side, roof and body profile cover);
* per pixel, one dense function of per-row [B, H, 1] and per-column [B, 1, W] inputs: rows below
  the horizon are floor-cast with a per-row distance table, the wall covers the rows its extruded
  height spans, objects cover rows by their height (seen OVER low ones: their top face shows, and
  the facade above them), pedestrians by a legs/torso/head profile;
* colour is one gather of a texel index into a colour table holding the scenes' cached texture
  atlases (``s2e.sim.textures``), pedestrian clothing strips and sky rows, then Lambert light,
  distance fog, blur and sensor noise of the appearance domain (exposure, white balance and gamma are
  folded into the table and the light).

Speed: the dense stages (object tests, the facade test, the DDA's chunk step, the pixel stage) are
plain tensor code that ``torch.compile`` fuses into vectorized loops (for the exact shapes of a run),
run through a ``CompilePolicy`` (``s2e.sim.compiled``); ``Raycaster(compiled=None)`` compiles large
batches (``COMPILE_MIN_PIXELS``) once the policy has seen them rendered eagerly for
``COMPILE_AFTER_EAGER_S`` (long runs: training, long evaluations), and runs them eagerly otherwise
or where a stage's compilation failed (same pictures up to float rounding). Eagerly, object layers are
painted on the columns they cover only (``_shade_pixels_sparse``).

Limits: only the nearest building face per column is drawn (a taller building behind a lower one is
hidden by it), and at most ``layers`` objects per column (farther ones are hidden).

Camera: pinhole, square pixels, horizontal field of view ``hfov_deg``, pitch 0 (horizon at mid-height),
height ``camera_height`` above the ground. Depth (``with_depth``) is z-depth: metres along the optical
axis (not along the pixel's ray), ``max_distance`` where nothing is hit (sky, far ground).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from s2e.sim.appearance import AppearanceDomain, get_domain
from s2e.sim.compiled import PROCESS_POLICY, CompilePolicy
from s2e.sim.facades import facade_hits
from s2e.sim.scene import OBSTACLE_FIELDS, PEDESTRIAN_FIELDS, ObstacleKind, ObstacleShape, SceneBatch
from s2e.sim.scene_grids import COARSE, SceneGridCache, SceneGrids
from s2e.sim.textures import MAT_FACADE, MAT_OBSTACLE, NUM_MATERIALS, PED_PARTS, TEXTURE_SIZE, StyleCache

_NEAR = 0.05  # metres: intersections closer than this are clipped (the camera never sits inside a shape)
_MARCH_COMPILE_MIN = 64  # rays: below, a march round runs eagerly
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


def per_env(value: Tensor | float, batch: int, name: str, device: torch.device) -> Tensor:
    """A per-environment camera parameter (a float for all, or one value per env) as float32 [batch].

    Renderers take camera height and field of view either way; this is the one place that checks the
    shape and names the argument (``name``) in the error, instead of failing later in a broadcast.
    """
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


@dataclass(frozen=True)
class _Look:
    """A renderer's constants for the compiled stages: plain numbers, so compiled code bakes them in
    (equal values share one compilation across ``Raycaster`` instances)."""

    max_distance: float
    fog_distance: float
    layers: int  # objects composited per column
    ambient: float
    sun_intensity: float
    sun_xy: tuple[float, float]
    inv_gamma: float
    blur: tuple[float, ...]  # Gaussian taps; () = sharp
    top_shade: float = 1.0  # light on ground and roofs (normal straight up)

    def lambert(self, cos_sun: Tensor) -> Tensor:
        """Light on a surface whose normal has ``cos_sun`` with the sun, gamma applied."""
        return (self.ambient + self.sun_intensity * cos_sun.clamp_min(0)).pow(self.inv_gamma)

    def facing(self, nx: Tensor, ny: Tensor) -> Tensor:
        """Light on an upright surface with horizontal normal (nx, ny)."""
        return self.lambert(nx * self.sun_xy[0] + ny * self.sun_xy[1])


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


def _slab(origin: Tensor, direction: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    safe = torch.where(direction.abs() < 1e-9, 1e-9, direction)
    t1, t2 = (-half - origin) / safe, (half - origin) / safe
    return torch.minimum(t1, t2), torch.maximum(t1, t2)


def _object_spans(
    look: _Look,
    obstacles: Tensor,
    obstacle_mask: Tensor,
    pedestrians: Tensor,
    pedestrian_mask: Tensor,
    cam: Tensor,
    dirs: Tensor,
    wall_t: Tensor,
    cam_h: Tensor,
    ped_offset: int,
) -> tuple[Tensor, ...]:
    """The ``look.layers`` nearest objects of each column, as the pixel-row intervals they cover.

    Ray tests against every obstacle (circle or oriented box) and pedestrian (circle) per column
    [B, O + P, W] (``dirs``: [B, 2, W] ray directions, columns last), the nearest ``K`` kept in
    depth order; then, because a pixel row of slope r sees height ch + r * t at depth t, "on the side" (0 <= z <= top), "on the roof" (above the front
    face's top, below it at the back face) and the body profile's height fractions are intervals of
    r fixed per column: the pixel stage only compares its row's slope with them. Invalid layers
    get empty intervals.

    Returns, each [K, B, 1, W]: (lo, hi, roof_hi, frac0, frac_per_r, leg_lo, neck_hi, head_lo, head_hi,
    texel, stride, light, t_in, drop): side rows are lo <= r <= hi, roof rows hi < r <= roof_hi, the
    height fraction is frac0 + r * frac_per_r, the body covers leg_lo <= frac < neck_hi and
    head_lo <= frac <= head_hi (everything for obstacles), the texel of texture row v is texel + v *
    stride (int32), and a roof pixel's z-depth is its row's floor depth times drop.
    """
    b, w = dirs.shape[0], dirs.shape[2]
    dev, T = dirs.device, TEXTURE_SIZE
    # Objects along dim 1, columns last: [B, O + P, W], so that compiled loops run along columns.
    dx, dy = dirs[:, 0:1], dirs[:, 1:2]  # [B, 1, W]
    obs = obstacles.to(torch.float32)
    rel_x, rel_y = (obs[..., 0] - cam[:, 0:1]).unsqueeze(-1), (obs[..., 1] - cam[:, 1:2]).unsqueeze(-1)  # [B, O, 1]
    yaw, hl, hw, oh = (obs[..., i].unsqueeze(-1) for i in (2, 3, 4, 5))
    circle = obs[..., 6].round().long().unsqueeze(-1) == int(ObstacleShape.CIRCLE)
    kind = obs[..., 7].round().long().clamp(0, len(ObstacleKind) - 1)

    c_in, c_out, c_nx, c_ny, c_u, _ = _circles(dx, dy, rel_x, rel_y, hl)
    # Oriented box: slab test in the box frame.
    cy_, sy_ = torch.cos(yaw), torch.sin(yaw)
    ldx, ldy = dx * cy_ + dy * sy_, -dx * sy_ + dy * cy_
    ox, oy = -(rel_x * cy_ + rel_y * sy_), -(-rel_x * sy_ + rel_y * cy_)
    tx1, tx2 = _slab(ox, ldx, hl)
    ty1, ty2 = _slab(oy, ldy, hw)
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
    mat = (torch.arange(b, device=dev).view(b, 1) * NUM_MATERIALS + MAT_OBSTACLE + kind).unsqueeze(-1)
    o_texel = mat * (T * T) + tu
    o_valid = obstacle_mask.unsqueeze(-1) & (o_out > torch.clamp_min(o_in, _NEAR))

    peds = pedestrians.to(torch.float32)
    p = peds.shape[1]
    pr_x, pr_y = (peds[..., 0] - cam[:, 0:1]).unsqueeze(-1), (peds[..., 1] - cam[:, 1:2]).unsqueeze(-1)
    radius, ph = peds[..., 4].unsqueeze(-1), peds[..., 5].unsqueeze(-1)
    p_in, p_out, p_nx, p_ny, _, lateral = _circles(dx, dy, pr_x, pr_y, radius)
    strip = (torch.arange(b, device=dev).view(b, 1) * p + torch.arange(p, device=dev)) * T + ped_offset
    p_valid = pedestrian_mask.unsqueeze(-1) & (p_out > torch.clamp_min(p_in, _NEAR))

    cat = lambda a, bb: torch.cat([a.expand(b, -1, w), bb.expand(b, -1, w)], 1)  # noqa: E731
    t_in, t_out = cat(o_in, p_in).clamp_min(_NEAR), cat(o_out, p_out)
    valid = cat(o_valid, p_valid) & (t_in < wall_t.unsqueeze(1)) & (t_in < look.max_distance)
    fields = {
        "t_in": t_in,
        "t_out": t_out,
        "top": cat(oh, ph),
        "light": look.facing(cat(o_nx, p_nx), cat(o_ny, p_ny)),
        "texel": cat(o_texel, strip.unsqueeze(-1)),
        "ped": cat(torch.zeros_like(o_valid), torch.ones_like(p_valid)),
        "lateral": cat(torch.zeros_like(o_in), lateral.abs()),
        "valid": valid,
    }
    k = min(look.layers, t_in.shape[1])
    order = torch.where(valid, t_in, math.inf).topk(k, dim=1, largest=False, sorted=True).indices
    t_in, t_out, top, light, texel, ped, lat, valid = (v.gather(1, order) for v in fields.values())  # [B, K, W]

    ch = cam_h.view(-1, 1, 1)
    inf = torch.full((), math.inf, device=dev)
    lo = torch.where(valid, -ch / t_in, inf)
    hi = (top - ch) / t_in
    roof_hi = torch.where(valid & ~ped, (top - ch) / t_out, -inf)
    top_ = top.clamp_min(1e-3)
    # Pedestrian profile: legs (a gap between them near the axis), torso, neck, an elliptic head.
    legs = torch.where(lat < _LEG_OUTER, _HIP * (1 - lat / _LEG_GAP), _HIP)
    neck = torch.where(lat < _NECK_HALF, _HEAD, _NECK)
    head = (1 - _HEAD) / 2 * (1 - (lat / _HEAD_HALF) ** 2).clamp_min(0).sqrt()
    has_head = ped & (lat < _HEAD_HALF)
    centre = (1 + _HEAD) / 2
    spans = (
        lo,
        hi,
        roof_hi,
        ch / top_,
        t_in / top_,
        torch.where(ped, legs, -inf),
        torch.where(ped, neck, inf),
        torch.where(has_head, centre - head, inf),
        torch.where(has_head, centre + head, -inf),
        texel.int(),
        torch.where(ped, 1, T).int(),
        light,
        t_in,
        (ch - top) / ch,
    )
    # [K, B, 1, W] and contiguous, so the pixel stage reads each layer's columns with vector loads.
    return tuple(f.transpose(0, 1).unsqueeze(2).contiguous() for f in spans)


def _shade_pixels(
    look: _Look,
    grid: tuple[int, int],
    rows: Tensor,
    cam_h: Tensor,
    wall: tuple[Tensor, ...],
    floor: tuple[Tensor, ...],
    spans: tuple[Tensor, ...],
    colours: Tensor,
    fog_colour: Tensor,
) -> tuple[Tensor, Tensor]:
    """Every per-pixel quantity of the frame in one dense function: packed colours int32 [B, H, W]
    (``_colour``) and z-depth [B, H, W].

    Why one function of broadcast per-row [B, H, 1] and per-column [B, 1, W] inputs: each pixel needs
    only its row's slope and its column's hits, so ``torch.compile`` fuses the whole stage into a
    loop over pixels with no [B, H, W] temporaries. Run eagerly, every object layer would cost a
    few dozen full-frame passes: ``_shade_pixels_sparse`` is the eager form.

    Args:
        grid: padded ground grid size (rows, cols).
        rows: [B, H, 1] upward slope of each pixel row; cam_h: [B, 1, 1] camera height.
        wall: (t, height, texel [B, 1, W] of the column's building face (texel = int32 atlas index of
            the face's texel column, row 0), shade [B, 1, W], texels_per_m [B, 1, 1], sky [B, H, 1]
            int32 colour index of each row's sky).
        floor: (gx0, gy0 [B, 1, 1] camera in padded cells, sx, sy [B, 1, W] cells per metre of
            z-depth, ground materials (flat int32), scene base cell [B, 1, 1] int32, texels per cell
            [2, M]).
        spans: ``_object_spans`` of the nearest objects per column.
        colours: the colour table [N, 3]; fog_colour: [3].
    """
    index, shade, depth, t_floor = _background(look, grid, rows, cam_h, wall, floor)
    for layer in reversed(list(zip(*spans))):  # far to near
        index, shade, depth = _paint_layer(look, rows, t_floor, layer, index, shade, depth)
    return _colour(look, index, shade, depth, colours, fog_colour), depth


def _shade_pixels_sparse(
    look: _Look,
    grid: tuple[int, int],
    rows: Tensor,
    cam_h: Tensor,
    wall: tuple[Tensor, ...],
    floor: tuple[Tensor, ...],
    spans: tuple[Tensor, ...],
    colours: Tensor,
    fog_colour: Tensor,
) -> tuple[Tensor, Tensor]:
    """``_shade_pixels`` for eager execution (same arguments, same pixels): each object layer is
    painted on the columns it covers only, gathered as [N, H] pixel columns and written back, so
    its cost follows how much of the view objects take up instead of the frame size."""
    index, shade, depth, t_floor = _background(look, grid, rows, cam_h, wall, floor, floor_from=rows.shape[1] // 2)
    b, h, w = index.shape
    pixel_rows = torch.arange(h, device=index.device).view(1, h) * w
    for layer in reversed(list(zip(*spans))):
        cols = layer[0].isfinite().view(-1).nonzero().squeeze(-1)  # b * W + w of the layer's valid columns
        if cols.numel() == 0:
            continue
        env = cols.div(w, rounding_mode="floor")
        flat = (cols + env * ((h - 1) * w)).unsqueeze(1) + pixel_rows  # [N, H] offsets into [B, H, W]
        fields = tuple(f.view(-1).index_select(0, cols).unsqueeze(1) for f in layer)  # [N, 1] each
        r, tf = rows.view(b, h).index_select(0, env), t_floor.view(b, h).index_select(0, env)
        painted = _paint_layer(look, r, tf, fields, *(_gather(x.view(-1), flat) for x in (index, shade, depth)))
        for full, part in zip((index, shade, depth), painted):
            full.view(-1).put_(flat, part)
    return _colour(look, index, shade, depth, colours, fog_colour), depth


def _gather(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a flat table, as one index_select (several times faster eagerly than
    advanced indexing or ``take`` for int32 indices; the compiler lowers both alike)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _background(
    look: _Look, grid: tuple[int, int], rows: Tensor, cam_h: Tensor, wall: tuple[Tensor, ...], floor: tuple[Tensor, ...], floor_from: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Colour index (int32), shade and z-depth [B, H, W] of sky, facades and floor, and each row's
    floor depth [B, H, 1] (arguments as ``_shade_pixels``). Only rows from ``floor_from`` on are
    floor-cast: eagerly, the rows above the horizon (which never see the floor) are skipped."""
    t, m = TEXTURE_SIZE, look.max_distance
    wall_t, wall_h, wall_texel, wall_shade, texels_per_m, sky = wall
    # Facades: rows whose height at the wall's depth lies on the building; texel rows count up from
    # the ground (the atlas stores row 0 at the top, hence the bitwise flip).
    hit = wall_t.isfinite()
    lo = torch.where(hit, -cam_h / wall_t, math.inf)
    on_wall = (rows >= lo) & (rows <= (wall_h - cam_h) / wall_t)
    v = torch.addcmul(cam_h * texels_per_m, rows, wall_t * texels_per_m).int()
    index = torch.where(on_wall, v.bitwise_not().bitwise_and(t - 1).mul(t).add(wall_texel), sky)
    shade = torch.where(on_wall, wall_shade, 1.0)
    depth = torch.where(on_wall, wall_t, m)
    t_floor = cam_h / -rows
    if not floor_from:
        return (*_floor(look, grid, rows, t_floor, wall_t, floor, index, shade, depth), t_floor)
    lower = tuple(x[:, floor_from:] for x in (index, shade, depth))
    for part, painted in zip(lower, _floor(look, grid, rows[:, floor_from:], t_floor[:, floor_from:], wall_t, floor, *lower)):
        part.copy_(painted)
    return index, shade, depth, t_floor


def _floor(
    look: _Look, grid: tuple[int, int], rows: Tensor, t_floor: Tensor, wall_t: Tensor, floor: tuple[Tensor, ...], index: Tensor, shade: Tensor, depth: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The ground over (index, shade, depth) where rows below the horizon meet it nearer than the
    wall: z-depth from the per-row table ``t_floor``, one material gather per pixel from the padded
    ground grid, texels from continuous grid coordinates (``floor`` as in ``_shade_pixels``)."""
    t, m = TEXTURE_SIZE, look.max_distance
    gx0, gy0, sx, sy, ground, base, scale = floor
    on_floor = (rows < 0) & (t_floor < wall_t.clamp_max(m))
    gx, gy = torch.addcmul(gx0, sx, t_floor), torch.addcmul(gy0, sy, t_floor)
    gh, gw = grid
    cell = gy.int().clamp(0, gh - 1).mul(gw).add(gx.int().clamp(0, gw - 1)).add(base)
    mat = _gather(ground, cell)
    ftu = (gx * _gather(scale[0], mat)).int().bitwise_and(t - 1)
    ftv = (gy * _gather(scale[1], mat)).int().bitwise_and(t - 1)
    index = torch.where(on_floor, mat.mul(t).add(ftv).mul(t).add(ftu), index)
    shade = torch.where(on_floor, look.top_shade, shade)
    depth = torch.where(on_floor, t_floor, depth)
    return index, shade, depth


def _paint_layer(
    look: _Look, rows: Tensor, t_floor: Tensor, layer: tuple[Tensor, ...], index: Tensor, shade: Tensor, depth: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One object layer over (index, shade, depth): its side (pedestrians by their body profile) and
    the top face of an obstacle the camera looks down onto. ``layer``: one layer of ``_object_spans``,
    broadcasting against ``rows`` and ``t_floor`` (per-row slope and floor depth)."""
    t = TEXTURE_SIZE
    lo, hi, roof_hi, frac0, frac_per_r, leg_lo, neck_hi, head_lo, head_hi, texel, stride, light, t_in, drop = layer
    frac = torch.addcmul(frac0, rows, frac_per_r).clamp(0, 1)
    body = ((frac >= leg_lo) & (frac < neck_hi)) | ((frac >= head_lo) & (frac <= head_hi))
    side = (rows >= lo) & (rows <= hi) & body
    roof = (rows > hi) & (rows <= roof_hi)
    v = ((1 - frac) * t).int().clamp(0, t - 1)
    index = torch.where(side, v.mul(stride).add(texel), torch.where(roof, texel, index))
    shade = torch.where(side, light, torch.where(roof, look.top_shade, shade))
    depth = torch.where(side, t_in, torch.where(roof, t_floor * drop, depth))
    return index, shade, depth


def _colour(look: _Look, index: Tensor, shade: Tensor, depth: Tensor, colours: Tensor, fog_colour: Tensor) -> Tensor:
    """Colour indices [B, H, W] -> 8-bit RGB packed per pixel into int32 [B, H, W] (red in the low
    byte): 0.5 + fog_colour * (1 - fog), plus colour * light * fog (table entries carry the camera
    gain; the 0.5 makes truncation round; no fog on the sky).

    Why packed: written as a [B, 3, H, W] image, the compiler loops over channels outermost and
    recomputes each pixel's whole shading (the nearest object layer included) once per channel;
    one int32 per pixel computes it once, and ``_unpack`` spreads the bytes into planes afterwards
    (same pixels; the speed-up is in docs/experiments.md).
    """
    m = look.max_distance
    fog = depth.masked_fill(depth >= m, 0.0).div(-look.fog_distance).exp()
    haze, light = 1 - fog, shade * fog
    base, table = index * 3, colours.view(-1)  # texel-major table: a pixel's channels share a cache line
    packed = None
    for c in range(3):
        value = torch.addcmul(fog_colour[c] * haze + 0.5, _gather(table, base + c), light)
        byte = value.clamp(0, 255).to(torch.int32).bitwise_left_shift(8 * c)
        packed = byte if packed is None else packed.bitwise_or(byte)
    return packed


def _unpack(packed: Tensor) -> Tensor:
    """Packed RGB int32 [B, H, W] -> uint8 [B, 3, H, W] (one strided copy of the bytes; little-endian,
    as every platform PyTorch supports)."""
    b, h, w = packed.shape
    return packed.view(torch.uint8).view(b, h, w, 4)[..., :3].permute(0, 3, 1, 2).contiguous()


def _sensor(look: _Look, packed: Tensor, noise: Tensor | None) -> Tensor:
    """Blur and sensor noise of the appearance domain over packed colours -> uint8 [B, 3, H, W]."""
    rgb = _unpack(packed).float()
    if look.blur:
        rgb = _blur(_blur(rgb, look.blur, 3), look.blur, 2) + 0.5  # the blurred value is rounded again
    if noise is not None:
        rgb = rgb + noise
    return rgb.clamp(0, 255).to(torch.uint8)


def _blur(x: Tensor, taps: tuple[float, ...], dim: int) -> Tensor:
    """Gaussian blur along ``dim`` by shifted sums with replicated borders (cheaper than conv2d here)."""
    r, n = len(taps) // 2, x.shape[dim]
    padded = x.index_select(dim, torch.arange(-r, n + r, device=x.device).clamp(0, n - 1))
    out = padded.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        out = out.add(padded.narrow(dim, i, n), alpha=taps[i])
    return out


def _march_chunk(grid: Tensor, base: Tensor, state: Tensor, k0: Tensor, chunk: int, cols: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """Test the next ``chunk`` gridline crossings of each axis for A rays: (new [t, value, axis] [A, 3], still active [A]).

    ``state`` [A, 15] holds per ray (offset, t per cell, start g0, start cell, sign, cells per t — two
    columns each, x then y), the search limit, and the best (t, value, axis) so far; ``base`` [A] is
    the ray's scene offset into the flat ``grid``; ``size`` [2] the last (col, row) index. One fused
    function: the march's inner loop.
    """
    off, inv, g0, cell0, sign, slope = state[:, :12].split(2, -1)
    t_limit, best = state[:, 12], state[:, 13:]
    a_t, a_h, a_axis = best.unbind(-1)
    k = k0 + torch.arange(chunk, device=state.device, dtype=torch.float32)  # [C]
    for axis in (0, 1):
        t = (off[:, axis : axis + 1] + (k - 1)) * inv[:, axis : axis + 1]  # [A, C]
        along = (cell0[:, axis : axis + 1] + sign[:, axis : axis + 1] * k).clamp_min(0).minimum(size[axis])
        other = (g0[:, 1 - axis : 2 - axis] + t * slope[:, 1 - axis : 2 - axis]).floor().clamp_min(0).minimum(size[1 - axis])
        col, row = (along, other) if axis == 0 else (other, along)
        h = grid.take(base.unsqueeze(1) + (row * cols + col).long())
        t_min, arg = torch.where(h > 0, t, math.inf).min(-1)
        closer = t_min < a_t
        a_t = torch.where(closer, t_min, a_t)
        a_h = torch.where(closer, h.gather(-1, arg.unsqueeze(-1)).squeeze(-1), a_h)
        a_axis = torch.where(closer, float(axis), a_axis)
    certain = ((off + (k0 + chunk - 1)) * inv).amin(-1)  # the next untested crossing
    return torch.stack([a_t, a_h, a_axis], -1), (a_t > certain) & (certain < t_limit)


def _march(
    grid: Tensor,
    dims: tuple[int, int],
    env: Tensor,
    g0: Tensor,
    rays: Tensor,
    cell: float,
    t_limit: Tensor | float,
    compiled: bool,
    policy: CompilePolicy,
    chunk: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact DDA of N rays over a padded grid: (t, value, axis) of the first crossing into a cell > 0.

    The k-th crossing of a vertical gridline happens at t = (offset + k - 1) * cell / |dx| and
    enters column floor(gx0) + k * sign(dx) (likewise for horizontal gridlines). Crossings are
    tested ``chunk`` at a time (``_march_chunk``); a hit is final once nearer than the next untested
    crossing of either axis, and rays drop out as soon as they are final or leave the grid, so each
    round works on the rays still searching. The grid's empty one-cell border lets out-of-grid
    crossings clamp onto empty cells instead of bounds checks.

    Args:
        grid: flat [B * rows * cols] values (> 0 = hit); dims = (rows, cols), padding included.
        env: [N] scene of each ray; g0: [N, 2] start in (col, row) cell units; rays: [N, 2] world
        direction per unit t; cell: metres per cell; t_limit: farthest t to search.
        compiled, policy: whether the chunk step compiles, and the policy that runs it.
    """
    rows, cols = dims
    size = torch.tensor([cols - 1, rows - 1], device=g0.device, dtype=torch.float32)
    n = g0.shape[0]
    cell0 = g0.floor()
    inv = cell / rays.abs().clamp_min(1e-9)  # t per cell along each axis
    offset = torch.where(rays >= 0, 1 - (g0 - cell0), g0 - cell0)  # cells to the first crossing
    exit_t = (torch.where(rays >= 0, size - g0, g0 - 1).clamp_min(0) * inv).amin(-1)
    limit = torch.clamp_max(exit_t, t_limit)
    sign = torch.where(rays >= 0, 1.0, -1.0)
    best = torch.zeros(n, 3, device=g0.device)
    best[:, 0] = math.inf
    state = torch.cat([offset, inv, g0, cell0, sign, rays / cell, limit.unsqueeze(-1), best], -1)  # [N, 15]
    base = env * (rows * cols)
    active = torch.arange(n, device=g0.device)
    k0 = 1
    while active.numel():
        # Few rays left: eager ops cost little, and compiled code would specialize on tiny sizes.
        fast = compiled and active.numel() >= _MARCH_COMPILE_MIN
        found, keep = policy.run(_march_chunk, False, fast, grid, base, state, torch.tensor(float(k0)), chunk, cols, size)
        best.index_copy_(0, active, found)
        keep_idx = keep.nonzero().squeeze(-1)
        active, base = active.index_select(0, keep_idx), base.index_select(0, keep_idx)
        state = torch.cat([state.index_select(0, keep_idx)[:, :13], found.index_select(0, keep_idx)], -1)
        k0 += chunk
    return best[:, 0], best[:, 1], best[:, 2].long()


class Raycaster:
    """Renders ``SceneBatch`` views in one appearance domain; see the module docstring for the model.

    Args:
        width, height: image size in pixels.
        domain: an ``AppearanceDomain`` or the name of a registered one.
        max_distance: farthest z-depth drawn (metres); beyond it the view fades into fog.
        device: where images are made (CPU by default; CUDA works unchanged).
        layers: how many objects per column are composited (the nearest ones; more are hidden).
        compiled: run the dense per-column and per-pixel stages through ``torch.compile`` (fused
            vectorized loops, several times faster; seconds to compile once per process). ``None``
            (default) compiles calls of at least ``COMPILE_MIN_PIXELS`` pixels (e.g. 16 envs at
            128x72) once the policy has seen such calls rendered eagerly for ``COMPILE_AFTER_EAGER_S``
            seconds, i.e. only in long runs, where it pays; a stage whose compilation fails runs
            eagerly from then on, with a warning.
        compile_policy: runs the stages, owns their compilations and reports what ran (default: the
            process-wide ``PROCESS_POLICY``, shared by every renderer so each stage compiles once).
    """

    def __init__(
        self,
        width: int,
        height: int,
        domain: str | AppearanceDomain = "sim",
        max_distance: float = 40.0,
        device: str | torch.device = "cpu",
        layers: int = 3,
        compiled: bool | None = None,
        compile_policy: CompilePolicy = PROCESS_POLICY,
    ) -> None:
        if width < 2 or height < 2:
            raise ValueError(f"image size must be at least 2x2 pixels, got {width}x{height}")
        if max_distance <= 0 or layers < 1:
            raise ValueError(f"max_distance must be positive and layers >= 1, got {max_distance}, {layers}")
        self.width, self.height = int(width), int(height)
        self.domain = get_domain(domain)
        self.max_distance = float(max_distance)
        self.device = torch.device(device)
        self.layers = int(layers)
        self.compiled = compiled
        self.compile_policy = compile_policy
        self._styles = StyleCache(self.domain, self.device)
        d = self.domain
        sun = torch.tensor(d.sun_direction, dtype=torch.float32)
        blur = tuple(self._gaussian(d.blur_sigma).tolist()) if d.blur_sigma > 0 else ()
        look = _Look(self.max_distance, d.fog_distance, self.layers, d.ambient, d.sun_intensity, (float(sun[0]), float(sun[1])), 1 / d.gamma, blur)
        self._look = replace(look, top_shade=look.lambert(torch.tensor(max(float(sun[2]), 0.0))).item())
        # Camera response folded into colours: 8-bit scale, exposure and white balance multiply every
        # colour-table entry; display gamma applies to colours and to light separately (before fog).
        self._gain = torch.tensor(d.colour_cast, dtype=torch.float32, device=self.device) * (d.exposure * 255.0)
        self._fog = torch.tensor(d.fog_colour, dtype=torch.float32, device=self.device).pow(1 / d.gamma) * self._gain
        self._sky = [torch.tensor(c, dtype=torch.float32, device=self.device) for c in (d.sky_horizon, d.sky_top)]
        self._noise_bank: Tensor | None = None
        # Body part (trousers, shirt, skin) of each texture row of a pedestrian strip, by the row's height
        frac = 1 - (torch.arange(TEXTURE_SIZE, device=self.device) + 0.5) / TEXTURE_SIZE
        self._ped_rows = (frac >= _HIP).long() + (frac >= _NECK).long()
        # (atlas the table was made from, table, pedestrian offset, (seeds, row slopes) its tail shows)
        self._colours: tuple[Tensor, Tensor, int, tuple[Tensor, Tensor] | None] | None = None
        self._grids = SceneGridCache(self.domain.lane_offset)

    # ------------------------------------------------------------------ public API
    def render(
        self,
        scene: SceneBatch,
        camera_xy: Tensor,
        camera_yaw: Tensor,
        camera_height: Tensor | float,
        hfov_deg: Tensor | float,
        with_depth: bool = False,
        noise_generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Frames uint8 [B, 3, H, W] and, if ``with_depth``, z-depth float [B, 1, H, W] in metres.

        A pure function of its inputs: the only randomness is sensor noise, drawn from
        ``noise_generator`` (``None`` gives a fixed noise pattern, so output is still deterministic).
        """
        start_time = time.perf_counter()
        b = _check_scene(scene, camera_xy, camera_yaw)
        dev = self.device
        scene = scene.to(dev) if scene.device != dev else scene
        cam = camera_xy.to(dev, torch.float32)
        yaw = camera_yaw.to(dev, torch.float32)
        cam_h = per_env(camera_height, b, "camera_height", dev).view(b, 1, 1)
        fov = per_env(hfov_deg, b, "hfov_deg", dev)
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
        grids = self._grids.get(scene)
        fast = self.compiles(b)
        run = self.compile_policy.run
        g0 = (cam - scene.origin.to(torch.float32)) / float(scene.resolution) + 1  # camera in padded cells
        wall = self._cast_walls(scene, grids, cam, g0, dirs, fast)
        spans = run(
            _object_spans,
            True,
            fast,
            self._look,
            scene.obstacles,
            scene.obstacle_mask,
            scene.pedestrians,
            scene.pedestrian_mask,
            cam,
            dirs.transpose(1, 2).contiguous(),
            wall.t,
            cam_h,
            ped_offset,
        )
        # Per-column inputs of the pixel stage as [B, 1, W], per-row ones as [B, H, 1]; indices int32.
        T, res, env = TEXTURE_SIZE, float(scene.resolution), torch.arange(b, device=dev, dtype=torch.int32)
        texels_per_m = T / repeat[:, MAT_FACADE]  # [B, 2]
        tu = (wall.along * texels_per_m[:, 0:1]).floor().int() & (T - 1)
        facade_texel = (env.view(b, 1) * NUM_MATERIALS + MAT_FACADE) * T * T + tu
        sky = sky_offset + env.view(b, 1, 1) * H + torch.arange(H, device=dev, dtype=torch.int32).view(1, H, 1)
        walls = (wall.t, wall.height, facade_texel, self._look.facing(wall.normal[..., 0], wall.normal[..., 1]))
        walls = tuple(x.unsqueeze(1) for x in walls) + (texels_per_m[:, 1].view(b, 1, 1), sky)
        gh, gw = scene.surface.shape[1:]
        cells_per_m = (dirs / res).permute(2, 0, 1).unsqueeze(2).contiguous()  # [2, B, 1, W]
        floor = (
            g0[:, 0].view(b, 1, 1),
            g0[:, 1].view(b, 1, 1),
            cells_per_m[0],
            cells_per_m[1],
            grids.material,
            (env * ((gh + 2) * (gw + 2))).view(b, 1, 1),
            (T * res / repeat.view(-1, 2)).t().contiguous(),
        )
        noise = self._noise(b * 3 * H * W, noise_generator).view(b, 3, H, W) if self.domain.noise_std > 0 else None
        pixels = _shade_pixels if fast else _shade_pixels_sparse
        packed, depth = run(pixels, True, fast, self._look, (gh + 2, gw + 2), row_slope.view(b, H, 1), cam_h, walls, floor, spans, colours, self._fog)
        if self._look.blur or noise is not None:
            image = run(_sensor, True, fast, self._look, packed, noise)
        else:
            image = _unpack(packed)
        if self.compiled is None and not fast:
            self.compile_policy.add_eager_seconds(b * H * W, time.perf_counter() - start_time)
        return image, (depth.unsqueeze(1) if with_depth else None)

    def compiles(self, batch: int) -> bool:
        """Whether a call rendering ``batch`` frames is to run compiled (``compiled``, or under ``None``
        the policy's rule: large calls once ``COMPILE_AFTER_EAGER_S`` were paid eagerly). ``NavEnv``
        steps its crowd the same way, so a run compiles all of its dense work or none; a stage whose
        compilation failed still runs eagerly (``compile_policy.report()`` says which)."""
        if self.compiled is not None:
            return self.compiled
        return self.compile_policy.wants(batch * self.width * self.height)

    # ------------------------------------------------------------------ geometry per column
    def _cast_walls(self, scene: SceneBatch, grids: SceneGrids, cam: Tensor, g0: Tensor, dirs: Tensor, compiled: bool) -> _WallHits:
        """First building face per column: one dense test of every column against the scene's facade
        segments, or, for layouts with more than ``MAX_FACADES`` of them, a grid DDA.

        A camera inside a building cell (never where physics keeps the robot) sees that building's
        wall right in front of it instead of looking out through it. ``g0``: the camera in padded cells.
        """
        b = dirs.shape[0]
        res = float(scene.resolution)
        rows, cols = scene.surface.shape[1] + 2, scene.surface.shape[2] + 2
        if grids.facades is None:
            t, height, axis = self._march_walls(grids, (rows, cols), g0, dirs, res, compiled)
        else:
            t, height, axis = self.compile_policy.run(
                facade_hits, True, compiled, grids.facades, g0.unsqueeze(-1), (dirs / res).transpose(1, 2).contiguous(), self.max_distance
            )
        cell = g0.floor().long()
        env = torch.arange(b, device=self.device)
        own = grids.wall.take((env * rows + cell[:, 1].clamp(0, rows - 1)) * cols + cell[:, 0].clamp(0, cols - 1))
        inside = (own > 0).view(b, 1)
        t = torch.where(inside, _NEAR, t)
        height = torch.where(inside, own.view(b, 1), height)
        axis = torch.where(inside, 0, axis.long())
        point = cam.unsqueeze(1) + t.clamp_max(1e6).unsqueeze(-1) * dirs
        along = torch.where(axis == 0, point[..., 1], point[..., 0])
        sign = torch.where(dirs >= 0, 1.0, -1.0)
        normal = -sign * torch.stack([axis == 0, axis == 1], -1)
        return _WallHits(t, height, along, normal)

    def _march_walls(self, grids: SceneGrids, dims: tuple[int, int], g0: Tensor, dirs: Tensor, res: float, compiled: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(t, height, axis) [B, W] of the first building cell per column by a coarse-then-fine grid DDA.

        Rays first march the max-pooled grid (``COARSE`` cells per block) to the first block holding
        any building; rays that meet none (open streets, the sky) are finished at a fraction of the
        cost, the others march the fine grid from just before that block.
        """
        b, w = dirs.shape[:2]
        env = torch.arange(b, device=self.device).repeat_interleave(w)
        rays = dirs.reshape(-1, 2)
        g0 = g0.repeat_interleave(w, 0)
        coarse_dims = (-(-dims[0] // COARSE) + 2, -(-dims[1] // COARSE) + 2)
        g0_coarse = g0 / COARSE + 1
        start_cell = g0_coarse.long()
        # Rays start inside their first block, which the coarse march (crossings INTO blocks) never tests.
        inside = grids.coarse.take((env * coarse_dims[0] + start_cell[:, 1]) * coarse_dims[1] + start_cell[:, 0]) > 0
        t_block, _, _ = _march(grids.coarse, coarse_dims, env, g0_coarse, rays, res * COARSE, self.max_distance, compiled, self.compile_policy)
        t_block = torch.where(inside, 0.0, t_block)
        near = t_block.isfinite().nonzero().squeeze(-1)
        best_t = torch.full_like(t_block, math.inf)
        best_h = torch.zeros_like(t_block)
        best_axis = torch.zeros(t_block.shape, dtype=torch.long, device=self.device)
        if near.numel():
            t0 = (t_block[near] - 1e-4).clamp_min(0)  # just before the block: an empty fine cell
            start = g0[near] + t0.unsqueeze(-1) * rays[near] / res
            t, h, axis = _march(grids.wall, dims, env[near], start, rays[near], res, self.max_distance - t0, compiled, self.compile_policy)
            best_t[near], best_h[near], best_axis[near] = t + t0, h, axis
        best_t = torch.where(best_t <= self.max_distance, best_t, math.inf)
        return best_t.view(b, w), best_h.view(b, w), best_axis.view(b, w)

    # ------------------------------------------------------------------ colours and camera
    def _colour_buffer(self, atlas: Tensor, scene: SceneBatch, row_slope: Tensor) -> tuple[Tensor, int, int]:
        """The colour table [N, 3]: scene atlases, then pedestrian strips, then sky rows.

        Texel-major (a texel's three channels side by side): the table outgrows the CPU caches (a
        texture atlas per scene), and a pixel's three channel loads then hit one cache line, not three.

        A pedestrian's strip is a one-texel-wide texture (T rows, top down) of its clothing and skin
        colours, so pedestrians and obstacles take their texel the same way (row v -> base + v * stride).
        Kept between calls (rebuilt only when the atlas batch changes), and the pedestrian and sky
        entries are rewritten only when the style seeds or the camera's field of view change: a frame
        of the same scenes copies nothing.
        """
        b, p, t = scene.batch_size, scene.pedestrians.shape[1], TEXTURE_SIZE
        tail = b * p * t + b * self.height
        seeds = scene.style_seed.to(self.device)
        if self._colours is None or self._colours[0] is not atlas or self._colours[1].shape[0] != atlas.shape[1] + tail:
            table = torch.empty(atlas.shape[1] + tail, 3, device=self.device)
            table.t()[:, : atlas.shape[1]] = self._response(atlas)
            self._colours = (atlas, table, atlas.shape[1], None)
        _, table, ped_offset, drawn = self._colours
        sky_offset = ped_offset + b * p * t
        if drawn is None or not (torch.equal(drawn[0], seeds) and torch.equal(drawn[1], row_slope)):
            buffer = table.t()  # [3, N] view: colours are computed as channel planes
            parts = self._response(self._styles.pedestrian_colours(seeds, p)).view(3, b * p, PED_PARTS)
            buffer[:, ped_offset:sky_offset] = parts[:, :, self._ped_rows].reshape(3, -1)
            elevation = (row_slope.clamp_min(0) * 2.5).clamp_max(1).reshape(1, -1)  # 0 at the horizon, 1 ~ 22 deg up
            buffer[:, sky_offset:] = self._response(torch.lerp(self._sky[0].view(3, 1), self._sky[1].view(3, 1), elevation.sqrt()))
            self._colours = (atlas, table, ped_offset, (seeds.clone(), row_slope.clone()))
        return table, ped_offset, sky_offset

    @staticmethod
    def _gaussian(sigma: float) -> Tensor:
        radius = max(1, math.ceil(2 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        return k / k.sum()

    def _response(self, colours: Tensor) -> Tensor:
        """Linear colours [3, N] -> colour-table entries (gamma, exposure, white balance, 8-bit scale)."""
        return colours.clamp(0, 1).pow(1 / self.domain.gamma) * self._gain.view(3, 1)

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
