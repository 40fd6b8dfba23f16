"""NavVideoDataModule: CLI construction, DataLoader workers, Lightning fit with logged skips, 2-rank gloo run."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile
from datetime import timedelta

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from conftest import curved_trajectory, encode_indexed_video
from datamodules.nav_video import NavVideoDataModule, StreamingDataCallback
from datamodules.shard_writer import EpisodeShardWriter
from s2e.timing import TimingSpec

FPS = 10
KEYS = ["ep0", "ep1", "ep2"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("navshards")
    with EpisodeShardWriter(root, prefix="train", max_count=1) as writer:
        for i, key in enumerate(KEYS):
            writer.write(key, encode_indexed_video(60 + 10 * i, FPS), curved_trajectory(60 + 10 * i, FPS, 1.0 + 0.2 * i), {"fps": FPS})
    with tarfile.open(root / "broken-000000.tar", "w") as tar:  # one episode whose video is garbage
        traj = curved_trajectory(60, FPS).to_npz_bytes()
        for name, data in (("bad.mp4", b"not a video" * 100), ("bad.traj.npz", traj), ("bad.json", b'{"fps": 10}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def _datamodule(shard_dir: pathlib.Path, **kwargs) -> NavVideoDataModule:
    args = dict(
        train_shards=str(shard_dir / "train-{000000..000002}.tar"),
        image_size=(32, 48),
        batch_size=4,
        num_workers=0,
        samples_per_epoch=16,
        shuffle_buffer=16,
        goal_horizon_s=(1.0, 2.0),
    )
    args.update(kwargs)
    return NavVideoDataModule(**args)


class TinyPolicy(pl.LightningModule):
    """Just enough model to run the datamodule through a real Trainer and record what it saw."""

    def __init__(self, timing: TimingSpec = TimingSpec()) -> None:
        super().__init__()
        self.timing = timing
        self.head = torch.nn.Linear(3, 20)
        self.seen: list[list[tuple[str, float]]] = []

    def training_step(self, batch, batch_idx):
        assert "skip_counts" not in batch  # consumed by the datamodule before transfer
        if batch_idx == 0:
            self.seen.append([])
        self.seen[-1].extend(zip(batch["key"], batch["t"].tolist()))
        features = batch["frames"].float().mean(dim=(1, 3, 4)) / 255
        return torch.nn.functional.mse_loss(self.head(features).view(-1, 10, 2), batch["waypoints"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", batch["waypoints"].abs().mean(), batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_missing_shard_is_named(shard_dir: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-000007.tar"):
        _datamodule(shard_dir, train_shards=[str(shard_dir / "train-000000.tar"), str(shard_dir / "train-000007.tar")])


def test_two_workers_fixed_batches_and_skip_counts_reach_the_main_process(shard_dir: pathlib.Path) -> None:
    # worker 1 holds only the broken shard: it counts the skip, then borrows worker 0's shard for its quota
    dm = _datamodule(shard_dir, train_shards=str(shard_dir / "{train-000000,broken-000000}.tar"), num_workers=2, samples_per_epoch=40)
    dm.setup("fit")
    batches = [dm.consume_skip_counts(b) for b in dm.train_dataloader()]
    assert len(batches) == 10 and all(b["frames"].shape == (4, 5, 3, 32, 48) for b in batches)
    assert all(b["frames"].dtype == torch.uint8 and b["goal_mask"].dtype == torch.bool for b in batches)
    assert {k for b in batches for k in b["key"]} <= set(KEYS)
    counts = dm.skip_counts()
    assert counts["train/undecodable_video"] >= 1  # counted in a worker, summed here
    assert sum(counts.values()) == counts["train/undecodable_video"]


def test_cli_builds_it_from_simple_types_and_links_timing(shard_dir: pathlib.Path) -> None:
    config = {
        "data": {
            "train_shards": str(shard_dir / "train-{000000..000002}.tar"),
            "timing": {"context_frames": 3, "frame_dt": 0.3},
            "image_size": [32, 48],
            "goal_horizon_m": [1.0, 3.0],
            "hflip": 0.5,
        }
    }

    class LinkedCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.timing", "model.timing", apply_on="instantiate")

    cli = LinkedCLI(TinyPolicy, NavVideoDataModule, run=False, args=["--config", json.dumps(config)])
    assert cli.datamodule.timing == TimingSpec(context_frames=3, frame_dt=0.3)
    assert cli.model.timing == cli.datamodule.timing
    assert cli.datamodule.train_windows.goal_horizon_m == (1.0, 3.0)
    assert cli.datamodule.train_windows.augment.hflip == 0.5 and cli.datamodule.val_windows.augment.hflip == 0.0


def test_fit_logs_skips_to_tensorboard_and_reshuffles_each_epoch(shard_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dm = _datamodule(
        shard_dir,
        train_shards=str(shard_dir / "{train-{000000..000002},broken-000000}.tar"),
        val_shards=str(shard_dir / "train-000000.tar"),
        num_workers=2,
        persistent_workers=True,
        samples_per_epoch=72,  # 36 windows per worker, more than ep1 holds (32): its worker reads the broken shard too
    )
    model = TinyPolicy()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert any(isinstance(cb, StreamingDataCallback) for cb in trainer.callbacks)
    assert [len(epoch) for epoch in model.seen] == [72, 72]
    assert model.seen[0] != model.seen[1]  # persistent workers saw the new epoch
    assert dm.train_loader.epoch == 1
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)  # no pickled classes from the datamodule
    assert saved["datamodule_hyper_parameters"]["timing"] == TimingSpec().to_dict()
    events = EventAccumulator(str(pathlib.Path(trainer.logger.log_dir))).Reload()
    logged = events.Scalars("data_skipped/train/undecodable_video")
    assert len(logged) == 2 and logged[-1].value >= logged[0].value >= 1
    assert events.Scalars("data_skipped/val/undecodable_video")[-1].value == 0


def _rank_main(rank: int, shard_dir: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        # 3 shards over 2 ranks: rank 0 holds two episodes, rank 1 one; both must yield the same batch count.
        # 44 windows per rank: more than ep2's 42, so rank 0 reads both of its shards whatever their order
        dm = _datamodule(pathlib.Path(shard_dir), samples_per_epoch=88)
        dm.setup("fit")
        keys, batches = set(), 0
        for batch in dm.train_dataloader():
            keys.update(batch["key"])
            batches += 1
            torch.distributed.all_reduce(torch.ones(1))  # a rank with fewer batches would hang the other here
        torch.distributed.barrier()
        pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"keys": sorted(keys), "batches": batches}))
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_gloo_run_reads_disjoint_shards_with_equal_batch_counts(shard_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    torch.multiprocessing.spawn(_rank_main, args=(str(shard_dir), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["keys"] == ["ep0", "ep2"] and results[1]["keys"] == ["ep1"]
    assert results[0]["batches"] == results[1]["batches"] == 11


@pytest.mark.slow
def test_lightning_ddp_fit_on_uneven_shards_finishes_and_sums_skips(shard_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Real 2-process DDP (gloo): rank 0 holds two good shards, rank 1 one good and the broken one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dm = _datamodule(
        shard_dir,
        train_shards=str(shard_dir / "{train-{000000..000002},broken-000000}.tar"),
        val_shards=str(shard_dir / "train-{000000..000001}.tar"),
        val_samples_per_epoch=8,
        samples_per_epoch=64,
    )
    trainer = pl.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyPolicy(), datamodule=dm)
    assert trainer.state.finished
    events = EventAccumulator(str(pathlib.Path(tmp_path, "tb", "version_0"))).Reload()
    # 64 windows over 2 ranks x batch 4 = 8 batches per rank per epoch; the broken episode sits on rank 1
    assert events.Scalars("data_skipped/train/undecodable_video")[-1].value >= 1
    assert [e.step for e in events.Scalars("data_skipped/train/undecodable_video")] == [7, 15]
