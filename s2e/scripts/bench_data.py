"""Throughput of the training data pipeline against the pure-decode ceiling, measured in one run.

    python tools/bench_data.py --make-synthetic data/bench_shards          # once: write test shards
    python tools/bench_data.py --shards 'data/bench_shards/shard-{000000..000007}.tar'
    python tools/bench_data.py --shards SHARD --backend decord pyav torchcodec   # backends side by side

Settings: the data section of ``--config`` (default ``experiments/pretrain.yaml``: decode size,
batch size, workers, shuffle buffer, how windows and goals are cut, augmentation, video backend),
so the default run measures the pipeline as training ships it; flags override single settings, and
``--config none`` starts from the loader's plain defaults (224x224, no augmentation).

Pipeline: NavWindowLoader with W persistent DataLoader workers (tar -> decode -> cut in the
workers; shuffle -> batches in this process, whose gather mirrors and colour-jitters each frame as it
copies it; one pass over the shards per timed run). ``--jitter-on workers`` jitters each window's
clip in the workers instead; ``--jitter-on device`` moves each batch to ``--device`` and jitters it
there, inside the timed loop (on a CPU-only machine that is this process's CPU time). Ceiling:
the same episodes, read by the same tar reader and dealt to W pool processes exactly as to the
workers (shards, or a shard's episodes when shards are fewer than workers), decoded at the same
size and doing nothing else. Both get one untimed warm-up pass (process start-up is not
throughput), then are timed alternately ``--repeats`` times per backend and the best time of each
is compared: on a shared machine the best run is the least disturbed one. The last printed line
is one JSON object: the settings, and per backend ``ratio`` = pipeline decoded-frames/s / ceiling
decoded-frames/s.

Each run also records the CPU seconds its processes used (this process plus its worker
processes, from /proc): ``cpu_ratio`` = ceiling CPU / pipeline CPU over all runs is the same
comparison as ``ratio`` with the other users of a shared machine taken out; on an idle machine
with every worker busy the two agree. ``pipeline_consumer_cpu_s`` is the part of the pipeline's CPU
spent in this process (shuffling, gathering, mirroring, jittering), the rest is the workers'.

``--make-synthetic DIR`` writes textured panning episodes (H.264 with B-frames). With
``--synthetic-pose-hz`` it writes them as a user's recordings instead (mp4 files and CSV poses at
that rate) and shards them with ``tools/make_shards.py --pose-format csv``, the way a new user
does; ``--synthetic-episodes-per-shard`` puts several episodes in one shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import yaml

from datamodules.augment import apply_colour_jitter
from datamodules.episode import VIDEO_MEMBER, Trajectory
from datamodules.nav_video import NavVideoDataModule
from datamodules.pipeline import NavWindowLoader, SkipCounter, expand_shards, read_tar_episodes, worker_shard_parts
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.video_decode import backend_unavailable, decode_video
from datamodules.windows import AugmentConfig, WindowConfig
from s2e.scripts import REPO_ROOT
from s2e.video_io import write_mp4

DEFAULT_CONFIG = REPO_ROOT / "experiments" / "pretrain.yaml"
#: The augmentation --augment adds to a config that has none (the values of experiments/pretrain.yaml).
PRETRAIN_AUGMENT = AugmentConfig(hflip=0.5, brightness=0.2, contrast=0.2, saturation=0.2)


# -------------------------------------------------------------------------------- synthetic data


def synthetic_episode(rng: np.random.Generator, seconds: float, fps: Fraction, size: tuple[int, int]) -> tuple[Iterator[np.ndarray], Trajectory]:
    """Frames of a textured scene panning as the robot turns, and the robot's poses at the frame times.

    The frames are smooth noise with detail at several scales plus sensor noise, so H.264 has to
    spend bits the way it does on street video (a flat synthetic image decodes unrealistically fast).
    """
    height, width = size
    n = int(round(seconds * float(fps)))
    texture = np.zeros((height, 3 * width, 3), np.float32)
    for cell in (64, 16, 4):  # octaves of blocky noise, upsampled
        coarse = rng.uniform(0, 255, (height // cell + 1, 3 * width // cell + 1, 3)).astype(np.float32)
        texture += np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:height, : 3 * width] / 3
    speed, turn = rng.uniform(0.6, 1.6), rng.uniform(-0.3, 0.3)
    t = np.arange(n) / float(fps)
    yaw = turn * t
    xy = np.stack([np.cumsum(speed * np.cos(yaw)) / float(fps), np.cumsum(speed * np.sin(yaw)) / float(fps)], -1)
    shift = (np.arange(n) * 2 + (yaw * width / 2)).astype(int) % (2 * width)
    noise = np.random.default_rng(rng.integers(2**32))

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            noisy = texture[:, shift[i] : shift[i] + width] + noise.normal(0, 4, (height, width, 3))
            yield np.clip(noisy, 0, 255).astype(np.uint8)

    return frames(), Trajectory(t=t, xy=xy, yaw=yaw)


def make_synthetic_shards(
    out_dir: Path,
    episodes: int,
    seconds: float,
    fps: Fraction,
    size: tuple[int, int],
    *,
    bframes: int = 2,
    episodes_per_shard: int = 1,
    pose_hz: Optional[float] = None,
    seed: int = 0,
) -> list[Path]:
    """Write synthetic episodes as shards; with ``pose_hz``, as recordings + CSV poses sharded by make_shards.py."""
    rng = np.random.default_rng(seed)
    if pose_hz is None:
        with EpisodeShardWriter(out_dir, prefix="shard", max_count=episodes_per_shard) as writer:
            for e in range(episodes):
                frames, traj = synthetic_episode(rng, seconds, fps, size)
                buf = io.BytesIO()
                write_mp4(buf, frames, fps, bframes=bframes, gop=int(float(fps)))
                writer.write(f"synthetic{e:04d}", buf.getvalue(), traj, {"fps": float(fps), "source": "synthetic"})
        return writer.shard_paths
    recordings = out_dir / "recordings"
    (recordings / "videos").mkdir(parents=True, exist_ok=True)
    (recordings / "poses").mkdir(parents=True, exist_ok=True)
    for e in range(episodes):
        frames, traj = synthetic_episode(rng, seconds, fps, size)
        write_mp4(recordings / "videos" / f"walk{e:04d}.mp4", frames, fps, bframes=bframes, gop=2 * int(float(fps)))
        t = np.arange(0.0, traj.t[-1], 1.0 / pose_hz)  # a tracker's own clock, not the frames'
        x, y = np.interp(t, traj.t, traj.xy[:, 0]), np.interp(t, traj.t, traj.xy[:, 1])
        rows = np.stack([t, x, y, np.interp(t, traj.t, traj.yaw)], -1)
        np.savetxt(recordings / "poses" / f"walk{e:04d}.csv", rows, fmt="%.6f", delimiter=",", header="t,x,y,yaw", comments="")
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "make_shards.py"),
        "--videos",
        str(recordings / "videos"),
        "--poses",
        str(recordings / "poses"),
        "--pose-format",
        "csv",
        "--out",
        str(out_dir / "shards"),
        "--shard-max-count",
        str(episodes_per_shard),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return sorted((out_dir / "shards").glob("shard-*.tar"))


# ------------------------------------------------------------------------------------ measuring


def _decode_part(job: tuple[list, tuple[int, int], str]) -> int:
    """Ceiling worker: read its episodes' members with the pipeline's reader and decode the videos, nothing else."""
    parts, size, backend = job
    return sum(len(decode_video(raw[VIDEO_MEMBER], size, backend)) for raw in read_tar_episodes(parts, SkipCounter()) if VIDEO_MEMBER in raw)


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


def run_ceiling(pool, urls: list[str], workers: int, size: tuple[int, int], backend: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, frames) of one pure-decode pass, split across processes like the workers."""
    start, cpu = time.perf_counter(), process_tree_cpu_seconds()
    frames = sum(pool.map(_decode_part, [(worker_shard_parts(urls, w, workers), size, backend) for w in range(workers)]))
    return time.perf_counter() - start, process_tree_cpu_seconds() - cpu, frames


