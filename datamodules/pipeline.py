"""The streaming shard pipeline: shards -> rank -> worker -> tar -> decode -> windows -> shuffle -> batches.

Written as an explicit ``webdataset.DataPipeline`` of small stages (the open_clip style) rather
than ``wds.WebDataset(...)`` defaults, because every stage here has a decision that matters:

- **shards**: brace patterns / lists / URLs (``pipe:``, ``http://`` go through ``wds.gopen``); a
  local path that does not exist is an error naming it, before any worker starts.
- **rank split**: shard ``i`` goes to rank ``i % world_size``, so ranks read disjoint shards; there
  must be at least as many shards as ranks.
- **worker split**: the rank's shards are dealt to its DataLoader workers the same way.
- **tar**: only the ``mp4``, ``traj.npz`` and ``json`` members are read; anything else in the tar
  (``.pyd``, ``.pickle``, ...) is skipped without reading its bytes, so data can never run code.
- **episode decode + windows**: each episode is decoded once and cut into many windows.
- **shuffle buffer** across episodes, seeded by (seed, epoch, rank, worker): a new order every epoch.
- **batches** are collated in the worker and carry the worker's skip-counter deltas.

Bad input is skipped and counted (reasons in :data:`SKIP_REASONS`), never fatal. Counters live in
the worker process; each batch carries the counts accumulated since that worker's previous batch
under ``batch["skip_counts"]`` and the DataModule sums them in the main process.

DDP without hangs: with ``samples_per_epoch`` set, every rank yields exactly
``ceil(samples_per_epoch / (world_size * batch_size))`` full batches per epoch, dealt over its
workers that have shards; each worker cycles over its own shards (reshuffled every pass) until its
quota is met. Ranks with less or worse data simply revisit their shards more often. A worker whose
shards give no window in a whole pass reads its rank's other shards instead; when none of the
rank's shards gives a window it raises :class:`NoUsableDataError` instead of spinning.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import re
import tarfile
import zlib
from collections import Counter
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.episode import META_MEMBER, TRAJ_MEMBER, VIDEO_MEMBER, BadTrajectoryError, Trajectory
from datamodules.video_decode import Backend, UndecodableVideoError, decode_video
from datamodules.windows import Window, WindowConfig, collate_windows, cut_windows

log = logging.getLogger(__name__)

#: The only tar members ever read. Everything else is skipped unread.
EPISODE_MEMBERS = (VIDEO_MEMBER, TRAJ_MEMBER, META_MEMBER)

SKIP_REASONS = (
    "shard_unreadable",  # could not open the shard (missing file, network error)
    "tar_error",  # truncated or corrupt tar: the rest of that shard is skipped
    "missing_member",  # an episode without its mp4, traj.npz or json
    "bad_meta",  # json member that is not a JSON object
    "bad_trajectory",  # NaN poses at valid frames, wrong shapes, non-increasing time, no pickle-free npz
    "undecodable_video",  # empty or undecodable mp4
    "video_shorter_than_poses",  # fewer decoded frames than poses
    "frame_times_mismatch",  # decoded frame times drift from traj.t (wrong fps metadata, raw streams)
    "too_short",  # decoded fine but no window fits (too short, too many invalid poses)
)

_NAME_RE = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # "dir/key.traj.npz" -> ("dir/key", "traj.npz")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")


class NoUsableDataError(RuntimeError):
    """A worker read all of its shards once and got not a single training window."""


class SkipCounter:
    """Per-process counts of skipped input; :meth:`take` returns what was added since the last take."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self.windows = 0  # windows cut so far: lets the source notice a pass that produced nothing

    def add(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.total[reason] += 1
        self._pending[reason] += 1
        log.warning("skipped (%s) %s", reason, detail)

    def take(self) -> dict[str, int]:
        delta = {f"{self.prefix}{k}": v for k, v in self._pending.items()}
        self._pending.clear()
        return delta


# ----------------------------------------------------------------------------------------- shards


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Expand brace patterns (``data/shard-{000000..000009}.tar``) and ``::``-joined lists.

    Local paths must exist (the error names the first missing one); URLs are passed through for
    ``webdataset.gopen`` to open.
    """
    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for pattern in patterns for url in wds.shardlists.expand_urls(str(pattern))]
    if not urls:
        raise ValueError(f"no shards given (got {shards!r})")
    for url in urls:
        path = url[len("file:") :] if url.startswith("file:") else url
        if (url.startswith("file:") or not _URL_RE.match(url)) and not os.path.isfile(path):
            raise FileNotFoundError(f"shard not found: {path}")
    return urls


def split_by_rank(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Shards of one DDP rank: disjoint across ranks, together all shards."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    if len(urls) < world_size:
        raise ValueError(
            f"{len(urls)} shard(s) for {world_size} ranks: every rank needs at least one shard of its own; "
            "write the data as more, smaller shards"
        )
    return list(urls[rank::world_size])


def split_by_worker(urls: Sequence[str], worker_id: int, num_workers: int) -> list[str]:
    """Shards of one DataLoader worker within a rank (may be empty when shards < workers)."""
    return list(urls[worker_id::num_workers])


def batches_for_worker(total_batches: int, worker_id: int, num_workers: int, num_rank_shards: int) -> int:
    """This worker's share of the rank's batches; workers without shards get none."""
    active = min(num_workers, num_rank_shards)
    if worker_id >= active:
        return 0
    return total_batches // active + (1 if worker_id < total_batches % active else 0)


# ----------------------------------------------------------------------------------------- stages


def shard_source(
    urls: Sequence[str],
    rng: Optional[np.random.Generator],
    cycle: bool,
    counter: SkipCounter,
    fallback_urls: Sequence[str] = (),
) -> Iterator[str]:
    """Yield shard URLs: one pass in order, or endless reshuffled passes when ``cycle``.

    When a whole cycling pass over ``urls`` gives no window (say, a worker whose only shard is
    corrupt), the worker widens to ``fallback_urls`` (all of its rank's shards) so its batch quota
    is still met from good data; only when those give nothing either is it an error.
    """
    while True:
        windows_before = counter.windows
        order = list(urls)
        if rng is not None:
            rng.shuffle(order)
        yield from order
        if not cycle:
            return
        if counter.windows > windows_before:
            continue
        if fallback_urls and set(fallback_urls) != set(urls):
            log.warning("shards %s gave no usable window; this worker now reads all of its rank's shards", list(urls))
            urls = fallback_urls
            continue
        raise NoUsableDataError(f"shards {list(urls)} gave no usable training window in a whole pass; skips so far: {dict(counter.total)}")


def read_tar_episodes(urls: Iterable[str], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Group tar members by key into raw episodes; only :data:`EPISODE_MEMBERS` are ever read."""
    for url in urls:
        try:
            stream = wds.gopen(url)
        except Exception as exc:  # gopen raises OSError, ValueError or its own errors for URLs
            counter.add("shard_unreadable", f"{url}: {exc}")
            continue
        current: Optional[dict[str, Any]] = None
        try:
            with contextlib.closing(stream), tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    match = _NAME_RE.match(info.name)
                    if not info.isreg() or match is None:
                        continue
                    key, member = match.group(1), match.group(2).lower()
                    if member not in EPISODE_MEMBERS:
                        continue  # never read: a .pyd/.pickle member stays bytes on disk
                    if current is not None and key != current["__key__"]:
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": key, "__url__": url}
                    current[member] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            counter.add("tar_error", f"{url}: {exc}")
            continue  # the episode being read when the tar broke is incomplete: dropped
        if current is not None:
            yield current


def parse_episode(raw: dict[str, Any], counter: SkipCounter) -> Optional[Trajectory]:
    """Check an episode's members and metadata and parse its trajectory; None (counted) when unusable."""
    where = f"{raw['__url__']}:{raw['__key__']}"
    missing = [m for m in EPISODE_MEMBERS if m not in raw]
    if missing:
        counter.add("missing_member", f"{where} lacks {missing}")
        return None
    try:
        meta = json.loads(raw[META_MEMBER])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        counter.add("bad_meta", f"{where}: {exc}")
        return None
    try:
        return Trajectory.from_npz_bytes(raw[TRAJ_MEMBER])
    except BadTrajectoryError as exc:
        counter.add("bad_trajectory", f"{where}: {exc}")
        return None


def episode_windows(
    episodes: Iterable[dict[str, Any]],
    config: WindowConfig,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    counter: SkipCounter,
    video_backend: Backend = "auto",
) -> Iterator[Window]:
    """Validate, decode and cut each raw episode; bad ones are counted and skipped."""
    for raw in episodes:
        traj = parse_episode(raw, counter)
        if traj is None:
            continue
        where = f"{raw['__url__']}:{raw['__key__']}"
        try:
            video = decode_video(raw[VIDEO_MEMBER], image_size, video_backend)
        except UndecodableVideoError as exc:
            counter.add("undecodable_video", f"{where}: {exc}")
            continue
        if len(video) < len(traj):
            counter.add("video_shorter_than_poses", f"{where}: {len(video)} frames for {len(traj)} poses")
            continue
        drift = float(np.abs((video.times[: len(traj)] - video.times[0]) - (traj.t - traj.t[0])).max())
        if drift > config.tolerance:
            counter.add("frame_times_mismatch", f"{where}: frame times drift {drift:.3f}s from the poses' times")
            continue
        windows = cut_windows(video.frames, video.times, traj, config, rng, key=raw["__key__"])
        if not windows:
            counter.add("too_short", f"{where}: {len(traj)} poses over {traj.t[-1] - traj.t[0]:.2f}s")
            continue
        counter.windows += len(windows)
        yield from windows


def shuffle_buffer(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: fill ``size`` items, then emit a random one per new item."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def batched(windows: Iterable[Window], batch_size: int, counter: SkipCounter, partial: bool) -> Iterator[dict[str, Any]]:
    """Collate ``batch_size`` windows; each batch carries the worker's new skip counts."""
    shared_memory = get_worker_info() is not None
    iterator = iter(windows)
    while True:
        chunk = list(itertools.islice(iterator, batch_size))
        if not chunk or (len(chunk) < batch_size and not partial):
            return
        batch = collate_windows(chunk, shared_memory)
        batch["skip_counts"] = counter.take()
        yield batch


# ---------------------------------------------------------------------------------------- dataset


class NavWindowDataset(IterableDataset):
    """Batches of training windows streamed from episode shards (see the module docstring).

    Args:
        urls: expanded shard list (:func:`expand_shards`).
        window_config: how windows are cut (timing, goal, augmentation).
        image_size: (height, width) frames are decoded to.
        batch_size: windows per batch (batches are built in the workers).
        rank, world_size: this process's DDP rank and the number of ranks.
        samples_per_epoch: windows per epoch over all ranks; fixes the batch count per rank and makes
            each worker cycle its shards. None: one pass over the shards (validation, tools).
        shuffle_buffer: windows in the shuffle buffer (<= 1: stream order, no shuffling).
        seed: base seed; the effective seed of a worker is (seed, epoch, rank, worker).
        split: prefix of the skip-count names ("train/", "val/").
        video_backend: "auto" (decord, PyAV fallback), "decord" or "pyav".
    """

    def __init__(
        self,
        urls: Sequence[str],
        window_config: WindowConfig,
        image_size: tuple[int, int],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        samples_per_epoch: Optional[int] = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        split: str = "train/",
        video_backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        self.rank_urls = split_by_rank(urls, rank, world_size)
        self.window_config = window_config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.split = split
        self.video_backend = video_backend
        # shared with the worker processes, so set_epoch reaches persistent workers too
        self._epoch = torch.multiprocessing.Value("q", 0)

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle (shard order, windows, goal and augmentation draws) for a new epoch."""
        with self._epoch.get_lock():
            self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @property
    def batches_per_rank(self) -> Optional[int]:
        """Batches every rank yields per epoch (None: one pass over the shards, data-dependent)."""
        if self.samples_per_epoch is None:
            return None
        return math.ceil(self.samples_per_epoch / (self.world_size * self.batch_size))

    def __len__(self) -> int:
        if self.batches_per_rank is None:
            raise TypeError("a single pass over shards has no known length; set samples_per_epoch")
        return self.batches_per_rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        urls = split_by_worker(self.rank_urls, worker_id, num_workers)
        if not urls:
            return iter(())
        cycle = self.samples_per_epoch is not None
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker_id])
        counter = SkipCounter(self.split)
        shuffle = self.shuffle_buffer > 1
        pipeline = wds.DataPipeline(
            functools.partial(shard_source, urls, rng if shuffle else None, cycle, counter, self.rank_urls),
            functools.partial(read_tar_episodes, counter=counter),
            functools.partial(
                episode_windows,
                config=self.window_config,
                image_size=self.image_size,
                rng=rng,
                counter=counter,
                video_backend=self.video_backend,
            ),
            functools.partial(shuffle_buffer, size=self.shuffle_buffer, rng=rng),
            functools.partial(batched, batch_size=self.batch_size, counter=counter, partial=not cycle),
        )
        batches = iter(pipeline)
        if cycle:
            quota = batches_for_worker(self.batches_per_rank or 0, worker_id, num_workers, len(self.rank_urls))
            batches = itertools.islice(batches, quota)
        return batches

