"""PretrainModule on real mp4 shards: overfit, TensorBoard events, checkpoint round trip, resume, errors.

The helpers at the top (demo shards with left / straight / right episodes and anchors fitted on
them) are shared with test_cli.py and test_ddp_pretrain.py.
"""

from __future__ import annotations

import math
import pathlib

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from conftest import curved_trajectory, encode_indexed_video
from datamodules.nav_video import NavVideoDataModule
from datamodules.shard_writer import EpisodeShardWriter
from datamodules.windows import WindowConfig
from s2e.anchors import Anchors, fit_anchors
from s2e.checkpoint import load_policy_from_checkpoint
from s2e.pretrain import PretrainModule
from s2e.scripts.compute_anchors import gather_trajectories
from s2e.timing import TimingMismatchError, TimingSpec

FPS = 10
IMAGE = 32
# turn rates (rad/s) of the demo episodes: left, straight, right -> a multi-modal future
TURNS = (0.5, 1e-3, -0.5, 0.3, -0.3, 1e-3)
TINY_POLICY = {"image_size": [IMAGE, IMAGE], "d_model": 32, "cnn_channels": [8, 16, 16, 32], "fusion_heads": 2, "fusion_depth": 1}


def write_demo_shards(root: pathlib.Path, num_episodes: int = 4, frames: int = 50) -> str:
    """One episode per shard (so DDP ranks get shards of their own); returns the brace pattern."""
    with EpisodeShardWriter(root, prefix="train", max_count=1) as writer:
        for i in range(num_episodes):
            traj = curved_trajectory(frames, FPS, speed=1.0 + 0.1 * i, turn_rate=TURNS[i % len(TURNS)])
            writer.write(f"ep{i}", encode_indexed_video(frames, FPS, height=IMAGE, width=IMAGE), traj, {"fps": FPS})
    return str(root / f"train-{{000000..{num_episodes - 1:06d}}}.tar")


def fit_demo_anchors(shards: str, path: pathlib.Path, num_anchors: int = 4, timing: TimingSpec = TimingSpec()) -> pathlib.Path:
    from datamodules.pipeline import expand_shards

    trajectories, _, _ = gather_trajectories(expand_shards(shards), WindowConfig(timing=timing))
    fit_anchors(trajectories, num_anchors, timing).save(path)
    return path


def demo_datamodule(shards: str, **kwargs) -> NavVideoDataModule:
    args = dict(
        train_shards=shards,
        image_size=(IMAGE, IMAGE),
        batch_size=4,
        num_workers=0,
        samples_per_epoch=16,
        shuffle_buffer=8,
        goal_horizon_s=(1.0, 2.0),
    )
    args.update(kwargs)
    return NavVideoDataModule(**args)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("demo")
    shards = write_demo_shards(root)
    return shards, fit_demo_anchors(shards, root / "anchors.npz")


def _module(anchors: pathlib.Path, **kwargs) -> PretrainModule:
    args = dict(anchors_path=str(anchors), policy=dict(TINY_POLICY), warmup_steps=2, image_every_n_steps=0)
    args.update(kwargs)
    return PretrainModule(**args)


