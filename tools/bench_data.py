"""Throughput of the training data pipeline against the pure-decode ceiling, measured in one run.

    python tools/bench_data.py --make-synthetic data/bench_shards          # once: write test shards
    python tools/bench_data.py --shards 'data/bench_shards/shard-{000000..000007}.tar' --workers 2

Pipeline: NavWindowLoader with W persistent DataLoader workers (tar -> decode -> cut in the
workers; shuffle -> batches of gathered windows in this process; one pass over the shards per
timed run). Ceiling: the same videos decoded sequentially at the same size by W pool processes
doing nothing else (the same shard-to-process split). Both get one untimed warm-up pass (process start-up is not throughput), then are timed
alternately ``--repeats`` times and the best time of each is compared: on a shared machine the
best run is the least disturbed one. The last printed line is one JSON object with
both figures and ``ratio`` = pipeline decoded-frames/s / ceiling decoded-frames/s.

Each run also records the CPU seconds its processes used (this process plus its worker
processes, from /proc): ``cpu_ratio`` = ceiling CPU / pipeline CPU over all runs is the same
comparison as ``ratio`` with the other users of a shared machine taken out; on an idle machine
with every worker busy the two agree.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from datamodules.episode import VIDEO_MEMBER, Trajectory  # noqa: E402
from datamodules.pipeline import NavWindowLoader, expand_shards, split_by_worker  # noqa: E402
from datamodules.shard_writer import EpisodeShardWriter  # noqa: E402
from datamodules.video_decode import decode_video  # noqa: E402
from datamodules.windows import AugmentConfig, WindowConfig  # noqa: E402
from s2e.video_io import write_mp4  # noqa: E402


def make_synthetic_shards(out_dir: Path, episodes: int, seconds: float, fps: Fraction, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Episodes of a textured scene panning as the robot turns, one episode per shard.

    The frames are smooth noise with detail at several scales plus sensor noise, so H.264 has to
    spend bits the way it does on street video (a flat synthetic image decodes unrealistically fast).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    n = int(round(seconds * float(fps)))
    with EpisodeShardWriter(out_dir, prefix="shard", max_count=1) as writer:
        for e in range(episodes):
            texture = np.zeros((height, 3 * width, 3), np.float32)
            for cell in (64, 16, 4):  # octaves of blocky noise, upsampled
                coarse = rng.uniform(0, 255, (height // cell + 1, 3 * width // cell + 1, 3)).astype(np.float32)
                texture += np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:height, : 3 * width] / 3
            speed, turn = rng.uniform(0.6, 1.6), rng.uniform(-0.3, 0.3)
            t = np.arange(n) / float(fps)
            yaw = turn * t
            xy = np.stack([np.cumsum(speed * np.cos(yaw)) / float(fps), np.cumsum(speed * np.sin(yaw)) / float(fps)], -1)
            shift = (np.arange(n) * 2 + (yaw * width / 2)).astype(int) % (2 * width)

            def frames():
                for i in range(n):
                    noisy = texture[:, shift[i] : shift[i] + width] + rng.normal(0, 4, (height, width, 3))
                    yield np.clip(noisy, 0, 255).astype(np.uint8)

            buf = io.BytesIO()
            write_mp4(buf, frames(), fps, bframes=2, gop=int(float(fps)))
            writer.write(f"synthetic{e:04d}", buf.getvalue(), Trajectory(t=t, xy=xy, yaw=yaw), {"fps": float(fps), "source": "synthetic"})
    return writer.shard_paths


def _decode_shards(job: tuple[list[str], tuple[int, int]]) -> int:
    """Ceiling worker: read the mp4 members of its shards and decode them, nothing else."""
    urls, size = job
    frames = 0
    for url in urls:
        with tarfile.open(url, "r|*") as tar:
            for info in tar:
                if info.isreg() and info.name.endswith("." + VIDEO_MEMBER):
                    frames += len(decode_video(tar.extractfile(info).read(), size))
    return frames


def process_tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its live child processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name field may contain spaces
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def run_ceiling(pool, urls: list[str], workers: int, size: tuple[int, int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, frames) of one pure-decode pass."""
    start, cpu = time.perf_counter(), process_tree_cpu_seconds()
    frames = sum(pool.map(_decode_shards, [(split_by_worker(urls, w, workers), size) for w in range(workers)]))
    return time.perf_counter() - start, process_tree_cpu_seconds() - cpu, frames


