"""Procedural per-scene texture atlases, made once per (domain, style seed) and cached.

Rendering then only gathers texels: every material of every scene lives in one flat colour buffer,
and a pixel's colour is one integer index into it (``StyleCache.batch``). Making textures is the
slow part (milliseconds per scene), so it happens when a scene first appears, never per frame.

Texture convention: ``[T, T, 3]`` with texel row 0 at the TOP of vertical surfaces (facades, obstacle
sides); ground textures are indexed by world (x, y) modulo the material's repeat size.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

import torch
import torch.nn.functional as F

from s2e.sim.appearance import AppearanceDomain
from s2e.sim.scene import ObstacleKind, Surface

#: Material slots of an atlas: the ground classes first (slot = ``Surface`` value), then facades,
#: the obstacle kinds, and the road's lane paint.
MAT_FACADE = len(Surface)
MAT_OBSTACLE = MAT_FACADE + 1
MAT_LANE = MAT_OBSTACLE + len(ObstacleKind)
NUM_MATERIALS = MAT_LANE + 1
#: Texels per texture side; 32 is already finer than a 128-pixel-wide frame resolves.
TEXTURE_SIZE = 32
#: Pedestrian colour parts (trousers, shirt, skin), in order of height on the body.
PED_PARTS = 3


def _generator(domain: AppearanceDomain, seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(domain.name.encode())) % (2**63 - 1))
    return g


def _smooth_noise(g: torch.Generator, cells: int, size: int) -> torch.Tensor:
    """Tileable value noise in [-1, 1], [size, size]: random lattice, circularly bilinear-upsampled."""
    lattice = torch.rand(1, 1, cells, cells, generator=g) * 2 - 1
    padded = F.pad(lattice, (0, 1, 0, 1), mode="circular")
    up = F.interpolate(padded, size=(size + size // cells, size + size // cells), mode="bilinear", align_corners=True)
    return up[0, 0, :size, :size]


def _grain(g: torch.Generator, size: int) -> torch.Tensor:
    return torch.rand(size, size, generator=g) * 2 - 1


def _coords(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texel centre coordinates (v rows, u columns) in [0, 1)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return c.view(-1, 1).expand(size, size), c.view(1, -1).expand(size, size)


def _jittered(colour: tuple[float, float, float], amount: float, g: torch.Generator) -> torch.Tensor:
    """A colour varied per scene: mostly brightness, a little hue."""
    base = torch.tensor(colour, dtype=torch.float32)
    brightness = 1 + amount * (torch.rand(1, generator=g) * 2 - 1)
    hue = 1 + 0.4 * amount * (torch.rand(3, generator=g) * 2 - 1)
    return (base * brightness * hue).clamp(0, 1)


def _paint(colour: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Colour [3] modulated by a brightness map [T, T] -> [T, T, 3]."""
    return (light.unsqueeze(-1) * colour).clamp(0, 1)


def _paving(colour, g, size, tiles, grout, bond: bool, noise) -> torch.Tensor:
    """Square tiles (``bond=False``) or running-bond bricks: per-tile shade, dark joints, grain."""
    v, u = _coords(size)
    rows = v * tiles
    shift = (rows.floor() % 2) * 0.5 if bond else 0.0
    cols = u * tiles + shift
    tile_id = (rows.floor() * tiles + cols.floor() % tiles).long()
    shade = 1 + 0.5 * noise * (torch.rand(tiles * tiles, generator=g) * 2 - 1)[tile_id]
    edge = torch.minimum(torch.minimum(rows.frac(), 1 - rows.frac()), torch.minimum(cols.frac(), 1 - cols.frac()))
    joint = 1 - grout * (edge < 0.06).float()
    return _paint(colour, shade * joint * (1 + noise * _grain(g, size)))