def _trainer(tmp_path: pathlib.Path, **kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    args.update(kwargs)
    return pl.Trainer(**args)


def test_agdm_loss_falls_when_overfitting_one_real_batch(demo) -> None:
    shards, anchors = demo
    dm = demo_datamodule(shards)
    dm.setup("fit")
    batch = dm.consume_skip_counts(next(iter(dm.train_dataloader())))
    torch.manual_seed(0)
    module = _module(anchors)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _, _ = module.compute_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5.0, losses


def test_fit_writes_tensorboard_scalars_image_and_a_self_contained_checkpoint(demo, tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards, anchors = demo
    module = _module(anchors, image_every_n_steps=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="train/loss", save_top_k=1)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, max_steps=4, logger=logger, callbacks=[checkpoint], log_every_n_steps=1, limit_val_batches=None)
    trainer.fit(module, datamodule=demo_datamodule(shards, val_shards=shards, val_samples_per_epoch=4))

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/nll", "train/ade", "train/min_fde", "train/anchor_acc", "val/ade", "val/min_ade"} <= scalars
    assert [e.step for e in events.Images("train/modes")] == [0, 2]
    assert len(events.Scalars("train/loss")) == 4

    last = tmp_path / "ckpt" / "last.ckpt"
    assert checkpoint.best_model_path and last.is_file()
    policy, timing, loaded_anchors = load_policy_from_checkpoint(last)  # no anchors file needed
    assert timing == TimingSpec()
    original = Anchors.load(anchors)
    np.testing.assert_allclose(loaded_anchors.trajectories, original.trajectories)
    np.testing.assert_array_equal(loaded_anchors.counts, original.counts)
    frames = torch.randint(0, 255, (2, 5, 3, IMAGE, IMAGE), dtype=torch.uint8)
    goal = torch.tensor([[3.0, 1.0, 0.0], [5.0, 0.0, 1.0]])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(policy(frames, goal)["mean"], module.policy(frames, goal)["mean"])


def test_resume_from_last_mid_epoch_ends_at_the_uninterrupted_step(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.should_stop = True

    def run(root: pathlib.Path, callbacks, ckpt_path=None) -> pl.Trainer:
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1, save_top_k=0)
        trainer = _trainer(root, max_epochs=2, callbacks=[checkpoint, *callbacks])
        trainer.fit(_module(anchors), datamodule=demo_datamodule(shards), ckpt_path=ckpt_path)
        return trainer

    full = run(tmp_path / "full", [])
    assert full.global_step == 8  # 2 epochs x 16 samples / batch 4
    interrupted = run(tmp_path / "cut", [StopAt()])
    assert interrupted.global_step == 3
    resumed = run(tmp_path / "cut", [], ckpt_path="last")
    assert resumed.global_step == full.global_step


def test_anchor_count_mismatch_is_a_clear_error(demo) -> None:
    _, anchors = demo
    with pytest.raises(ValueError, match="num_anchors=7 .* holds 4 anchors"):
        _module(anchors, num_anchors=7)


def test_data_with_another_timing_is_refused(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo
    dm = demo_datamodule(shards, timing=TimingSpec(context_frames=3))
    with pytest.raises(TimingMismatchError, match="context_frames: model \\(anchors\\)=5 vs data=3"):
        _trainer(tmp_path, max_steps=1).fit(_module(anchors), datamodule=dm)


def test_checkpoint_from_another_timing_is_refused(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo
    other = TimingSpec(context_frames=3)
    other_anchors = fit_demo_anchors(shards, tmp_path / "anchors3.npz", timing=other)
    trainer = _trainer(tmp_path / "a", max_steps=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)])
    trainer.fit(_module(other_anchors), datamodule=demo_datamodule(shards, timing=other))
    with pytest.raises(TimingMismatchError, match="context_frames: model \\(anchors\\)=5 vs checkpoint=3"):
        _trainer(tmp_path / "b", max_steps=2).fit(_module(anchors), datamodule=demo_datamodule(shards), ckpt_path=str(tmp_path / "a" / "last.ckpt"))


def test_fit_without_val_shards_then_test_and_predict_on_test_shards(demo, tmp_path: pathlib.Path) -> None:
    shards, anchors = demo
    module = _module(anchors)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=None)
    trainer.fit(module, datamodule=demo_datamodule(shards))  # no val_shards: validation is skipped, not an error
    assert trainer.global_step == 2
    eval_dm = demo_datamodule(shards, test_shards=shards)
    metrics = _trainer(tmp_path).test(module, datamodule=eval_dm, verbose=False)[0]
    assert {"test/ade", "test/fde"} <= set(metrics) and all(math.isfinite(v) for v in metrics.values())
    predictions = _trainer(tmp_path).predict(module, datamodule=demo_datamodule(shards, test_shards=shards))
    assert predictions and all(p["waypoints_m"].shape[1:] == (10, 2) and torch.isfinite(p["waypoints_m"]).all() for p in predictions)
    with pytest.raises(ValueError, match="test_shards"):
        _trainer(tmp_path).test(module, datamodule=demo_datamodule(shards), verbose=False)


