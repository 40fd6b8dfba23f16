"""Appearance domains: named looks (textures, colours, lighting, camera response) of the raycaster.

The S2E paper's sim-to-real and forgetting effects come from the policy seeing one look in its demo
videos and another in RL. Here the demo "recordings" are rendered in the ``"recorded"`` domain and RL
trains in ``"sim"``; both draw the same scene geometry, so any gap between them is purely visual and
can be measured by evaluating one policy in several domains. Per-scene variety inside a domain comes
from ``SceneBatch.style_seed`` (see ``s2e.sim.textures``): colour jitter, tile sizes, window layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from s2e.config_parsing import lookup

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class AppearanceDomain:
    """Everything that decides how a scene looks, but nothing about where things are.

    Colours are linear RGB in [0, 1]. Lengths are metres.

    Attributes:
        name: the domain's registry name.
        ground: base colour per ground class, keyed by ``Surface`` name in lower case.
        ground_tile: size of one texture repeat per ground class (paving tile, asphalt patch...).
        tile_grout: how much darker the joints between paving tiles are (0 = no joints).
        texture_noise: amplitude of the grain noise added to every texture.
        lane_mark: colour of the road's painted lane marks.
        lane_offset: distance of the lane mark from the road edge (curb side).
        facade: candidate facade colours; each scene picks one from its style seed.
        window: window glass colour; ``window_frame``: colour of the frame around it.
        window_fraction: (width, height) fraction of one facade bay taken by its window.
        facade_bay: (width, storey height) of one repeat of the facade texture.
        brick_contrast: darkness of mortar lines (0 = smooth render, no bricks).
        obstacle: base colour per ``ObstacleKind`` name in lower case.
        shirt / trousers / skin: pedestrian palettes; each pedestrian picks by scene seed and index.
        sky_top / sky_horizon: sky gradient from the zenith-ish top of the image to the horizon.
        sun_azimuth_deg / sun_elevation_deg: sun direction in the world frame (CCW from +x).
        sun_intensity / ambient: Lambert lighting ``ambient + sun_intensity * max(0, n . sun)``.
        fog_colour / fog_distance: exponential distance fog, ``exp(-depth / fog_distance)``.
        exposure: overall gain applied before clipping.
        colour_cast: per-channel gain (white balance of the camera).
        gamma: display gamma applied after exposure (1 = none).
        noise_std: sensor noise standard deviation in 8-bit levels.
        blur_sigma: Gaussian blur sigma in pixels (0 = sharp).
        style_jitter: per-scene random colour variation (fraction of each colour).
    """

    name: str
    ground: dict[str, RGB]
    ground_tile: dict[str, float]
    tile_grout: float
    texture_noise: float
    lane_mark: RGB
    lane_offset: float
    facade: tuple[RGB, ...]
    window: RGB
    window_frame: RGB
    window_fraction: tuple[float, float]
    facade_bay: tuple[float, float]
    brick_contrast: float
    obstacle: dict[str, RGB]
    shirt: tuple[RGB, ...]
    trousers: tuple[RGB, ...]
    skin: tuple[RGB, ...]
    sky_top: RGB
    sky_horizon: RGB
    sun_azimuth_deg: float
    sun_elevation_deg: float
    sun_intensity: float
    ambient: float
    fog_colour: RGB
    fog_distance: float
    exposure: float = 1.0
    colour_cast: RGB = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    noise_std: float = 0.0
    blur_sigma: float = 0.0
    style_jitter: float = 0.1

    def __post_init__(self) -> None:
        from s2e.sim.scene import ObstacleKind, Surface  # local: scene imports nothing from here

        missing = [s.name.lower() for s in Surface if s.name.lower() not in self.ground or s.name.lower() not in self.ground_tile]
        missing += [k.name.lower() for k in ObstacleKind if k.name.lower() not in self.obstacle]
        if missing:
            raise ValueError(f"appearance domain {self.name!r} lacks colours/tiles for: {missing}")
        if not (self.facade and self.shirt and self.trousers and self.skin):
            raise ValueError(f"appearance domain {self.name!r} needs at least one facade, shirt, trousers and skin colour")
        if self.fog_distance <= 0 or self.exposure <= 0 or self.gamma <= 0:
            raise ValueError(f"appearance domain {self.name!r}: fog_distance, exposure and gamma must be positive")
        if self.noise_std < 0 or self.blur_sigma < 0 or not 0 <= self.style_jitter < 1:
            raise ValueError(f"appearance domain {self.name!r}: noise_std, blur_sigma >= 0 and style_jitter in [0, 1) required")

    @property
    def sun_direction(self) -> tuple[float, float, float]:
        """Unit vector towards the sun (x, y, z) in the world frame."""
        az, el = math.radians(self.sun_azimuth_deg), math.radians(self.sun_elevation_deg)
        return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))


_OBSTACLES_WARM = {
    "bench": (0.45, 0.30, 0.18),
    "pole": (0.35, 0.36, 0.38),
    "bin": (0.20, 0.35, 0.22),
    "box": (0.62, 0.48, 0.30),
    "scooter": (0.10, 0.55, 0.45),
    "planter": (0.55, 0.52, 0.48),
}

#: "recorded": the stand-in for real street video — warm sunlight, muted brick and concrete, paving
#: joints, grainy camera with slight blur and a warm white balance.
RECORDED = AppearanceDomain(
    name="recorded",
    ground={
        "sidewalk": (0.55, 0.53, 0.50),
        "road": (0.22, 0.22, 0.23),
        "curb": (0.68, 0.66, 0.62),
        "grass": (0.25, 0.40, 0.16),
        "building": (0.40, 0.38, 0.36),
        "plaza": (0.62, 0.55, 0.45),
    },
    ground_tile={"sidewalk": 0.6, "road": 2.0, "curb": 1.0, "grass": 1.5, "building": 1.0, "plaza": 0.8},
    tile_grout=0.35,
    texture_noise=0.10,
    lane_mark=(0.85, 0.82, 0.70),
    lane_offset=3.0,
    facade=((0.55, 0.32, 0.24), (0.62, 0.58, 0.50), (0.45, 0.42, 0.40), (0.70, 0.62, 0.48), (0.50, 0.38, 0.30)),
    window=(0.18, 0.24, 0.30),
    window_frame=(0.80, 0.78, 0.74),
    window_fraction=(0.45, 0.50),
    facade_bay=(3.2, 3.2),
    brick_contrast=0.25,
    obstacle=_OBSTACLES_WARM,
    shirt=((0.15, 0.20, 0.45), (0.60, 0.12, 0.12), (0.85, 0.85, 0.82), (0.12, 0.12, 0.12), (0.35, 0.50, 0.30), (0.75, 0.60, 0.25)),
    trousers=((0.10, 0.12, 0.25), (0.15, 0.15, 0.15), (0.45, 0.40, 0.32), (0.30, 0.30, 0.32)),
    skin=((0.85, 0.65, 0.52), (0.60, 0.42, 0.30), (0.38, 0.26, 0.18), (0.95, 0.78, 0.66)),
    sky_top=(0.35, 0.55, 0.85),
    sky_horizon=(0.78, 0.84, 0.90),
    sun_azimuth_deg=35.0,
    sun_elevation_deg=40.0,
    sun_intensity=0.65,
    ambient=0.50,
    fog_colour=(0.75, 0.80, 0.86),
    fog_distance=60.0,
    exposure=1.05,
    colour_cast=(1.06, 1.0, 0.92),
    gamma=1.1,
    noise_std=4.0,
    blur_sigma=0.6,
    style_jitter=0.12,
)

#: "sim": the RL training look — flat saturated "game engine" colours, no paving joints, no bricks,
#: cool hard light from another direction, a clean noiseless camera.
SIM = AppearanceDomain(
    name="sim",
    ground={
        "sidewalk": (0.70, 0.70, 0.72),
        "road": (0.30, 0.30, 0.35),
        "curb": (0.85, 0.85, 0.85),
        "grass": (0.20, 0.62, 0.20),
        "building": (0.50, 0.50, 0.55),
        "plaza": (0.80, 0.75, 0.62),
    },
    ground_tile={"sidewalk": 1.0, "road": 4.0, "curb": 2.0, "grass": 2.0, "building": 1.0, "plaza": 1.5},
    tile_grout=0.12,
    texture_noise=0.03,
    lane_mark=(0.95, 0.90, 0.20),
    lane_offset=2.5,
    facade=((0.75, 0.75, 0.80), (0.55, 0.65, 0.80), (0.80, 0.70, 0.55), (0.60, 0.60, 0.62)),
    window=(0.30, 0.55, 0.75),
    window_frame=(0.30, 0.30, 0.32),
    window_fraction=(0.60, 0.55),
    facade_bay=(4.0, 3.5),
    brick_contrast=0.0,
    obstacle={
        "bench": (0.70, 0.20, 0.15),
        "pole": (0.85, 0.85, 0.20),
        "bin": (0.15, 0.30, 0.75),
        "box": (0.90, 0.55, 0.10),
        "scooter": (0.85, 0.10, 0.60),
        "planter": (0.40, 0.75, 0.40),
    },
    shirt=((0.90, 0.20, 0.20), (0.20, 0.70, 0.25), (0.20, 0.35, 0.90), (0.90, 0.80, 0.15), (0.70, 0.25, 0.80)),
    trousers=((0.20, 0.20, 0.60), (0.25, 0.25, 0.25), (0.55, 0.45, 0.30)),
    skin=((0.90, 0.72, 0.60), (0.65, 0.48, 0.35)),
    sky_top=(0.45, 0.70, 1.00),
    sky_horizon=(0.85, 0.93, 1.00),
    sun_azimuth_deg=-120.0,
    sun_elevation_deg=60.0,
    sun_intensity=0.45,
    ambient=0.65,
    fog_colour=(0.85, 0.92, 1.00),
    fog_distance=120.0,
    exposure=1.0,
    colour_cast=(0.96, 1.0, 1.06),
    gamma=1.0,
    noise_std=0.0,
    blur_sigma=0.0,
    style_jitter=0.06,
)

#: "overcast": the recorded look under a flat grey sky — soft light, short fog, heavier noise.
OVERCAST = replace(
    RECORDED,
    name="overcast",
    sky_top=(0.62, 0.64, 0.67),
    sky_horizon=(0.80, 0.80, 0.80),
    sun_intensity=0.15,
    ambient=0.80,
    fog_colour=(0.78, 0.78, 0.79),
    fog_distance=30.0,
    exposure=0.95,
    colour_cast=(0.98, 1.0, 1.03),
    noise_std=6.0,
)

#: "dusk": low orange sun, dark ambient light, orange cast, strong noise and blur.
DUSK = replace(
    RECORDED,
    name="dusk",
    sky_top=(0.20, 0.22, 0.45),
    sky_horizon=(0.95, 0.55, 0.30),
    sun_azimuth_deg=200.0,
    sun_elevation_deg=8.0,
    sun_intensity=0.70,
    ambient=0.28,
    fog_colour=(0.55, 0.40, 0.38),
    fog_distance=45.0,
    exposure=1.15,
    colour_cast=(1.15, 0.95, 0.80),
    noise_std=8.0,
    blur_sigma=0.9,
)

DOMAINS: dict[str, AppearanceDomain] = {d.name: d for d in (RECORDED, SIM, OVERCAST, DUSK)}


def get_domain(name: str | AppearanceDomain) -> AppearanceDomain:
    """The registered domain called ``name`` (an ``AppearanceDomain`` passes through unchanged)."""
    return lookup(name, DOMAINS, "appearance domain")