def _facade(domain: AppearanceDomain, g: torch.Generator, size: int, jitter: float) -> torch.Tensor:
    """One facade bay: brick or render wall, a framed window with a sky-reflection gradient."""
    pick = int(torch.randint(len(domain.facade), (1,), generator=g))
    wall = _jittered(domain.facade[pick], jitter, g)
    v, u = _coords(size)
    light = 1 + domain.texture_noise * (_smooth_noise(g, 4, size) + 0.5 * _grain(g, size))
    if domain.brick_contrast > 0:  # 8 brick courses per storey, staggered joints
        rows = v * 8
        cols = u * 4 + (rows.floor() % 2) * 0.5
        mortar = (rows.frac() < 0.15) | (cols.frac() < 0.06)
        light = light * (1 - domain.brick_contrast * mortar.float())
    out = _paint(wall, light)
    ww, wh = domain.window_fraction
    ww = ww * (1 + 0.3 * jitter * float(torch.rand(1, generator=g) * 2 - 1))
    du, dv = (u - 0.5).abs(), (v - 0.5).abs()
    frame = (du < ww / 2 + 0.05) & (dv < wh / 2 + 0.05)
    glass = (du < ww / 2) & (dv < wh / 2)
    glass_colour = _jittered(domain.window, jitter, g)
    reflection = (0.8 + 0.4 * (1 - v)).unsqueeze(-1) * glass_colour
    out = torch.where(frame.unsqueeze(-1), torch.tensor(domain.window_frame), out)
    return torch.where(glass.unsqueeze(-1), reflection.clamp(0, 1), out)


def _obstacle(kind: ObstacleKind, colour: torch.Tensor, g, size: int, noise: float) -> torch.Tensor:
    """Side texture of an obstacle kind (row 0 = its top)."""
    v, u = _coords(size)
    light = 1 + noise * _grain(g, size)
    if kind == ObstacleKind.BENCH:  # wooden slats
        light = light * (1 - 0.45 * ((v * 5).frac() < 0.2).float())
    elif kind == ObstacleKind.BIN:  # vertical ribs, dark lid
        light = light * (1 - 0.25 * ((u * 8).frac() < 0.3).float()) * (1 - 0.5 * (v < 0.12).float())
    elif kind == ObstacleKind.BOX:  # cardboard with a tape band
        light = light * (1 + 0.35 * ((u - 0.5).abs() < 0.08).float())
    elif kind == ObstacleKind.SCOOTER:  # dark wheels and deck at the bottom
        light = light * (1 - 0.7 * (v > 0.8).float())
    elif kind == ObstacleKind.POLE:  # banded reflective strip
        light = light * (1 + 0.5 * ((v > 0.3) & (v < 0.36)).float())
    out = _paint(colour, light)
    if kind == ObstacleKind.PLANTER:  # plants overflowing the rim
        leaves = torch.tensor((0.18, 0.42, 0.14)) * (1 + 0.4 * _grain(g, size)).unsqueeze(-1)
        out = torch.where((v < 0.3).unsqueeze(-1), leaves.clamp(0, 1), out)
    return out


