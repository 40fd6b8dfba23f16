"""Training throughput of the S2E policy on CPU, and the Lightning overhead over a plain PyTorch loop.

    python tools/bench_train.py                       # synthetic episode shards, small preset, 96x96
    python tools/bench_train.py --shards 'data/demo/train/sim-000000.tar' --anchors data/demo/anchors.npz

The batches are decoded once into memory first, so both loops run on identical batches and the
figures measure training, not video decoding (tools/bench_data.py measures that). Each round runs the
plain loop (forward, AGDM loss and metrics via PretrainModule.compute_step, backward, clip, AdamW)
and then Trainer.fit on the same batches with the same model and optimizer settings; the best round
of each is compared. The last printed line is one JSON object; target: Lightning overhead <= 5%.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.episode import Trajectory
from datamodules.nav_video import NavVideoDataModule
from datamodules.pipeline import expand_shards
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import WindowConfig
from s2e.anchors import fit_anchors
from s2e.pretrain import PretrainModule
from s2e.scripts.compute_anchors import NoTrainingWindowError, gather_trajectories
from s2e.timing import TimingSpec
from s2e.video_io import write_mp4

GRAD_CLIP = 1.0


def write_synthetic_shards(out_dir: Path, episodes: int, frames: int, size: int, fps: float = 10.0) -> str:
    """Arcs turning left, straight and right at walking speed, with textured moving frames."""
    rng = np.random.default_rng(0)
    with EpisodeShardWriter(out_dir, prefix="bench", max_count=1) as writer:
        for i in range(episodes):
            t = np.arange(frames) / fps
            turn = (-0.4, 1e-3, 0.4)[i % 3]
            yaw = turn * t
            speed = 1.0 + 0.2 * (i % 2)
            xy = np.stack([speed / turn * np.sin(yaw), speed / turn * (1.0 - np.cos(yaw))], -1)
            texture = rng.integers(0, 255, (size, 2 * size, 3), dtype=np.uint8)
            video = io.BytesIO()
            write_mp4(video, (np.roll(texture, 3 * k, axis=1)[:, :size] for k in range(frames)), fps)
            writer.write(f"ep{i}", video.getvalue(), Trajectory(t=t, xy=xy, yaw=yaw, speed=np.full(frames, speed)), {"fps": fps})
    return str(out_dir / f"bench-{{000000..{episodes - 1:06d}}}.tar")


def load_batches(shards: str, size: int, batch_size: int, count: int) -> list[dict]:
    dm = NavVideoDataModule(
        train_shards=shards,
        image_size=(size, size),
        batch_size=batch_size,
        num_workers=0,
        samples_per_epoch=batch_size * count,
        shuffle_buffer=4 * batch_size,
        goal_horizon_s=(1.0, 3.0),
    )
    dm.setup("fit")
    batches = [dm.consume_skip_counts(b) for b in dm.train_dataloader()]
    if len(batches) < count:
        raise SystemExit(f"the shards gave {len(batches)} batches, {count} needed")
    return batches[:count]


def new_module(anchors: Path, preset: str, size: int, seed: int) -> PretrainModule:
    torch.manual_seed(seed)
    return PretrainModule(anchors_path=str(anchors), preset=preset, policy={"image_size": [size, size]}, image_every_n_steps=0, warmup_steps=0)


def plain_loop_seconds(module: PretrainModule, batches: list[dict], warmup: int) -> float:
    """Wall time of batches[warmup:] in a hand-written loop doing the same work as the Lightning fit."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay)
    module.train()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss, _, _ = module.compute_step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), GRAD_CLIP)
        optimizer.step()
    return time.perf_counter() - start


class _StepClock(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_seconds(module: PretrainModule, batches: list[dict], warmup: int, log_every: int) -> float:
    """Wall time of batches[warmup:] through Trainer.fit (metrics logged as in a real run, no disk logger)."""
    clock = _StepClock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=GRAD_CLIP,
        callbacks=[clock],
        log_every_n_steps=log_every,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return clock.end - clock.start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="shard paths/brace pattern; default: synthetic shards in a temporary folder")
    parser.add_argument("--anchors", type=Path, help="anchors .npz; default: fitted on the shards")
    parser.add_argument("--num-anchors", type=int, default=20)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loop (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="plain/Lightning rounds; the best of each is kept")
    parser.add_argument("--log-every", type=int, default=50, help="Trainer log_every_n_steps")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Time both loops over the same decoded batches; prints each round and, last, the JSON result."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_shards(Path(tmp), episodes=6, frames=80, size=args.image_size)
        anchors = args.anchors
        if anchors is None:
            try:
                trajectories, _, _ = gather_trajectories(expand_shards(shards), WindowConfig(timing=TimingSpec()))
            except NoTrainingWindowError as err:
                raise SystemExit(str(err)) from None
            anchors = Path(tmp) / "anchors.npz"
            fit_anchors(trajectories, args.num_anchors, TimingSpec()).save(anchors)
        total = args.warmup + args.batches
        batches = load_batches(shards, args.image_size, args.batch_size, total)
        plain, lightning = [], []
        for round_index in range(args.rounds):
            plain.append(plain_loop_seconds(new_module(anchors, args.preset, args.image_size, round_index), batches, args.warmup))
            lightning.append(lightning_seconds(new_module(anchors, args.preset, args.image_size, round_index), batches, args.warmup, args.log_every))
            print(f"round {round_index}: plain {plain[-1]:.3f} s, lightning {lightning[-1]:.3f} s for {args.batches} batches of {args.batch_size}")

    samples = args.batches * args.batch_size
    result = {
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "threads": torch.get_num_threads(),
        "plain_samples_per_s": round(samples / min(plain), 2),
        "lightning_samples_per_s": round(samples / min(lightning), 2),
        "lightning_over_plain_time": round(min(lightning) / min(plain), 4),
        "lightning_overhead_pct": round(100.0 * (min(lightning) / min(plain) - 1.0), 2),
        "target_overhead_pct": 5.0,
    }
    print(json.dumps(result))
