"""Where a full ``NavEnv`` step goes: crowd, physics, rewards, render, frame stacking, the rest.

    python tools/profile_env_step.py --envs 64 --size 128x72 --task both --steps 60 --threads 2

Steps the environment with random actions (``step_and_maybe_reset``, as ``tools/bench_sim.py``
does) and times each part inside every step with ``time.perf_counter``, so the parts share the
same load of a shared machine. Each part's time is exclusive (a part called inside another is not
counted twice), and what no part covers is reported as ``step_other`` (``_step``'s own glue:
action clipping, contact tracking, arrival) and ``torchrl`` (TorchRL's step/reset plumbing).
Resets of finished episodes happen inside the loop and are their own part (their rendering
counts as render). Prints one line per part, median milliseconds per step, its share of the
median step and its mean (resets are rare: their median is 0), and, last, one JSON object.
The parts are found by wrapping the functions ``s2e.sim.env`` calls: nothing in the simulator is
changed for profiling, and everything is restored afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch

import s2e.sim.env as env_module
from s2e.scripts import frame_size
from s2e.sim.compiled import CompilePolicy
from s2e.sim.env import NavEnv, NavEnvConfig

#: Part of a step -> the names of the callables (in ``s2e.sim.env`` or on the env) it is made of.
PARTS = {
    "crowd": ("crowd_step",),
    "physics": ("integrate_unicycle", "footprint_clearance"),
    "rewards": ("route_arclength", "reward_terms", "total_reward"),
    "render": ("_render",),
    "stacking": ("FrameRing.stacked",),
    "observation": ("_observation",),
    "reset": ("_reset",),
    "step_other": ("_step",),
}


class ExclusiveTimer:
    """Accumulates exclusive seconds per part: a part's time excludes parts timed inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # per open part: [start, seconds spent in nested parts]

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, nested = self._stack.pop()
                total = time.perf_counter() - start
                self.seconds[part] = self.seconds.get(part, 0.0) + total - nested
                if self._stack:
                    self._stack[-1][1] += total

        return timed


_MISSING = object()


@contextmanager
def _patched(owner: object, name: str, value: Callable) -> Iterator[None]:
    """``owner.name = value`` while inside (on an env, an instance attribute that shadows the method)."""
    original = vars(owner).get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def profile(env: NavEnv, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of every part (and ``total``, ``torchrl``) over ``steps`` timed steps."""
    td = env.reset()
    for _ in range(warmup):
        td["action"] = env.action_spec.rand()
        _, td = env.step_and_maybe_reset(td)
    timer = ExclusiveTimer()
    per_step: dict[str, list[float]] = {part: [] for part in (*PARTS, "torchrl", "total")}
    with ExitStack() as stack:
        for part, names in PARTS.items():
            for name in names:
                if "." in name:  # Class.method of a class s2e.sim.env uses
                    cls, name = name.split(".")
                    owner = getattr(env_module, cls)
                else:
                    owner = env if hasattr(env, name) and not hasattr(env_module, name) else env_module
                stack.enter_context(_patched(owner, name, timer.wrap(part, getattr(owner, name))))
        for _ in range(steps):
            timer.seconds.clear()
            td["action"] = env.action_spec.rand()
            start = time.perf_counter()
            _, td = env.step_and_maybe_reset(td)
            total = time.perf_counter() - start
            for part in PARTS:
                per_step[part].append(timer.seconds.get(part, 0.0))
            per_step["torchrl"].append(total - sum(timer.seconds.values()))
            per_step["total"].append(total)
    return per_step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=64, help="batch size (environments)")
    parser.add_argument("--size", type=frame_size, default=(128, 72), help="WIDTHxHEIGHT of rendered frames")
    parser.add_argument("--task", default="both", help="NavEnv task")
    parser.add_argument("--robot", default="wheeled")
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="off", help="Raycaster compiled= (default off: this tool is about the parts around the renderer)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Profile the steps; prints the parts and returns the summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.envs < 1:
        parser.error("--steps and --envs must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # action_spec.rand draws from the global generator
    w, h = args.size
    env = NavEnv(NavEnvConfig(task=args.task, robot=args.robot, image_size=(h, w)), num_envs=args.envs, seed=args.seed)
    env.renderer.compiled = {"auto": None, "on": True, "off": False}[args.compile]
    per_step = profile(env, args.steps, args.warmup)
    median_ms = {part: 1e3 * statistics.median(values) for part, values in per_step.items()}
    mean_ms = {part: 1e3 * statistics.fmean(values) for part, values in per_step.items()}  # rare parts (resets) show here
    step_ms = median_ms.pop("total")
    for part, ms in median_ms.items():
        print(f"{part:12s} {ms:8.3f} ms/step  {ms / step_ms:6.1%}   (mean {mean_ms[part]:.3f})")
    outside = step_ms - median_ms["render"]
    compile_state = env.compile_policy.report()  # what ran, which may differ from what --compile asked for
    print(
        f"{'step':12s} {step_ms:8.3f} ms/step (median)   outside the renderer {outside:.3f} ms; "
        f"{args.envs / step_ms * 1e3:.0f} env steps/s; ran {CompilePolicy.describe(compile_state)}"
    )
    summary = {
        "envs": args.envs,
        "width": w,
        "height": h,
        "task": args.task,
        "robot": args.robot,
        "steps": args.steps,
        "threads": args.threads,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "compile": args.compile,
        "compile_state": compile_state,
        "step_ms": step_ms,
        "outside_render_ms": outside,
        "env_steps_per_s": args.envs / step_ms * 1e3,
        "parts_ms": median_ms,
        "parts_share": {part: ms / step_ms for part, ms in median_ms.items()},
        "parts_mean_ms": mean_ms,
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