def run_pipeline(loader: NavWindowLoader, device: Optional[torch.device]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, this process's CPU seconds, windows) of one pipeline pass; with ``device``, batches are jittered there."""
    start, cpu, own = time.perf_counter(), process_tree_cpu_seconds(), time.process_time()
    samples = 0
    for batch in loader:
        samples += len(batch["key"])
        if device is not None and "colour_jitter" in batch:
            frames = apply_colour_jitter(batch["frames"].to(device), batch["colour_jitter"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            del frames
    return time.perf_counter() - start, process_tree_cpu_seconds() - cpu, time.process_time() - own, samples


# -------------------------------------------------------------------------------------- settings


def load_settings(config: Optional[Path], urls: list[str]) -> dict[str, Any]:
    """Loader settings from a training config's data section (through NavVideoDataModule, so they mean what training means)."""
    if config is None:
        return {
            "window_config": WindowConfig(),
            "image_size": (224, 224),
            "batch_size": 32,
            "num_workers": 2,
            "shuffle_buffer": 256,
            "video_backend": "auto",
            "colour_jitter_on": "auto",
        }
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    args = {k: v for k, v in data.items() if k not in ("train_shards", "val_shards", "test_shards")}
    module = NavVideoDataModule(train_shards=urls, **args)
    return {
        "window_config": module.train_windows,
        "image_size": module.image_size,
        "batch_size": module.batch_size,
        "num_workers": module.num_workers,
        "shuffle_buffer": module.shuffle_buffer,
        "video_backend": module.video_backend,
        "colour_jitter_on": module.colour_jitter_on,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", help="shard paths or brace patterns")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config whose data settings to use, or 'none'")
    parser.add_argument("--workers", type=int, help="DataLoader workers (and ceiling processes); default: the config's")
    parser.add_argument("--size", help="HxW frames are decoded to; default: the config's image_size")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--window-stride", type=int)
    parser.add_argument("--shuffle-buffer", type=int)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, help="force the training augmentation on (hflip 0.5, jitter 0.2) or off")
    parser.add_argument(
        "--jitter-on",
        choices=("auto", "loader", "workers", "device"),
        help="where colour jitter runs; auto (the config's default): device when --device is an accelerator, else loader",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="the training device for --jitter-on device")
    parser.add_argument("--backend", nargs="+", help="video backends to compare (decord, pyav, torchcodec, auto); default: the config's")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each; the best is reported (0: only write --make-synthetic data)")
    synthetic = parser.add_argument_group("synthetic data")
    synthetic.add_argument("--make-synthetic", type=Path, metavar="DIR", help="write synthetic shards to DIR (and bench them if --shards is not given)")
    synthetic.add_argument("--synthetic-episodes", type=int, default=8)
    synthetic.add_argument("--synthetic-seconds", type=float, default=10.0)
    synthetic.add_argument("--synthetic-size", default="360x640", help="HxW of the synthetic videos")
    synthetic.add_argument("--synthetic-fps", default="30000/1001", help="frame rate, a fraction (29.97 fps: 30000/1001)")
    synthetic.add_argument("--synthetic-bframes", type=int, default=2, help="B-frames between reference frames (0: none)")
    synthetic.add_argument("--synthetic-episodes-per-shard", type=int, default=1)
    synthetic.add_argument("--synthetic-pose-hz", type=float, help="write recordings + CSV poses at this rate and shard them with make_shards.py")
    return parser


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.split("x"))
    return height, width


def run(argv: list[str] | None = None) -> dict | None:
    """Measure as the command line says, print the result as one JSON line and return it (None
    when ``--repeats 0`` only wrote synthetic data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 0 or (args.repeats == 0 and args.make_synthetic is None):
        parser.error("--repeats must be >= 1 (0 only with --make-synthetic: write the data, time nothing)")
    if args.make_synthetic is not None:
        start = time.perf_counter()
        paths = make_synthetic_shards(
            args.make_synthetic,
            args.synthetic_episodes,
            args.synthetic_seconds,
            Fraction(args.synthetic_fps),
            _size(args.synthetic_size),
            bframes=args.synthetic_bframes,
            episodes_per_shard=args.synthetic_episodes_per_shard,
            pose_hz=args.synthetic_pose_hz,
        )
        print(f"wrote {len(paths)} synthetic shard(s) to {paths[0].parent} in {time.perf_counter() - start:.1f}s")
        if not args.shards:
            args.shards = [str(p) for p in paths]
    if args.repeats == 0:
        return None
    if not args.shards:
        parser.error("give --shards (or --make-synthetic DIR)")
    urls = expand_shards(args.shards)
    settings = load_settings(None if args.config.lower() == "none" else Path(args.config), urls)
    workers = args.workers if args.workers is not None else settings["num_workers"]
    if workers < 1:
        parser.error("--workers must be >= 1 (the ceiling needs as many decoding processes)")
    size = _size(args.size) if args.size else settings["image_size"]
    batch_size = args.batch_size or settings["batch_size"]
    shuffle = args.shuffle_buffer if args.shuffle_buffer is not None else settings["shuffle_buffer"]
    window_config: WindowConfig = settings["window_config"]
    if args.window_stride is not None:
        window_config = dataclasses.replace(window_config, window_stride=args.window_stride)
    if args.augment is not None:
        augment = (window_config.augment if window_config.augment != AugmentConfig() else PRETRAIN_AUGMENT) if args.augment else AugmentConfig()
        window_config = dataclasses.replace(window_config, augment=augment)
    device = torch.device(args.device)
    jitter_on = args.jitter_on or settings["colour_jitter_on"]
    if jitter_on == "auto":
        jitter_on = "device" if device.type != "cpu" else "loader"

    backends = []
    for backend in args.backend or [settings["video_backend"]]:
        reason = backend_unavailable(backend)
        if reason is None:
            backends.append(backend)
        else:
            print(f"backend {backend} skipped: {reason}")
    if not backends:
        parser.error("no usable video backend")
    loaders = {
        backend: NavWindowLoader(
            urls,
            window_config,
            size,
            batch_size,
            shuffle_buffer=shuffle,
            num_workers=workers,
            persistent_workers=True,
            video_backend=backend,
            colour_jitter="batch" if jitter_on == "device" else jitter_on,
        )
        for backend in backends
    }
    batch_device = device if jitter_on == "device" else None
    times: dict[str, dict[str, list[float]]] = {
        b: {"ceiling": [], "pipeline": [], "ceiling_cpu": [], "pipeline_cpu": [], "pipeline_consumer_cpu": []} for b in backends
    }
    frames = samples = 0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for backend in backends:  # untimed warm-up of both: process start-up and first imports are not throughput
            run_ceiling(pool, urls, workers, size, backend)
            run_pipeline(loaders[backend], batch_device)
        for _ in range(args.repeats):
            for backend in backends:
                seconds, cpu, frames = run_ceiling(pool, urls, workers, size, backend)
                times[backend]["ceiling"].append(seconds)
                times[backend]["ceiling_cpu"].append(cpu)
                print(f"{backend:10s} ceiling : {frames} frames in {seconds:.2f}s = {frames / seconds:.1f} frames/s ({cpu:.2f} CPU s)")
                seconds, cpu, own, samples = run_pipeline(loaders[backend], batch_device)
                times[backend]["pipeline"].append(seconds)
                times[backend]["pipeline_cpu"].append(cpu)
                times[backend]["pipeline_consumer_cpu"].append(own)
                print(
                    f"{backend:10s} pipeline: {samples} windows ({frames} frames decoded) in {seconds:.2f}s = {frames / seconds:.1f} frames/s "
                    f"({cpu:.2f} CPU s, {own:.2f} in this process)"
                )
    results = []
    for backend in backends:
        t = times[backend]
        best_ceiling, best_pipeline = min(t["ceiling"]), min(t["pipeline"])
        results.append(
            {
                "backend": backend,
                "ratio": round(best_ceiling / best_pipeline, 3),
                "cpu_ratio": round(sum(t["ceiling_cpu"]) / sum(t["pipeline_cpu"]), 3),
                "pipeline_samples_per_s": round(samples / best_pipeline, 1),
                "pipeline_frames_per_s": round(frames / best_pipeline, 1),
                "ceiling_frames_per_s": round(frames / best_ceiling, 1),
                **{f"{k}_s": [round(v, 3) for v in values] for k, values in t.items()},
            }
        )
    augment = window_config.augment
    result = {
        "workers": workers,
        "shards": len(urls),
        "config": args.config,
        "decode_size": list(size),
        "window_stride": window_config.window_stride,
        "augment": {"hflip": augment.hflip, "brightness": augment.brightness, "contrast": augment.contrast, "saturation": augment.saturation},
        "jitter_on": f"{jitter_on} ({device})" if jitter_on == "device" else jitter_on,
        "batch_size": batch_size,
        "shuffle_buffer": shuffle,
        "frames_decoded": frames,
        "windows": samples,
        "results": results,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> None:
    run(argv)
