"""Where an environment's scenes come from, and what draws them: the two seams of ``NavEnv``.

``NavEnv`` simulates whatever ``World`` a scene source hands it at reset and shows it through
whatever frame renderer it is given. The defaults are procedural streets and the CPU raycaster;
benchmark suites replay fixed episodes through their own source, and splat scenes bring both a
source (their layout) and a renderer (Gaussian splatting), without the env knowing either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from s2e.sim.generator import SceneConfig, World, generate_scene_arrays, generate_world, stack_scenes
from s2e.sim.robots import RobotProfile
from s2e.sim.scene import SceneBatch
from s2e.sim.seeds import draw_scene_seeds, purpose_index

if TYPE_CHECKING:
    from s2e.sim.tasks import TaskSpec


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


class TaskMixScenes(ProceduralScenes):
    """Fresh procedural scenes whose task is drawn per scene from ``tasks`` (uniformly; repeat a
    task to weight it), so one batch of training envs holds several NavBench tasks at once.

    Every scene is padded to ``config``'s maximum counts (the task-free config), so scenes of any
    task can replace each other at a partial reset. ``last_tasks`` holds the task index of each
    scene of the latest ``sample``.
    """

    def __init__(self, config: SceneConfig, robot: RobotProfile, tasks: Sequence["TaskSpec"], purpose: str = "train") -> None:
        super().__init__(config, robot, purpose)
        if not tasks:
            raise ValueError("TaskMixScenes needs at least one task")
        self.tasks = tuple(tasks)
        self.task_configs = [task.apply(self.config).validate(robot) for task in self.tasks]
        self.last_tasks = np.zeros(0, np.int64)

    def sample(self, count: int, rng: np.random.Generator, device: torch.device) -> World:
        seeds = self.draw_seeds(count, rng)
        self.last_tasks = rng.integers(len(self.tasks), size=count)
        arrays = [generate_scene_arrays(int(seed), self.task_configs[t], self.robot) for seed, t in zip(seeds, self.last_tasks)]
        return stack_scenes(arrays, self.config, device)
