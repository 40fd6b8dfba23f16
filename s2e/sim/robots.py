"""Robot profiles: the kinematic limits and camera placement of each embodiment.

The policy sees the world through the camera and acts through (v, omega) commands; a quadruped
looks at the street from lower down, moves slower and turns differently from a wheeled base, and
those differences are part of the embodiment gap the paper evaluates. Keeping them in one frozen
record means the env's action spec, the physics, the expert and the demo metadata all agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from s2e.config_parsing import lookup


@dataclass(frozen=True)
class RobotProfile:
    """Kinematic unicycle limits, footprint and forward camera of one embodiment.

    Attributes:
        name: embodiment name written into demo metadata ("wheeled", "quadruped").
        max_speed: forward speed limit, m/s.
        min_speed: lowest commanded speed, m/s (negative allows reversing).
        max_omega: yaw-rate limit, rad/s (symmetric).
        radius: footprint disc radius, metres (collision and clearance).
        camera_height: camera height above the ground, metres.
        hfov_deg: horizontal field of view of the forward camera, degrees.
        camera_forward: camera offset ahead of the footprint centre, metres.
    """

    name: str
    max_speed: float
    min_speed: float
    max_omega: float
    radius: float
    camera_height: float
    hfov_deg: float
    camera_forward: float = 0.0

    def __post_init__(self) -> None:
        if not (self.max_speed > 0 and self.max_omega > 0 and self.radius > 0 and self.camera_height > 0):
            raise ValueError(f"robot {self.name!r}: speed, turn limit, radius and camera height must be positive")
        if self.min_speed > self.max_speed:
            raise ValueError(f"robot {self.name!r}: min_speed {self.min_speed} exceeds max_speed {self.max_speed}")
        if not 10.0 <= self.hfov_deg < 180.0:
            raise ValueError(f"robot {self.name!r}: hfov_deg must be in [10, 180), got {self.hfov_deg}")

    def focal_length_px(self, width: int) -> float:
        """Pinhole focal length in pixels for an image ``width`` pixels wide."""
        return 0.5 * width / math.tan(math.radians(self.hfov_deg) / 2)

    def intrinsics(self, width: int, height: int) -> dict[str, float]:
        """Pinhole intrinsics (square pixels, centred principal point) for demo metadata."""
        f = self.focal_length_px(width)
        return {"fx": f, "fy": f, "cx": width / 2, "cy": height / 2, "width": width, "height": height}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Built-in embodiments. The quadruped's camera sits lower, it is slower and turns more gently.
ROBOTS: dict[str, RobotProfile] = {
    "wheeled": RobotProfile(name="wheeled", max_speed=1.5, min_speed=0.0, max_omega=1.5, radius=0.3, camera_height=0.7, hfov_deg=90.0, camera_forward=0.2),
    "quadruped": RobotProfile(
        name="quadruped", max_speed=1.0, min_speed=-0.3, max_omega=1.0, radius=0.35, camera_height=0.45, hfov_deg=80.0, camera_forward=0.3
    ),
}


def get_robot(robot: str | RobotProfile) -> RobotProfile:
    """Look a profile up by name (a profile passes through); unknown names list the known ones."""
    return lookup(robot, ROBOTS, "robot")
