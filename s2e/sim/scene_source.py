"""Where an environment's scenes come from, and what draws them: the two seams of ``NavEnv``.

``NavEnv`` simulates whatever ``World`` a scene source hands it at reset and shows it through
whatever frame renderer it is given. The defaults are procedural streets and the CPU raycaster;
benchmark suites replay fixed episodes through their own source, and splat scenes bring both a
source (their layout) and a renderer (Gaussian splatting), without the env knowing either.
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from s2e.sim.generator import SceneConfig, World, generate_world
from s2e.sim.robots import RobotProfile
from s2e.sim.scene import SceneBatch
from s2e.sim.seeds import draw_scene_seeds, purpose_index


class SceneSource(Protocol):
    """Hands out ``count`` new scenes at a (partial) reset, as one padded ``World`` batch."""

    def sample(self, count: int, rng: np.random.Generator, device: torch.device) -> World: ...


class FrameRenderer(Protocol):
    """Draws the robots' camera views of a scene batch (the contract ``Raycaster.render`` defines)."""

    def render(
        self,
        scene: SceneBatch,
        camera_xy: Tensor,
        camera_yaw: Tensor,
        camera_height: Tensor | float,
        hfov_deg: Tensor | float,
        with_depth: bool = False,
        noise_generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Optional[Tensor]]: ...


class ProceduralScenes:
    """Fresh procedural scenes, each from a scene seed drawn from the env's generator (the default source).

    Scene seeds come from the ``purpose`` stream of ``s2e.sim.seeds`` ("train" by default), which
    is disjoint from the "benchmark" seeds NavBench suites use: no env seed trains on a suite scene.
    """

    def __init__(self, config: SceneConfig, robot: RobotProfile, purpose: str = "train") -> None:
        purpose_index(purpose)  # fail early on an unknown purpose
        self.config = config.validate(robot)
        self.robot = robot
        self.purpose = purpose

    def draw_seeds(self, count: int, rng: np.random.Generator) -> list[int]:
        """The scene seeds ``sample`` generates for the same ``count`` and generator state."""
        return draw_scene_seeds(self.purpose, rng, count)

    def sample(self, count: int, rng: np.random.Generator, device: torch.device) -> World:
        return generate_world(self.draw_seeds(count, rng), self.config, self.robot, device=device)
