"""Splat renderer throughput: the CPU reference renderer, and gsplat when CUDA is present.

    python tools/bench_splat.py --gaussians 10000 50000 --size 128x72 --cameras 4 --threads 2

Scenes are the synthetic street (``s2e.splat.synthetic``) made denser to about 60 % of the target
count, plus semi-transparent clutter Gaussians (foliage-like, random sizes and opacities) inside
the street to reach it exactly, seen from cameras at robot height at random poses along the
street. Each figure is frames per wall second and per CPU second of this process (robust to other
tenants of a shared machine), over ``--repeats`` batched calls after one warm-up call. gsplat is
timed only on CUDA (its kernels compile on the first call, which is excluded). Prints one line per
measurement and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from s2e.splat.camera import level_viewmats, pinhole_intrinsics
from s2e.splat.gaussians import Gaussians, rgb_to_sh0
from s2e.splat.reference import rasterize
from s2e.splat.synthetic import synthetic_street

LENGTH, WIDTH, WALL = 30.0, 6.0, 3.0


def bench_scene(count: int, seed: int = 0) -> Gaussians:
    """A street of about 0.6 * count Gaussians plus clutter to exactly ``count``."""
    # The street holds about (2 * LENGTH * WALL + LENGTH * WIDTH + WIDTH * WALL) / spacing^2 Gaussians.
    area = 2 * LENGTH * WALL + LENGTH * WIDTH + WIDTH * WALL
    street = synthetic_street(LENGTH, WIDTH, WALL, spacing=math.sqrt(area / (0.6 * count)), seed=seed)
    street = street.subset(torch.arange(min(len(street), count)))
    extra = count - len(street)
    gen = torch.Generator().manual_seed(seed)
    low, high = torch.tensor([-LENGTH / 2, -WIDTH / 2, 0.0]), torch.tensor([LENGTH / 2, WIDTH / 2, WALL])
    clutter = Gaussians(
        means=low + (high - low) * torch.rand(extra, 3, generator=gen),
        quats=torch.randn(extra, 4, generator=gen),
        log_scales=-2.5 + 0.5 * torch.randn(extra, 3, generator=gen),
        opacity_logits=torch.randn(extra, generator=gen),
        sh=rgb_to_sh0(0.2 + 0.6 * torch.rand(extra, 3, generator=gen))[:, None],
    )
    return Gaussians.cat([street, clutter])


def cameras(count: int, width: int, height: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.stack([(torch.rand(count, generator=gen) - 0.5) * (LENGTH - 4), (torch.rand(count, generator=gen) - 0.5) * 2], -1)
    yaw = torch.where(torch.rand(count, generator=gen) < 0.5, 0.0, math.pi) + 0.3 * torch.randn(count, generator=gen)
    return level_viewmats(xy, yaw, torch.full((count,), 0.7)), pinhole_intrinsics(torch.full((count,), 90.0), width, height)


def timed(fn, repeats: int, cuda: bool = False) -> tuple[float, float]:
    """Wall and process-CPU seconds per call, after one untimed warm-up call."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--size", default="128x72", help="WIDTHxHEIGHT")
    parser.add_argument("--cameras", type=int, default=4, help="cameras per batched call (CPU reference)")
    parser.add_argument("--gpu-cameras", type=int, nargs="+", default=[4, 64], help="cameras per batched gsplat call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Time the renderers on every scene size; prints and returns the figures."""
    args = build_parser().parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    results: dict = {"size": [width, height], "threads": args.threads, "cameras": args.cameras, "reference": {}, "gsplat": {}}
    for count in args.gaussians:
        scene = bench_scene(count)
        views, intrinsics = cameras(args.cameras, width, height)
        wall, cpu = timed(lambda: rasterize(scene, views, intrinsics, width, height), args.repeats)
        fps = {"frames_per_s": round(args.cameras / wall, 2), "frames_per_cpu_s": round(args.cameras / max(cpu, 1e-9), 2)}
        results["reference"][str(count)] = fps
        print(f"reference  {count:>7} Gaussians  {width}x{height}  {args.cameras} cams: {fps['frames_per_s']} frames/s ({fps['frames_per_cpu_s']} per CPU s)")
    if torch.cuda.is_available():
        from s2e.splat.gsplat_backend import rasterize_gsplat

        results["device"] = torch.cuda.get_device_name()
        for count in args.gaussians:
            scene = bench_scene(count).to("cuda")
            for cams in args.gpu_cameras:
                views, intrinsics = (t.cuda() for t in cameras(cams, width, height))
                wall, _ = timed(lambda: rasterize_gsplat(scene, views, intrinsics, width, height), args.repeats * 5, cuda=True)
                results["gsplat"][f"{count}x{cams}"] = round(cams / wall, 1)
                print(f"gsplat     {count:>7} Gaussians  {width}x{height}  {cams} cams: {cams / wall:.1f} frames/s")
    else:
        results["gsplat"] = "skipped: no CUDA device"
        print("gsplat: skipped (no CUDA device)")
    results["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results))
    return results


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
