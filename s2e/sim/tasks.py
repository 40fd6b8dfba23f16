"""The four NavBench tasks (empty, obstacle, pedestrian, both) as switches on scene generation.

A task only decides which dynamic and static distractors a scene gets; layouts, routes and robots
stay the same, so success rates across tasks isolate the effect of obstacles and crowds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from s2e.config_parsing import lookup

if TYPE_CHECKING:
    from s2e.sim.generator import SceneConfig


@dataclass(frozen=True)
class TaskSpec:
    """Which distractors a task's scenes contain."""

    name: str
    obstacles: bool
    pedestrians: bool

    def apply(self, config: "SceneConfig") -> "SceneConfig":
        """The scene config with the counts this task excludes set to zero."""
        out = config
        if not self.obstacles:
            out = replace(out, num_obstacles=(0, 0))
        if not self.pedestrians:
            out = replace(out, num_pedestrians=(0, 0))
        return out


TASKS: dict[str, TaskSpec] = {
    "empty": TaskSpec("empty", obstacles=False, pedestrians=False),
    "obstacle": TaskSpec("obstacle", obstacles=True, pedestrians=False),
    "pedestrian": TaskSpec("pedestrian", obstacles=False, pedestrians=True),
    "both": TaskSpec("both", obstacles=True, pedestrians=True),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up by name; unknown names list the known ones."""
    return lookup(task, TASKS, "task")


def get_tasks(task: str | TaskSpec | Sequence[str | TaskSpec]) -> tuple[TaskSpec, ...]:
    """One task or a mix of them, as a tuple of specs.

    A mix (a list of names) gives every new scene a task drawn uniformly from the list, so a name
    listed twice is drawn twice as often. Why: RL on one task specialises the policy to it and
    loses on tasks it never saw; a training mix covers what NavBench asks for.
    """
    if isinstance(task, (str, TaskSpec)):
        return (get_task(task),)
    tasks = tuple(get_task(t) for t in task)
    if not tasks:
        raise ValueError("a task mix needs at least one task name")
    return tasks