def test_init_from_starts_with_the_checkpoint_weights_and_a_fresh_schedule(demo, tmp_path: pathlib.Path) -> None:
    """Fine-tuning (a DAgger round): init_from copies the policy weights, while the learning rate
    follows a schedule of its own (resuming with ckpt_path would keep the decayed one);
    another model or another timing is refused by name."""
    shards, anchors = demo
    trainer = _trainer(tmp_path / "a", max_steps=6, callbacks=[ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)])
    trainer.fit(_module(anchors), datamodule=demo_datamodule(shards))
    last = str(tmp_path / "a" / "last.ckpt")
    trained, _, _ = load_policy_from_checkpoint(last)

    tuned = _module(anchors, init_from=last)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(tuned.policy.state_dict()[name], value, msg=name)
    assert any(not torch.equal(value, _module(anchors).policy.state_dict()[name]) for name, value in trained.state_dict().items())
    fine_tune = _trainer(tmp_path / "b", max_steps=1)
    fine_tune.fit(tuned, datamodule=demo_datamodule(shards))
    decayed = trainer.optimizers[0].param_groups[0]["lr"]
    assert decayed < 0.1 * 3e-4 and fine_tune.optimizers[0].param_groups[0]["lr"] > 10 * decayed  # its own schedule, not the old one's end

    with pytest.raises(ValueError, match="policy config differs"):
        _module(anchors, init_from=last, policy={**TINY_POLICY, "d_model": 16})
    other = fit_demo_anchors(shards, tmp_path / "anchors3.npz", timing=TimingSpec(context_frames=3))
    with pytest.raises(ValueError, match="TimingSpec"):
        _module(other, init_from=last)


def test_departure_weights_measure_how_far_the_future_leaves_the_goal_line() -> None:
    from s2e.geometry import goal_encoding
    from s2e.pretrain import departure_weights

    along = torch.linspace(0.3, 3.0, 10)
    straight = torch.stack([along, torch.zeros(10)], -1)  # on the line to a goal dead ahead
    swerve = torch.stack([along, 0.8 * torch.sin(along)], -1)  # 0.8 m to the left at its widest
    futures = torch.stack([straight, swerve, swerve, swerve])
    goals = goal_encoding(torch.tensor([[20.0, 0.0], [20.0, 0.0], [0.0, 20.0], [0.0, 0.0]]))
    goals[3] = 0.0  # a dropped goal: no line to leave
    weights = departure_weights(futures, goals, departure_m=0.5)
    torch.testing.assert_close(weights[:2], torch.tensor([0.0, 1.0]))  # 0.8 m over 0.5 m, capped at 1
    assert weights[2] == 1.0  # a goal to the left: the forward future leaves its line by 3 m
    assert weights[3] == 0.0
    torch.testing.assert_close(departure_weights(futures[1:2], goals[1:2], departure_m=1.6), (0.8 * torch.sin(along)).max()[None] / 1.6)


def test_departure_weight_changes_the_loss_only_through_departing_windows(demo) -> None:
    """On a real batch: weight 0 is the plain loss; a positive weight makes it the average weighted
    by each window's departure, so it differs exactly when the batch's departures differ."""
    from s2e.pretrain import departure_weights

    shards, anchors = demo
    dm = demo_datamodule(shards, goal_horizon_m=(1.0, 30.0), goal_at_end=1.0, goal_dropout=0.0)
    dm.setup("fit")
    batch = dm.consume_skip_counts(next(iter(dm.train_dataloader())))
    torch.manual_seed(0)
    plain = _module(anchors)
    weighted = _module(anchors, departure_weight=4.0, departure_m=2.0)
    weighted.policy.load_state_dict(plain.policy.state_dict())
    departure = departure_weights(batch["waypoints"] * batch["scale"][:, None, None], batch["goal"], 2.0)
    assert departure.max() - departure.min() > 0.1 and departure.max() < 1.0  # curved and straight episodes, under the cap
    with torch.no_grad():
        loss_plain, _, _ = plain.compute_step(batch)
        loss_weighted, _, _ = weighted.compute_step(batch)
        per_window = torch.stack([plain.compute_step({k: v[i : i + 1] for k, v in batch.items()})[0] for i in range(len(departure))])
    w = 1.0 + 4.0 * departure
    torch.testing.assert_close(loss_weighted, (w * per_window).sum() / w.sum(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_plain, per_window.mean(), rtol=1e-4, atol=1e-5)
    assert (loss_weighted - loss_plain).abs() > 1e-3  # the per-window losses differ, so the weighting shows
    with pytest.raises(ValueError, match="departure_weight"):
        _module(anchors, departure_weight=-1.0)
