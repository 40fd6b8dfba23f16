"""Feature drift (the paper's Delta_feat) between two checkpoints' frame encoders on shard frames.

    python tools/feature_drift.py --ckpt-a pretrain.ckpt --ckpt-b posttrain.ckpt \
        --shards 'artifacts/demo/shards/val/val-*.tar' --max-frames 512 --out artifacts/drift

Frames are the newest frame of each window the video datamodule cuts from the shards (checkpoint
A's TimingSpec and image size). Writes drift.json and drift.png (per-frame distance histogram,
both feature sets in A's PCA plane) into --out; the last printed line is the JSON summary.
Definitions: ``s2e/bench/drift.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

import torch

from s2e.bench.drift import check_comparable, feature_drift, plot_drift
from s2e.checkpoint import load_policy_from_checkpoint
from s2e.timing import TimingSpec


def shard_frames(shards: str, timing: TimingSpec, image_size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor]:
    """Newest frame [B, 3, H, W] of each window of the shards, read by the training datamodule (one pass)."""
    from datamodules.nav_video import NavVideoDataModule

    data = NavVideoDataModule(
        train_shards=shards, test_shards=shards, timing=timing, image_size=image_size, batch_size=batch_size, num_workers=0, goal_horizon_s=(1.0, 2.0)
    )
    data.setup("test")
    for batch in data.test_dataloader():
        yield batch["frames"][:, -1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-a", required=True, type=Path, help="reference checkpoint (e.g. pretraining)")
    parser.add_argument("--ckpt-b", required=True, type=Path, help="compared checkpoint (e.g. after post-training)")
    parser.add_argument("--shards", required=True, help="shard paths or brace pattern (real video, ideally)")
    parser.add_argument("--max-frames", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True, type=Path)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Measure, plot and write the drift; prints and returns the summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        policy_a, timing, _ = load_policy_from_checkpoint(args.ckpt_a)
        policy_b, _, _ = load_policy_from_checkpoint(args.ckpt_b)
        check_comparable(policy_a, policy_b)
        frames = shard_frames(args.shards, timing, tuple(policy_a.config.image_size), args.batch_size)
        summary, arrays = feature_drift(policy_a, policy_b, frames, args.max_frames)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    summary = {"ckpt_a": str(args.ckpt_a), "ckpt_b": str(args.ckpt_b), "shards": args.shards, **summary}
    args.out.mkdir(parents=True, exist_ok=True)
    plot_drift(arrays, summary, (args.ckpt_a.stem, args.ckpt_b.stem), args.out / "drift.png")
    (args.out / "drift.json").write_text(json.dumps(summary, indent=1))
    print(
        f"Delta_feat {summary['delta_feat']:.6g} (relative {summary['relative_delta_feat']:.4g}) over {summary['frames']} frames; "
        f"per-frame distance mean {summary['per_frame_distance_mean']:.4g}, cosine {summary['cosine_similarity_mean']:.4f}"
    )
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