def run_pipeline(loader: NavWindowLoader) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, windows) of one pipeline pass."""
    start, cpu = time.perf_counter(), process_tree_cpu_seconds()
    samples = sum(len(batch["key"]) for batch in loader)
    return time.perf_counter() - start, process_tree_cpu_seconds() - cpu, samples


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", help="shard paths or brace patterns")
    parser.add_argument("--make-synthetic", type=Path, metavar="DIR", help="write synthetic shards to DIR (and bench them if --shards is not given)")
    parser.add_argument("--synthetic-episodes", type=int, default=8)
    parser.add_argument("--synthetic-seconds", type=float, default=10.0)
    parser.add_argument("--synthetic-size", default="360x640", help="HxW of the synthetic videos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="224x224", help="HxW frames are decoded to")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window-stride", type=int, default=1)
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each; the best is reported")
    parser.add_argument(
        "--augment", action="store_true", help="the training augmentation of experiments/pretrain.yaml (hflip 0.5, colour jitter 0.2)"
    )
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))

    if args.make_synthetic is not None:
        synth_size = tuple(int(v) for v in args.synthetic_size.split("x"))
        start = time.perf_counter()
        paths = make_synthetic_shards(args.make_synthetic, args.synthetic_episodes, args.synthetic_seconds, Fraction(30000, 1001), synth_size)
        print(f"wrote {len(paths)} synthetic shards to {args.make_synthetic} in {time.perf_counter() - start:.1f}s")
        if not args.shards:
            args.shards = [str(p) for p in paths]
    if not args.shards:
        parser.error("give --shards (or --make-synthetic DIR)")
    urls = expand_shards(args.shards)
    if args.workers < 1:
        parser.error("--workers must be >= 1 (the ceiling needs as many decoding processes)")

    augment = AugmentConfig(hflip=0.5, brightness=0.2, contrast=0.2, saturation=0.2) if args.augment else AugmentConfig()
    loader = NavWindowLoader(
        urls,
        WindowConfig(window_stride=args.window_stride, augment=augment),
        size,
        args.batch_size,
        shuffle_buffer=args.shuffle_buffer,
        num_workers=args.workers,
        persistent_workers=True,
    )
    ceiling_times, pipeline_times, ceiling_cpu, pipeline_cpu = [], [], [], []
    frames = samples = 0
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        # untimed warm-up of both: process start-up and first imports are not throughput
        run_ceiling(pool, urls, args.workers, size)
        run_pipeline(loader)
        for _ in range(args.repeats):
            seconds, cpu, frames = run_ceiling(pool, urls, args.workers, size)
            ceiling_times.append(seconds)
            ceiling_cpu.append(cpu)
            print(f"ceiling : {frames} frames in {seconds:.2f}s = {frames / seconds:.1f} frames/s ({cpu:.2f} CPU s)")
            seconds, cpu, samples = run_pipeline(loader)
            pipeline_times.append(seconds)
            pipeline_cpu.append(cpu)
            print(f"pipeline: {samples} windows ({frames} frames decoded) in {seconds:.2f}s = {frames / seconds:.1f} frames/s ({cpu:.2f} CPU s)")
    best_ceiling, best_pipeline = min(ceiling_times), min(pipeline_times)
    result = {
        "workers": args.workers,
        "shards": len(urls),
        "decode_size": list(size),
        "window_stride": args.window_stride,
        "augment": args.augment,
        "batch_size": args.batch_size,
        "frames_decoded": frames,
        "windows": samples,
        "pipeline_samples_per_s": round(samples / best_pipeline, 1),
        "pipeline_frames_per_s": round(frames / best_pipeline, 1),
        "ceiling_frames_per_s": round(frames / best_ceiling, 1),
        "ratio": round(best_ceiling / best_pipeline, 3),
        "cpu_ratio": round(sum(ceiling_cpu) / sum(pipeline_cpu), 3),
        "pipeline_s": [round(t, 3) for t in pipeline_times],
        "ceiling_s": [round(t, 3) for t in ceiling_times],
        "pipeline_cpu_s": [round(t, 3) for t in pipeline_cpu],
        "ceiling_cpu_s": [round(t, 3) for t in ceiling_cpu],
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