def make_scene_style(domain: AppearanceDomain, seed: int, size: int = TEXTURE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene's look in ``domain``: (atlas float [NUM_MATERIALS, T, T, 3], repeat [NUM_MATERIALS, 2]).

    ``repeat`` is the world size (u, v) in metres that one texture covers: ground textures hold 2x2
    paving tiles; facades one bay by one storey; obstacle sides are stretched over the whole object
    (repeat 0 marks "normalized coordinates").
    """
    g = _generator(domain, seed)
    jitter, noise = domain.style_jitter, domain.texture_noise
    atlas = torch.zeros(NUM_MATERIALS, size, size, 3)
    repeat = torch.zeros(NUM_MATERIALS, 2)
    for surface in Surface:
        key = surface.name.lower()
        colour = _jittered(domain.ground[key], jitter, g)
        tile = domain.ground_tile[key] * (1 + 0.5 * jitter * float(torch.rand(1, generator=g) * 2 - 1))
        if surface in (Surface.SIDEWALK, Surface.PLAZA):
            atlas[surface] = _paving(colour, g, size, 2 if surface == Surface.SIDEWALK else 4, domain.tile_grout, bond=surface == Surface.PLAZA, noise=noise)
            repeat[surface] = 2 * tile
        elif surface == Surface.CURB:
            atlas[surface] = _paving(colour, g, size, 1, domain.tile_grout, bond=False, noise=noise)
            repeat[surface] = tile
        else:  # asphalt, grass, concrete: blotchy large-scale variation plus grain
            blotch = 2.5 if surface == Surface.GRASS else 1.0
            atlas[surface] = _paint(colour, 1 + noise * (blotch * _smooth_noise(g, 4, size) + 2 * _grain(g, size)))
            repeat[surface] = tile
    atlas[MAT_FACADE] = _facade(domain, g, size, jitter)
    bay_w, storey = domain.facade_bay
    repeat[MAT_FACADE] = torch.tensor([bay_w, storey]) * (1 + 0.25 * jitter * (torch.rand(2, generator=g) * 2 - 1))
    for kind in ObstacleKind:
        colour = _jittered(domain.obstacle[kind.name.lower()], jitter, g)
        atlas[MAT_OBSTACLE + kind] = _obstacle(kind, colour, g, size, noise)
    atlas[MAT_LANE] = _paint(torch.tensor(domain.lane_mark), 1 + noise * _grain(g, size))
    repeat[MAT_LANE] = repeat[Surface.ROAD]
    return atlas, repeat


#: Added, times the part index, to a pedestrian's mixed seed before hashing, so its trousers, shirt
#: and skin draw unrelated palette entries (any large constant works; this one is a prime).
_PART_STRIDE = 7919


def _hash(x: torch.Tensor) -> torch.Tensor:
    """A cheap integer mix (splitmix-like, 31 bits) so neighbouring indices get unrelated colours."""
    x = (x * 0x9E3779B1 + 0x7F4A7C15) & 0x7FFFFFFF
    x = ((x >> 15) ^ x) * 0x2C1B3C6D & 0x7FFFFFFF
    return (x >> 12) ^ x


class StyleCache:
    """Per-(domain, seed) atlases, and the flat colour buffer of the last batch of seeds.

    The env re-renders the same B scenes every step and replaces only a few on reset, so the
    stacked buffer is rebuilt only when the seed vector changes, from per-seed atlases kept in an
    LRU of ``capacity`` scenes.
    """

    def __init__(self, domain: AppearanceDomain, device: torch.device, capacity: int = 1024) -> None:
        self.domain = domain
        self.device = device
        self.capacity = capacity
        self._scenes: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._batch_key: tuple[int, ...] | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        palettes = [torch.tensor(p, dtype=torch.float32) for p in (domain.trousers, domain.shirt, domain.skin)]
        self._palettes = [p.to(device) for p in palettes]

    def _scene(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seed in self._scenes:
            self._scenes.move_to_end(seed)
            return self._scenes[seed]
        style = make_scene_style(self.domain, seed)
        self._scenes[seed] = style
        if len(self._scenes) > self.capacity:
            self._scenes.popitem(last=False)
        return style

    def batch(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat texels float [3, B * NUM_MATERIALS * T * T], repeat [B, NUM_MATERIALS, 2]) on the device."""
        key = tuple(int(s) for s in seeds.tolist())
        if key != self._batch_key:
            styles = [self._scene(s) for s in key]
            atlas = torch.stack([a for a, _ in styles]).to(self.device)
            self._batch = (atlas.reshape(-1, 3).t().contiguous(), torch.stack([r for _, r in styles]).to(self.device))
            self._batch_key = key
        return self._batch

    def pedestrian_colours(self, seeds: torch.Tensor, count: int) -> torch.Tensor:
        """float [3, B * count * PED_PARTS]: trousers, shirt, skin colour of each pedestrian slot."""
        idx = torch.arange(count, device=seeds.device)
        mixed = _hash(_hash(seeds.view(-1, 1).long() & 0x7FFFFFFF) + idx)  # [B, P]
        parts = []
        for part, palette in enumerate(self._palettes):
            pick = _hash(mixed + part * _PART_STRIDE) % palette.shape[0]
            parts.append(palette[pick])  # [B, P, 3]
        return torch.stack(parts, 2).reshape(-1, 3).t().contiguous()
