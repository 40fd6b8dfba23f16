"""``NavVideoDataModule``: navigation-video shards -> batches of training windows for AGDM pretraining.

A thin LightningDataModule over :mod:`datamodules.pipeline`: it checks the shard paths up front,
builds one streaming loader per split with this process's DDP rank, and turns the skip-count
deltas that every batch carries into totals (:meth:`NavVideoDataModule.skip_counts`) that
:class:`StreamingDataCallback` logs. The callback also advances the loader's epoch so the shuffle
changes every epoch; ``setup`` attaches it to the trainer when the user has not.

Every rank yields ``ceil(samples_per_epoch / (world_size * batch_size))`` training batches per
epoch (see the pipeline docstring), so DDP ranks never wait on each other at the epoch end.
Validation reads each rank's validation shards once unless ``val_samples_per_epoch`` is set, which
DDP runs should do for the same reason.

The dataloaders are :class:`datamodules.pipeline.NavWindowLoader` iterables, not torch DataLoaders:
their workers decode episodes and this process gathers the batches. Batch ``frames`` are uint8
[B, k, 3, H, W] with channels-last memory (see :func:`datamodules.windows.collate_windows`).

Colour jitter runs where it is cheap, chosen by where the batches live (``colour_jitter_on``):
training on an accelerator, batches carry the factors and :meth:`NavVideoDataModule.on_after_batch_transfer`
jitters them on the device; training on the CPU, the loader's batch gather jitters each frame while
it copies it (a compiled kernel, a few µs per window at 64x64; see :mod:`datamodules.augment`).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch

from datamodules.augment import JitterPlacement, apply_colour_jitter
from datamodules.pipeline import DEFAULT_MAX_MEMBER_MB, SKIP_REASONS, NavWindowLoader, expand_shards
from datamodules.video_decode import Backend
from datamodules.windows import AugmentConfig, WindowConfig
from s2e.timing import TimingSpec

log = logging.getLogger(__name__)


class NavVideoDataModule(pl.LightningDataModule):
    """Streams (frames, goal, waypoints) windows from WebDataset episode shards.

    Args:
        train_shards: shard paths, brace patterns (``data/train-{000000..000031}.tar``) or URLs.
        val_shards: the same for validation; None disables validation.
        test_shards: shards for ``test`` and ``predict`` (one pass, no augmentation); None uses ``val_shards``.
        timing: the TimingSpec windows are cut with (link the model's timing to ``data.timing``).
        image_size: (height, width) the video is decoded to.
        batch_size: windows per batch on each rank.
        num_workers: DataLoader worker processes per rank (each decodes its own shards).
        persistent_workers: keep workers alive between epochs.
        shuffle_buffer: windows held for shuffling across episodes and workers; every episode with a
            window in the buffer stays decoded in memory (T x H x W x 3 bytes).
        goal_horizon_s: (min, max) seconds ahead from which the goal is drawn.
        goal_horizon_m: (min, max) metres of path ahead instead of seconds.
        goal_at_end: probability that the goal is the episode's (valid run's) end instead (see WindowConfig).
        extend_end_s: seconds of future past a recording's last pose, continued straight (see WindowConfig).
        goal_dropout: probability of dropping the goal (goal_mask False) for goal-free training.
        window_stride: frames between consecutive "now" frames of an episode.
        hflip, brightness, contrast, saturation: training augmentation (see AugmentConfig).
        samples_per_epoch: training windows per epoch over all ranks.
        val_samples_per_epoch: validation windows per epoch over all ranks; None = one pass.
        seed: base seed of shard order, shuffle, goal and augmentation draws.
        frame_tolerance_s: max gap between a context frame's target time and the nearest frame.
        video_backend: "auto" (decord with PyAV fallback), "decord", "pyav" or "torchcodec" (optional,
            see :mod:`datamodules.video_decode`).
        colour_jitter_on: where brightness/contrast/saturation jitter runs: "device" (after the batch
            reached the training device), "loader" (fused into the loader's batch gather, in this
            process), "workers" (in the DataLoader workers, which then send every window's clip), or
            "auto": "device" when the trainer's device is an accelerator, else "loader". The draws
            and the results are the same.
        max_member_mb: largest shard member read; an episode with a larger one is skipped and
            counted (``oversize_member``) without reading it.
    """

    def __init__(
        self,
        train_shards: Union[str, list[str]],
        val_shards: Optional[Union[str, list[str]]] = None,
        test_shards: Optional[Union[str, list[str]]] = None,
        timing: Optional[TimingSpec] = None,
        image_size: tuple[int, int] = (224, 224),
        batch_size: int = 32,
        num_workers: int = 4,
        persistent_workers: bool = True,
        shuffle_buffer: int = 1000,
        goal_horizon_s: tuple[float, float] = (2.0, 10.0),
        goal_horizon_m: Optional[tuple[float, float]] = None,
        goal_at_end: float = 0.0,
        extend_end_s: float = 0.0,
        goal_dropout: float = 0.0,
        window_stride: int = 1,
        hflip: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        samples_per_epoch: int = 100_000,
        val_samples_per_epoch: Optional[int] = None,
        seed: int = 0,
        frame_tolerance_s: Optional[float] = None,
        video_backend: Backend = "auto",
        colour_jitter_on: Literal["auto", "loader", "workers", "device"] = "auto",
        max_member_mb: float = DEFAULT_MAX_MEMBER_MB,
    ) -> None:
        super().__init__()
        if colour_jitter_on not in ("auto", "loader", "workers", "device"):
            raise ValueError(f"colour_jitter_on must be 'auto', 'loader', 'workers' or 'device', got {colour_jitter_on!r}")
        self.timing = timing if isinstance(timing, TimingSpec) else TimingSpec.from_dict(timing or {})
        # timing as a plain dict: checkpoints must stay loadable with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["timing"])
        self.hparams["timing"] = self.timing.to_dict()
        self.train_urls = expand_shards(train_shards)
        self.val_urls = expand_shards(val_shards) if val_shards is not None else None
        self.test_urls = expand_shards(test_shards) if test_shards is not None else self.val_urls
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.val_samples_per_epoch = val_samples_per_epoch
        self.seed = seed
        self.video_backend = video_backend
        self.colour_jitter_on = colour_jitter_on
        self.max_member_mb = max_member_mb
        common = dict(
            timing=self.timing,
            window_stride=window_stride,
            goal_horizon_s=tuple(goal_horizon_s),
            goal_horizon_m=tuple(goal_horizon_m) if goal_horizon_m is not None else None,
            goal_at_end=goal_at_end,
            extend_end_s=extend_end_s,
            frame_tolerance_s=frame_tolerance_s,
        )
        augment = AugmentConfig(hflip=hflip, brightness=brightness, contrast=contrast, saturation=saturation)
        self.train_windows = WindowConfig(goal_dropout=goal_dropout, augment=augment, **common)
        self.val_windows = WindowConfig(**common)  # no augmentation, no goal dropout
        self.train_loader: Optional[NavWindowLoader] = None
        self.val_loader: Optional[NavWindowLoader] = None
        self.test_loader: Optional[NavWindowLoader] = None
        self._skips: Counter[str] = Counter()

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _jitter_placement(self) -> JitterPlacement:
        """Where the training batches' colour jitter runs: on the batch ("device"), in the loader's gather or in the workers."""
        if self.colour_jitter_on == "auto":
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return "batch" if device.type != "cpu" else "loader"
        return "batch" if self.colour_jitter_on == "device" else self.colour_jitter_on

    def setup(self, stage: Optional[str] = None) -> None:
        rank, world = self._rank_and_world()
        common = dict(
            image_size=self.image_size,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world,
            video_backend=self.video_backend,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            max_member_mb=self.max_member_mb,
        )
        if stage in (None, "fit") and self.train_loader is None:
            self.train_loader = NavWindowLoader(
                self.train_urls,
                self.train_windows,
                samples_per_epoch=self.samples_per_epoch,
                shuffle_buffer=self.shuffle_buffer,
                seed=self.seed,
                split="train/",
                colour_jitter=self._jitter_placement(),
                **common,
            )
        if stage in (None, "fit", "validate") and self.val_urls is not None and self.val_loader is None:
            if world > 1 and self.val_samples_per_epoch is None:
                log.warning(
                    "val_samples_per_epoch is not set with %d ranks: each rank reads its validation shards once, "
                    "so ranks may run different numbers of validation batches; set it for a fixed count per rank",
                    world,
                )
            self.val_loader = NavWindowLoader(
                self.val_urls,
                self.val_windows,
                samples_per_epoch=self.val_samples_per_epoch,
                shuffle_buffer=0,
                seed=self.seed + 1,
                split="val/",
                **common,
            )
        if stage in ("test", "predict") and self.test_loader is None:
            if self.test_urls is None:
                raise ValueError(f"{stage} needs shards: pass data.test_shards (or data.val_shards)")
            self.test_loader = NavWindowLoader(self.test_urls, self.val_windows, shuffle_buffer=0, seed=self.seed + 2, split="val/", **common)
        if self.trainer is not None and not any(isinstance(cb, StreamingDataCallback) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(StreamingDataCallback())

    @staticmethod
    def _ready(loader: Optional[NavWindowLoader], name: str) -> NavWindowLoader:
        if loader is None:
            raise RuntimeError(f"no {name} data: call setup() first{' and pass val_shards' if name == 'val' else ''}")
        return loader

    def train_dataloader(self) -> NavWindowLoader:
        return self._ready(self.train_loader, "train")

    def val_dataloader(self) -> NavWindowLoader | list:
        # An empty list tells Lightning there is no validation (fit without val_shards).
        return self._ready(self.val_loader, "val") if self.val_urls is not None else []

    def test_dataloader(self) -> NavWindowLoader:
        return self._ready(self.test_loader, "test")

    def predict_dataloader(self) -> NavWindowLoader:
        return self._ready(self.test_loader, "test")

    def set_epoch(self, epoch: int) -> None:
        """New shuffle for a new epoch (called by StreamingDataCallback at every training epoch start)."""
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch)

    def consume_skip_counts(self, batch: Any) -> Any:
        """Move a batch's worker skip-count deltas into this process's totals; returns the batch without them."""
        if isinstance(batch, dict) and "skip_counts" in batch:
            self._skips.update(batch.pop("skip_counts"))
        return batch

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.consume_skip_counts(batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply the colour jitter a batch carries (``colour_jitter_on`` "device"), where the batch now is."""
        if isinstance(batch, dict) and "colour_jitter" in batch:
            batch["frames"] = apply_colour_jitter(batch["frames"], batch.pop("colour_jitter"))
        return batch

    def skip_counts(self) -> dict[str, int]:
        """Skipped inputs seen by this process so far, ``{"train/tar_error": 2, ...}`` (every reason listed)."""
        return {f"{split}{reason}": int(self._skips.get(f"{split}{reason}", 0)) for split in ("train/", "val/") for reason in SKIP_REASONS}


class StreamingDataCallback(pl.Callback):
    """Advances the streaming loader's epoch and logs skip counts as ``data_skipped/<split>/<reason>``.

    Counts are running totals per rank, summed over ranks when logged.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, NavVideoDataModule):
            datamodule.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "train/")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val/")

    @staticmethod
    def _log(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, NavVideoDataModule):
            return
        counts = {f"data_skipped/{k}": float(v) for k, v in datamodule.skip_counts().items() if k.startswith(split)}
        pl_module.log_dict(counts, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
