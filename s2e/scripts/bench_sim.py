"""Simulator throughput: full NavEnv steps/s and rendered frames/s, against a crude raycaster baseline.

    python tools/bench_sim.py --envs 1 16 64 --sizes 128x72 96x96 --threads 2

For every (envs, size): ``render`` times ``Raycaster.render`` alone on generator-made scenes seen
from moving poses; ``baseline`` times a deliberately crude column raycaster (flat colours, sampled
march, no objects) on the same scenes, the reference written here so that figures from a busy
machine stay comparable as the ratio ``render / baseline`` measured in the same run; ``env`` times
FULL ``NavEnv`` steps (random actions: crowd, physics, rewards, rendering, frame stacking, partial
resets), reported as env steps/s (one per environment; each renders one frame). Every figure is
given per wall second and per CPU second of this process (robust to other tenants of the machine).
``--compile`` picks the renderer's ``torch.compile`` use, which the env's crowd step follows
(default ``auto``: as ``NavEnv`` gets it, i.e. large batches compile only after
``COMPILE_AFTER_EAGER_S`` of eager rendering in the process, which a short benchmark may or may
not reach; ``on``/``off`` for a definite answer); the first
call's seconds, which include compiling, are reported apart and are not in the rates. What ran is
reported, not what was asked for: every line and row says whether that measurement's stages ran
compiled, eagerly or partly, naming any stage whose compilation failed (``CompilePolicy.report``),
and the JSON's ``compile_state`` holds the whole run's per-stage calls and failures. Prints one
line per measurement and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from s2e.scripts import frame_size
from s2e.sim.compiled import PROCESS_POLICY, CompilePolicy
from s2e.sim.env import NavEnv, NavEnvConfig
from s2e.sim.generator import SceneConfig, generate_world
from s2e.sim.render import Raycaster
from s2e.sim.robots import get_robot
from s2e.sim.scene import SceneBatch, Surface


class CrudeColumnRaycaster:
    """The reference: one sampled march per column, then flat wall/floor/sky colours per pixel.

    No textures, objects, pedestrians, lighting or camera model beyond the pinhole: the cheapest
    picture a batched column raycaster can make, so ``Raycaster``'s cost is read relative to it.
    """

    def __init__(self, width: int, height: int, max_distance: float) -> None:
        self.width, self.height, self.max_distance = width, height, max_distance
        self.palette = torch.tensor([[135, 180, 230], [150, 150, 150], [110, 100, 95]], dtype=torch.uint8)  # sky, floor, wall

    def render(self, scene: SceneBatch, cam: torch.Tensor, yaw: torch.Tensor, cam_h: float, hfov_deg: float) -> torch.Tensor:
        b, (gh, gw), res = scene.batch_size, scene.surface.shape[1:], scene.resolution
        focal = 0.5 * self.width / torch.tan(torch.deg2rad(torch.tensor(hfov_deg)) / 2)
        angle = yaw.view(b, 1) + torch.atan((0.5 * self.width - torch.arange(self.width) - 0.5) / focal)
        steps = torch.arange(1, int(self.max_distance / res) + 1, dtype=torch.float32) * res  # [S] metres
        gx = ((cam[:, 0].view(b, 1, 1) + steps * torch.cos(angle).unsqueeze(-1) - scene.origin[:, 0].view(b, 1, 1)) / res).long()
        gy = ((cam[:, 1].view(b, 1, 1) + steps * torch.sin(angle).unsqueeze(-1) - scene.origin[:, 1].view(b, 1, 1)) / res).long()
        inside = (gx >= 0) & (gx < gw) & (gy >= 0) & (gy < gh)
        cell = torch.arange(b).view(b, 1, 1) * (gh * gw) + gy.clamp(0, gh - 1) * gw + gx.clamp(0, gw - 1)
        solid = inside & (scene.surface.reshape(-1)[cell] == int(Surface.BUILDING))
        first = torch.where(solid.any(-1), solid.float().argmax(-1), steps.numel() - 1)
        dist = (steps[first] * torch.cos(angle - yaw.view(b, 1))).view(b, 1, self.width)  # z-depth
        half = focal * cam_h / dist  # wall foot, pixels below the horizon
        row = torch.arange(self.height).view(1, -1, 1) + 0.5 - 0.5 * self.height
        top = focal * (scene.height.reshape(-1)[cell.gather(-1, first.unsqueeze(-1))].view(b, 1, self.width) - cam_h) / dist
        label = torch.where(row > half, 1, torch.where(-row <= top, 2, 0))
        return self.palette[label].permute(0, 3, 1, 2)


def _scenes(envs: int, robot_name: str, seed: int) -> tuple[SceneBatch, torch.Tensor, torch.Tensor]:
    robot = get_robot(robot_name)
    scene = generate_world(list(range(seed, seed + envs)), SceneConfig(), robot).scene
    start, ahead = scene.route[:, 0], scene.route[:, 1]
    return scene, start, torch.atan2(ahead[:, 1] - start[:, 1], ahead[:, 0] - start[:, 0])


def _time(fns, repeats: int, min_seconds: float) -> tuple[list[tuple[float, float]], list[float]]:
    """(wall seconds, process CPU seconds) per call of each function, calls interleaved, and the
    wall seconds of each function's first (warm-up) call, which includes any compilation.

    One warm-up call each, then rounds of one call per function until ``repeats`` rounds and
    ``min_seconds`` have passed: interleaving exposes every function to the same load of a shared
    machine, so their ratio stays meaningful. CPU seconds are reported too because wall time on a
    shared machine partly measures the other tenants (CPU time sums this process's threads).
    """
    first = []
    for fn in fns:
        w0 = time.perf_counter()
        fn(0)
        first.append(time.perf_counter() - w0)
    wall, cpu = [0.0] * len(fns), [0.0] * len(fns)
    count, start = 0, time.perf_counter()
    while count < repeats or time.perf_counter() - start < min_seconds:
        count += 1
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            fn(count)
            wall[i] += time.perf_counter() - w0
            cpu[i] += time.process_time() - c0
    return [(w / count, c / count) for w, c in zip(wall, cpu)], first


def bench_render(envs: int, size: tuple[int, int], args: argparse.Namespace) -> dict[str, float]:
    (w, h), robot = size, get_robot(args.robot)
    scene, start, yaw = _scenes(envs, args.robot, args.seed)
    caster = Raycaster(w, h, domain=args.domain, compiled=args.compiled)
    crude = CrudeColumnRaycaster(w, h, caster.max_distance)
    gen = torch.Generator().manual_seed(args.seed)
    forward = torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)

    def pose(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # walk along the first route leg, turning a little
        return start + (0.05 * (i % 40)) * forward, yaw + 0.02 * (i % 40)

    def ours(i: int) -> None:
        caster.render(scene, *pose(i), robot.camera_height, robot.hfov_deg, with_depth=args.depth, noise_generator=gen)

    def reference(i: int) -> None:
        crude.render(scene, *pose(i), robot.camera_height, robot.hfov_deg)

    [(t_ours, cpu_ours), (t_ref, cpu_ref)], (first, _) = _time([ours, reference], args.repeats, args.min_seconds)
    return {
        "render_first_call_s": first,
        "render_fps": envs / t_ours,
        "baseline_fps": envs / t_ref,
        "ratio": t_ref / t_ours,
        "render_frames_per_cpu_s": envs / cpu_ours,
        "baseline_frames_per_cpu_s": envs / cpu_ref,
        "cpu_ratio": cpu_ref / cpu_ours,
    }


def bench_env(envs: int, size: tuple[int, int], args: argparse.Namespace) -> dict[str, float]:
    w, h = size
    env = NavEnv(NavEnvConfig(task=args.task, robot=args.robot, image_size=(h, w), domain=args.domain, with_depth=args.depth), num_envs=envs, seed=args.seed)
    env.renderer.compiled = args.compiled
    td = env.reset()
    state = {"td": td}

    def step(_: int) -> None:
        td = state["td"]
        td["action"] = env.action_spec.rand()
        _, state["td"] = env.step_and_maybe_reset(td)

    [(t, cpu)], _ = _time([step], args.repeats, args.min_seconds)
    return {"env_steps_per_s": envs / t, "env_steps_per_cpu_s": envs / cpu}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 16, 64], help="batch sizes (environments)")
    parser.add_argument("--sizes", type=frame_size, nargs="+", default=[(128, 72), (96, 96)], help="WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--domain", default="sim", help="appearance domain")
    parser.add_argument("--robot", default="wheeled")
    parser.add_argument("--task", default="both", help="NavEnv task")
    parser.add_argument("--depth", action="store_true", help="also produce depth images")
    parser.add_argument("--repeats", type=int, default=5, help="minimum timed calls per measurement")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds per measurement")
    parser.add_argument("--no-env", action="store_true", help="renderer only (skip full env steps)")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="Raycaster compiled= (auto: large batches compile after COMPILE_AFTER_EAGER_S eager seconds)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Measure every (envs, size); prints a line per measurement and the JSON, and returns the summary."""
    args = build_parser().parse_args(argv)
    args.compiled = {"auto": None, "on": True, "off": False}[args.compile]
    torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        for envs in args.envs:
            before = PROCESS_POLICY.report()  # the renderers and envs below run their stages through it
            row = {"envs": envs, "width": size[0], "height": size[1], **bench_render(envs, size, args)}
            if not args.no_env:
                row.update(bench_env(envs, size, args))
            row["compile_state"] = CompilePolicy.describe(PROCESS_POLICY.report(since=before))
            results.append(row)
            env_part = "" if args.no_env else (f"  | full env steps {row['env_steps_per_s']:7.0f}/s ({row['env_steps_per_cpu_s']:7.0f} per CPU-s)")
            print(
                f"{size[0]}x{size[1]} envs={envs:3d}  render {row['render_fps']:7.0f} frames/s "
                f"({row['render_frames_per_cpu_s']:7.0f} per CPU-s)  crude baseline {row['baseline_fps']:7.0f} frames/s "
                f"({row['baseline_frames_per_cpu_s']:7.0f} per CPU-s)  ratio {row['ratio']:.2f} (CPU {row['cpu_ratio']:.2f}), "
                f"first call {row['render_first_call_s']:.1f} s"
                f"{env_part}  | ran {row['compile_state']}",
                flush=True,
            )
    summary = {
        "threads": args.threads,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "compile": args.compile,
        "compile_state": PROCESS_POLICY.report(),
        "domain": args.domain,
        "robot": args.robot,
        "task": args.task,
        "results": results,
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
