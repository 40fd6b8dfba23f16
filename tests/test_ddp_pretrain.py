"""A real 2-process DDP (gloo, CPU) fit through ``python -m s2e fit``: it completes and the ranks see disjoint data."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import lightning.pytorch as pl
from test_cli import ROOT, _tiny_args
from test_pretrain import fit_demo_anchors, write_demo_shards


class RecordEpisodeKeys(pl.Callback):
    """Appends every training episode key this rank sees to ``keys-rank<r>.txt`` in ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = pathlib.Path(out_dir)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        with open(self.out_dir / f"keys-rank{trainer.global_rank}.txt", "a") as f:
            f.writelines(f"{key}\n" for key in batch["key"])


def test_two_process_gloo_fit_completes_with_disjoint_data_per_rank(tmp_path: pathlib.Path) -> None:
    shards = write_demo_shards(tmp_path / "shards", num_episodes=4)
    anchors = fit_demo_anchors(shards, tmp_path / "anchors.npz")
    args = _tiny_args(shards, anchors, tmp_path / "run")
    callbacks = {
        "trainer": {
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "dirpath": str(tmp_path / "ckpt")}},
                {"class_path": "test_ddp_pretrain.RecordEpisodeKeys", "init_args": {"out_dir": str(tmp_path)}},
            ]
        }
    }
    command = [sys.executable, "-m", "s2e", "fit", *args, "--config", json.dumps(callbacks)]
    command += ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.init_args.samples_per_epoch", "16"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    seen = {rank: set((tmp_path / f"keys-rank{rank}.txt").read_text().split()) for rank in (0, 1)}
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    # one episode per shard; rank r reads shards r, r + 2 (datamodules.pipeline.split_by_rank)
    assert seen[0] <= {"ep0", "ep2"} and seen[1] <= {"ep1", "ep3"}
    lines = {rank: (tmp_path / f"keys-rank{rank}.txt").read_text().split() for rank in (0, 1)}
    assert len(lines[0]) == len(lines[1]) == 2 * 16 // 2  # 2 epochs x 16 samples over 2 ranks each
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
