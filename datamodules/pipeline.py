"""The streaming shard pipeline: shards -> rank -> worker -> tar -> decode -> windows -> shuffle -> batches.

Written as an explicit ``webdataset.DataPipeline`` of small stages (the open_clip style) rather
than ``wds.WebDataset(...)`` defaults, because every stage here has a decision that matters:

- **shards**: brace patterns / lists / URLs (``pipe:``, ``http://`` go through ``wds.gopen``); a
  local path that does not exist is an error naming it, before any worker starts.
- **rank split**: shard ``i`` goes to rank ``i % world_size``, so ranks read disjoint shards; there
  must be at least as many shards as ranks.
- **worker split**: the rank's shards are dealt to its DataLoader workers the same way; when a
  rank has fewer shards than workers, the workers sharing a shard split its episodes (worker parts
  of a shard take every n-th episode, :func:`worker_shard_parts`), so one shard of a user's
  recordings keeps every worker decoding. A shard with fewer episodes than its workers still
  leaves workers idle, and the worker says so in the log with how to reshard.
- **tar**: only the ``mp4``, ``traj.npz`` and ``json`` members are read; anything else in the tar
  (``.pyd``, ``.pickle``, ...) is skipped without reading its bytes, so data can never run code.
  Members larger than ``max_member_mb`` are skipped from their header, unread (a small gzip shard
  can hold a GiB member); a key that repeats within a shard is skipped, never paired with another
  episode's members.
- **episode decode + windows** (in the workers): each episode is decoded once, into shared memory,
  and cut into many windows as index rows (:class:`datamodules.windows.EpisodeWindows`) as soon as
  its video is opened; the worker sends the windows in slices as their frames decode (the frames
  travel once, as a shared-memory handle), with its skip-counter delta (:class:`WorkerEpisode`).
  Persistent workers decode into recycled shared memory (:mod:`datamodules.frame_pool`): a slot the
  training process has let go of, already mapped in both processes, instead of fresh pages per episode.
- **colour jitter** (training): fused into the batch gather (a compiled kernel that copies, mirrors
  and jitters each frame in one pass), in the workers on each window's frames, or carried to
  wherever the batch lives (:mod:`datamodules.augment`).
- **shuffle buffer** across episodes and workers, in the consuming process, seeded by (seed,
  epoch, rank): a new order every epoch. Workers draw goals and augmentation with (seed, epoch,
  rank, worker).
- **batches** are gathered in the consuming process, each context frame copied once from its
  episode into the batch; each batch carries the skip counts that arrived since the previous one.

Why windows are cut in the consumer and not in the workers: a window holds k frames and, at
``window_stride`` 1, every frame is in k windows. Batches built in workers would push k copies of
every decoded frame through fresh shared memory; sending the episode once and gathering here
costs one copy per output frame and no IPC beyond the decoded frames themselves.

Bad input is skipped and counted (reasons in :data:`SKIP_REASONS`), never fatal. The DataModule
sums the ``batch["skip_counts"]`` deltas in the main process.

DDP without hangs: with ``samples_per_epoch`` set, every rank yields exactly
``ceil(samples_per_epoch / (world_size * batch_size))`` full batches per epoch; the rank's windows
are dealt as quotas over its workers that have shards, and each worker cycles over its own shards
(reshuffled every pass) until its quota is sent. Ranks with less or worse data simply revisit their
shards more often. A worker whose shards give no window in a whole pass reads its rank's other
shards instead; when none of the rank's shards gives a window it raises :class:`NoUsableDataError`
instead of spinning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import mmap
import os
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.augment import JITTER_PLACEMENTS, JitterPlacement, batch_colour_jitter, defer_colour_jitter, gather_kernel, jittered_clips
from datamodules.episode import META_MEMBER, TRAJ_MEMBER, VIDEO_MEMBER, BadTrajectoryError, Trajectory
from datamodules.episode_checks import video_problem
from datamodules.frame_pool import FramePool, PooledFrames, PooledRef, released_table
from datamodules.video_decode import Backend, UndecodableVideoError, open_video, require_backend
from datamodules.windows import EpisodeWindows, Window, WindowConfig, collate_windows, cut_windows

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
    "duplicate_key",  # a sample key seen before in the same shard: its members cannot be told apart
    "oversize_member",  # a member larger than max_member_mb: skipped from its header, never read
)

#: Largest tar member read by default. Every member is read into memory whole, and a gzip shard of
#: a few MB can unpack to a GiB member; an episode's mp4 of 5 minutes at 1080p is ~400 MB.
DEFAULT_MAX_MEMBER_MB = 512.0

#: Seed word of the consumer's shuffle, distinct from every worker id (a trailing 0 would not be:
#: numpy seeds [s, e, r] and [s, e, r, 0] identically).
_SHUFFLE_STREAM = 2**32 - 1

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
        raise ValueError(f"{len(urls)} shard(s) for {world_size} ranks: every rank needs at least one shard of its own; write the data as more, smaller shards")
    return list(urls[rank::world_size])


@dataclass(frozen=True)
class ShardPart:
    """The episodes of one shard a worker reads: those whose position ``i`` in the shard has ``i % parts == part``."""

    url: str
    part: int = 0
    parts: int = 1

    def owns(self, index: int) -> bool:
        return index % self.parts == self.part


def worker_shard_parts(urls: Sequence[str], worker_id: int, num_workers: int) -> list[ShardPart]:
    """What one DataLoader worker of a rank reads.

    With at least as many shards as workers, whole shards are dealt round robin. With fewer, shard
    ``s`` is shared by workers ``s, s + S, s + 2S, ...`` (S shards), which split its episodes:
    every worker decodes, and together they read every episode once.
    """
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker {worker_id} outside {num_workers} workers")
    if len(urls) >= num_workers:
        return [ShardPart(url) for url in urls[worker_id::num_workers]]
    shard = worker_id % len(urls)
    sharing = len(range(shard, num_workers, len(urls)))
    return [ShardPart(urls[shard], worker_id // len(urls), sharing)]


def batches_for_worker(total_batches: int, worker_id: int, num_workers: int) -> int:
    """This worker's share of the rank's batches (every worker has episodes to read, see :func:`worker_shard_parts`)."""
    return total_batches // num_workers + (1 if worker_id < total_batches % num_workers else 0)


# ----------------------------------------------------------------------------------------- stages


def shard_source(
    parts: Sequence[ShardPart],
    rng: Optional[np.random.Generator],
    cycle: bool,
    counter: SkipCounter,
    fallback_urls: Sequence[str] = (),
) -> Iterator[ShardPart]:
    """Yield shard parts: one pass in order, or endless reshuffled passes when ``cycle``.

    When a whole cycling pass over ``parts`` gives no window (say, a worker whose only shard is
    corrupt, or whose part of a shared shard holds no episode), the worker widens to
    ``fallback_urls`` (all of its rank's shards, whole) so its batch quota is still met from good
    data; only when those give nothing either is it an error.
    """
    parts = list(parts)
    while True:
        windows_before = counter.windows
        order = list(parts)
        if rng is not None:
            rng.shuffle(order)
        yield from order
        if not cycle:
            return
        if counter.windows > windows_before:
            continue
        fallback = [ShardPart(url) for url in fallback_urls]
        if fallback and set(fallback) != set(parts):
            log.warning("%s gave no usable window; this worker now reads all of its rank's shards", [p.url for p in parts])
            parts = fallback
            continue
        raise NoUsableDataError(f"shards {[p.url for p in parts]} gave no usable training window in a whole pass; skips so far: {dict(counter.total)}")


@dataclass
class _Sample:
    """Members of one key being read from a tar; ``rejected`` ones are read no further and never yielded."""

    key: str
    index: int  # position of the sample in its shard
    members: dict[str, bytes]
    rejected: bool = False


def read_tar_episodes(parts: Iterable[ShardPart | str], counter: SkipCounter, max_member_mb: float = DEFAULT_MAX_MEMBER_MB) -> Iterator[dict[str, Any]]:
    """Group tar members by key into raw episodes; only :data:`EPISODE_MEMBERS` are ever read.

    A worker reads only the samples its :class:`ShardPart` owns (the others' members are skipped
    unread) and counts only their skips; tar errors count once, in part 0. Every member's size is
    checked in its header before a byte of it is read: one over ``max_member_mb`` skips its sample
    (``oversize_member``). A key seen earlier in the same shard, or a member repeated within a key,
    skips the sample (``duplicate_key``): which bytes belong together can no longer be told, and
    pairing one episode's video with another's poses would be silent.
    """
    limit = int(max_member_mb * 2**20)
    for part in parts:
        part = ShardPart(part) if isinstance(part, str) else part
        try:
            stream = wds.gopen(part.url)
        except Exception as exc:  # gopen raises OSError, ValueError or its own errors for URLs
            if part.part == 0:
                counter.add("shard_unreadable", f"{part.url}: {exc}")
            continue
        sample: Optional[_Sample] = None
        seen: set[str] = set()
        owned = 0
        try:
            with contextlib.closing(stream), tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    match = _NAME_RE.match(info.name)
                    if not info.isreg() or match is None:
                        continue
                    key, member = match.group(1), match.group(2).lower()
                    if member not in EPISODE_MEMBERS:
                        continue  # never read: a .pyd/.pickle member stays bytes on disk
                    if sample is None or key != sample.key:
                        if sample is not None and part.owns(sample.index) and not sample.rejected:
                            yield {"__key__": sample.key, "__url__": part.url, **sample.members}
                        sample = _Sample(key, 0 if sample is None else sample.index + 1, {})
                        owned += part.owns(sample.index)
                        if key in seen:
                            _reject(sample, part, counter, "duplicate_key", f"{part.url}:{key} appears again later in the shard")
                        seen.add(key)
                    if sample.rejected or not part.owns(sample.index):
                        continue
                    if member in sample.members:
                        _reject(sample, part, counter, "duplicate_key", f"{part.url}:{key} has two {member} members")
                    elif info.size > limit:
                        _reject(
                            sample,
                            part,
                            counter,
                            "oversize_member",
                            f"{part.url}:{info.name} is {info.size / 2**20:.0f} MiB, over max_member_mb={max_member_mb:g}; "
                            "raise it, or cut recordings into shorter episodes (make_shards.py --max-episode-seconds)",
                        )
                    else:
                        sample.members[member] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if part.part == 0:
                counter.add("tar_error", f"{part.url}: {exc}")
            continue  # the episode being read when the tar broke is incomplete: dropped
        if sample is not None and part.owns(sample.index) and not sample.rejected:
            yield {"__key__": sample.key, "__url__": part.url, **sample.members}
        if part.parts > 1 and owned == 0:
            total = 0 if sample is None else sample.index + 1
            log.warning(
                "%s holds %d episode(s) for %d workers: this worker has none and idles. Write at least as many "
                "shards as workers, or cut long recordings into more episodes (make_shards.py --max-episode-seconds 60)",
                part.url,
                total,
                part.parts,
            )


def _reject(sample: _Sample, part: ShardPart, counter: SkipCounter, reason: str, detail: str) -> None:
    """Drop a sample's members and count it once, by the worker that owns it."""
    if not sample.rejected and part.owns(sample.index):
        counter.add(reason, detail)
    sample.rejected = True
    sample.members.clear()


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


class SharedMemoryFullError(RuntimeError):
    """Shared memory cannot hold the next decoded episode (a container with a small /dev/shm)."""


_SHM_DIR = "/dev/shm"  # where torch's shared tensors live on Linux (shm_open)


def _shared_memory_free_bytes() -> Optional[int]:
    """Free bytes in the shared-memory filesystem, None where there is none to ask (not Linux)."""
    try:
        stat = os.statvfs(_SHM_DIR)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class _SharedFrames:
    """Frame allocator that decodes straight into shared memory and keeps the tensor that owns it.

    Inside a DataLoader worker the decoded episode then reaches the main process as a handle to the
    same pages (torch's fd sharing): no copy, and no page faulted twice. Every page is touched
    when allocated (the decoder would fault each one in anyway): the consumer maps an episode
    while later frames still decode, and the kernel maps only pages that exist already around a
    fault, 16 at a time, so without this the consumer faulted once per page of not-yet-decoded
    frames (7x the faults, a third of its CPU on one shard of small recordings).
    """

    def __init__(self, pool: Optional[FramePool] = None) -> None:
        self.pool = pool
        self.tensor: Optional[torch.Tensor] = None

    def __call__(self, shape: tuple[int, int, int, int]) -> np.ndarray:
        if self.pool is not None:  # a recycled slot's pages are mapped already (datamodules.frame_pool)
            self.tensor = self.pool.take(shape)
            return self.tensor.numpy()
        self.tensor = touched_shared_frames(shape)
        return self.tensor.numpy()


def touched_shared_frames(shape: tuple[int, ...]) -> torch.Tensor:
    """:func:`shared_frames` with every page faulted in now (see :class:`_SharedFrames` for why)."""
    tensor = shared_frames(shape)
    tensor.numpy().reshape(-1)[:: mmap.PAGESIZE] = 0
    return tensor


def shared_frames(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory; :class:`SharedMemoryFullError` when it cannot fit."""
    size = int(np.prod(shape))
    free = _shared_memory_free_bytes()
    if free is not None and size > free:  # tmpfs would accept it and SIGBUS on the first write
        raise SharedMemoryFullError(
            f"a decoded episode needs {size / 2**20:.1f} MiB of shared memory but {_SHM_DIR} has {free / 2**20:.1f} MiB free: "
            "give the container more (docker --shm-size), or lower image_size, shuffle_buffer or the episode length"
        )
    storage = torch.UntypedStorage._new_shared(size)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


#: Fewest windows an episode's record carries while the episode is still being decoded (its last
#: record carries the rest): small enough that the consumer gathers an episode's windows while its
#: later frames decode, large enough that records stay few (each one is pickled and received).
RECORD_MIN_WINDOWS = 256


def episode_windows(
    episodes: Iterable[dict[str, Any]],
    config: WindowConfig,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    counter: SkipCounter,
    video_backend: Backend = "auto",
    shared_memory: bool = False,
    min_windows: Optional[int] = None,
    pool: Optional[FramePool] = None,
) -> Iterator[EpisodeWindows]:
    """Validate, decode and cut each raw episode; bad ones are counted and skipped.

    With ``shared_memory`` (inside a DataLoader worker) frames are decoded into shared memory, into
    ``pool``'s recycled slots when given (persistent workers, :mod:`datamodules.frame_pool`).
    An episode's windows are cut as soon as its video is opened (decord knows every frame's time
    before decoding) and come out in slices, each as soon as the frames its windows use are
    decoded (at least ``min_windows`` per slice, default :data:`RECORD_MIN_WINDOWS`, except the last): the consumer starts gathering an
    episode's windows while its later frames decode, instead of all at once after the last frame,
    which left one core idle at the end of every pass over few, long recordings. When decord fails
    before an episode's first window left (with ``video_backend`` "auto"), PyAV decodes the episode
    instead, as :func:`datamodules.video_decode.decode_video` does; a video that fails later is
    counted (``undecodable_video``) and its windows already sent stay.
    """
    min_windows = RECORD_MIN_WINDOWS if min_windows is None else min_windows
    for raw in episodes:
        traj = parse_episode(raw, counter)
        if traj is None:
            continue
        where = f"{raw['__url__']}:{raw['__key__']}"
        backend = video_backend
        while True:  # once, or twice when decord fails before the episode's first window left: then PyAV
            allocate = _SharedFrames(pool) if shared_memory else None
            try:
                video = open_video(raw[VIDEO_MEMBER], image_size, backend, allocate)
            except UndecodableVideoError as exc:
                counter.add("undecodable_video", f"{where}: {exc}")
                break
            problem = video_problem(video.times, traj, config.tolerance)
            if problem is not None:
                counter.add(problem[0], f"{where}: {problem[1]}")
                break
            frames = allocate.tensor if allocate is not None else video.frames
            windows = cut_windows(frames, video.times, traj, config, rng, key=raw["__key__"])
            if not windows:
                counter.add("too_short", f"{where}: {len(traj)} poses over {traj.t[-1] - traj.t[0]:.2f}s")
                break
            needed = np.maximum.accumulate(windows.frame_indices.max(axis=1))  # the first i windows use frames < needed[i - 1] + 1
            sent = 0
            try:
                for decoded in video.chunks():
                    ready = len(windows) if decoded >= len(video) else int(np.searchsorted(needed, decoded, side="left"))
                    if ready - sent >= min_windows or (ready == len(windows) and ready > sent):
                        counter.windows += ready - sent
                        yield windows.rows(sent, ready)
                        sent = ready
            except UndecodableVideoError as exc:
                if sent == 0 and backend == "auto" and video.backend == "decord":
                    backend = "pyav"  # as decode_video does: PyAV decodes the whole file instead
                    continue
                counter.add("undecodable_video", f"{where}: {exc} (after {sent} of its {len(windows)} windows)")
            break


@dataclass
class WorkerEpisode:
    """What a worker sends per slice of a decoded episode: its windows and the skips counted since the last record.

    A worker's last record has ``windows=None`` and carries the counts of its stream's tail. Between
    processes, a record whose windows use the same frames as the worker's previous record carries
    ``windows.frames=None`` and ``same_frames=True`` (:func:`send_frames_once`): handing a
    shared-memory tensor to another process again costs milliseconds (a socket connection to fetch
    its file descriptor), as much as gathering a hundred small windows. Frames decoded into a
    recycled slot travel as ``pooled`` (which slot, which use; :mod:`datamodules.frame_pool`) with
    ``windows.frames=None``.
    """

    windows: Optional[EpisodeWindows]
    skip_counts: dict[str, int]
    worker: int = 0
    same_frames: bool = False
    pooled: Optional[PooledRef] = None


def with_quota(episodes: Iterable[EpisodeWindows], quota: Optional[int], counter: SkipCounter) -> Iterator[WorkerEpisode]:
    """Records of ``episodes`` up to ``quota`` windows in all (the last one cut), then the final counts."""
    remaining = quota
    if remaining is None or remaining > 0:
        for windows in episodes:
            if remaining is not None:
                windows = windows.head(min(remaining, len(windows)))
                remaining -= len(windows)
            yield WorkerEpisode(windows, counter.take())
            if remaining is not None and remaining <= 0:
                break
    yield WorkerEpisode(None, counter.take())


def place_colour_jitter(records: Iterable[WorkerEpisode], placement: JitterPlacement, shared_memory: bool = False) -> Iterator[WorkerEpisode]:
    """Leave each record's colour jitter to the batch gather ("loader"), apply it here ("workers"),
    or hand it on with the windows for the batch to carry ("batch").

    In "workers" a record becomes one record per clip chunk (:func:`datamodules.augment.jittered_clips`,
    clips in shared memory inside a DataLoader worker); the first carries the skip counts.
    """
    for record in records:
        if record.windows is None or record.windows.jitter is None or placement == "loader":
            yield record
        elif placement == "batch":
            yield WorkerEpisode(defer_colour_jitter(record.windows), record.skip_counts)
        else:
            counts = record.skip_counts
            for clips in jittered_clips(record.windows, shared_frames if shared_memory else None):
                yield WorkerEpisode(clips, counts)
                counts = {}


def send_frames_once(records: Iterable[WorkerEpisode], worker: int, pool: Optional[FramePool] = None) -> Iterator[WorkerEpisode]:
    """Records as a DataLoader worker sends them: stamped with the worker, frames left out when the
    previous record sent them, or replaced by a reference when they lie in one of ``pool``'s slots."""
    previous = None
    for record in records:
        record.worker = worker
        if record.windows is not None:
            pooled = pool.ref(record.windows.frames) if pool is not None else None
            if pooled is not None:
                record.windows = dataclasses.replace(record.windows, frames=None)
                record.pooled = pooled
            elif record.windows.frames is previous:
                record.windows = dataclasses.replace(record.windows, frames=None)
                record.same_frames = True
            else:
                previous = record.windows.frames
        yield record


def records_to_windows(records: Iterable[WorkerEpisode], skip_counts: Counter[str], pooled: Optional[PooledFrames] = None) -> Iterator[Window]:
    """The windows of every record, one by one; each record's skip counts are added to ``skip_counts``.

    A record sent without its frames (:func:`send_frames_once`) gets those of its worker's previous
    record, or a view of the worker's slot it names (``pooled``, the loader's :class:`PooledFrames`).
    """
    frames: dict[int, torch.Tensor] = {}
    for record in records:
        skip_counts.update(record.skip_counts)
        if record.windows is not None:
            if record.pooled is not None:
                if pooled is None:
                    raise RuntimeError("a worker sent pooled frames to a loader without a frame pool")
                record.windows.frames = pooled.frames(record.worker, record.pooled)
            elif record.same_frames:
                record.windows.frames = frames[record.worker]
            else:
                frames[record.worker] = record.windows.frames
            yield from record.windows


def shuffle_buffer(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: fill ``size`` items, then emit a random one per new item.

    The slots are drawn 1024 at a time: one ``rng.integers`` call per item cost 2 µs, a tenth of
    what a small window costs to gather.
    """
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    slots: list[int] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        if not slots:
            slots = rng.integers(size, size=1024).tolist()[::-1]
        i = slots.pop()
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def batched(windows: Iterable[Window], batch_size: int, skip_counts: Counter[str], partial: bool) -> Iterator[dict[str, Any]]:
    """Collate ``batch_size`` windows; each batch carries the skip counts added since the previous one.

    Batches of windows whose jitter was deferred ("batch" placement) also carry ``colour_jitter``
    [B, 3], for :func:`datamodules.augment.apply_colour_jitter` where the batch ends up.

    The next chunk is read before a batch is emitted, so the last batch also carries the counts
    of records that arrived after its windows (a stream's tail of broken episodes).
    """
    iterator = iter(windows)
    chunk = list(itertools.islice(iterator, batch_size))
    while chunk and (len(chunk) == batch_size or partial):
        following = list(itertools.islice(iterator, batch_size))
        batch = collate_windows(chunk)
        factors = batch_colour_jitter(chunk)
        if factors is not None:
            batch["colour_jitter"] = factors
        batch["skip_counts"] = dict(skip_counts)
        skip_counts.clear()
        yield batch
        chunk = following


# ---------------------------------------------------------------------------------------- loaders


class EpisodeStream(IterableDataset):
    """The worker side: this worker's shards -> tar -> decode -> windows, one :class:`WorkerEpisode` per episode.

    Args are those of :class:`NavWindowLoader`; ``batches_per_rank`` None means one pass over the
    shards, otherwise each worker cycles its shards until its share of the rank's windows is sent.
    ``released`` (persistent workers): the loader's :func:`datamodules.frame_pool.released_table`;
    each worker process then decodes into its own :class:`datamodules.frame_pool.FramePool`.
    """

    def __init__(
        self,
        rank_urls: Sequence[str],
        window_config: WindowConfig,
        image_size: tuple[int, int],
        batch_size: int,
        batches_per_rank: Optional[int],
        *,
        rank: int,
        shuffle_shards: bool,
        seed: int,
        split: str,
        video_backend: Backend,
        colour_jitter: JitterPlacement,
        max_member_mb: float,
        released: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        self.rank_urls = list(rank_urls)
        self.window_config = window_config
        self.image_size = image_size
        self.batch_size = batch_size
        self.batches_per_rank = batches_per_rank
        self.rank = rank
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.split = split
        self.video_backend = video_backend
        self.colour_jitter = colour_jitter
        self.max_member_mb = max_member_mb
        self.released = released
        self._pool: Optional[FramePool] = None  # made in the worker process, kept across its epochs
        # shared with the worker processes, so set_epoch reaches persistent workers too
        self._epoch = torch.multiprocessing.Value("q", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        with self._epoch.get_lock():
            self._epoch.value = int(epoch)

    def __iter__(self) -> Iterator[WorkerEpisode]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        parts = worker_shard_parts(self.rank_urls, worker_id, num_workers)
        counter = SkipCounter(self.split)
        cycle = self.batches_per_rank is not None
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker_id])
        quota = batches_for_worker(self.batches_per_rank, worker_id, num_workers) * self.batch_size if cycle else None
        if info is not None and self.released is not None and self._pool is None:
            self._pool = FramePool(self.released[worker_id], touched_shared_frames)
        pipeline = wds.DataPipeline(
            functools.partial(shard_source, parts, rng if self.shuffle_shards else None, cycle, counter, self.rank_urls),
            functools.partial(read_tar_episodes, counter=counter, max_member_mb=self.max_member_mb),
            functools.partial(
                episode_windows,
                config=self.window_config,
                image_size=self.image_size,
                rng=rng,
                counter=counter,
                video_backend=self.video_backend,
                shared_memory=info is not None,
                pool=self._pool if info is not None else None,
            ),
            functools.partial(with_quota, quota=quota, counter=counter),
            functools.partial(place_colour_jitter, placement=self.colour_jitter, shared_memory=info is not None),
        )
        return iter(pipeline) if info is None else send_frames_once(pipeline, worker_id, self._pool)


class NavWindowLoader:
    """Batches of training windows streamed from episode shards (see the module docstring).

    Workers decode and cut episodes (:class:`EpisodeStream` in a DataLoader); this object, in the
    consuming process, shuffles their windows and gathers the batches.

    Args:
        urls: expanded shard list (:func:`expand_shards`).
        window_config: how windows are cut (timing, goal, augmentation).
        image_size: (height, width) frames are decoded to.
        batch_size: windows per batch.
        rank, world_size: this process's DDP rank and the number of ranks.
        samples_per_epoch: windows per epoch over all ranks; fixes the batch count per rank and makes
            each worker cycle its shards. None: one pass over the shards (validation, tools).
        shuffle_buffer: windows in the shuffle buffer (<= 1: stream order, no shuffling).
        seed: base seed; worker w draws with (seed, epoch, rank, w), the shuffle with its own stream.
        split: prefix of the skip-count names ("train/", "val/").
        video_backend: "auto" (decord, PyAV fallback), "decord", "pyav" or "torchcodec".
        num_workers: DataLoader worker processes decoding episodes (0: decode in this process).
            With fewer shards per rank than workers, workers split the shards' episodes.
        persistent_workers: keep the workers alive between epochs. Persistent workers also decode into
            recycled shared memory (:mod:`datamodules.frame_pool`): no fresh pages per episode.
        prefetch_factor: records each worker may hold ready: decoded episodes, or clip chunks with the
            jitter in the workers (memory: whole episodes, or chunks).
        colour_jitter: where the window config's colour jitter runs: "loader" (fused into this
            process's batch gather), "workers" (clips jittered in the workers) or "batch" (batches
            carry ``colour_jitter`` factors for :func:`datamodules.augment.apply_colour_jitter`, run
            where the batch lives). Batches arrive jittered in the first two.
        max_member_mb: largest tar member read; larger ones skip their episode unread.

    Memory: every episode with a window in the shuffle buffer, and every prefetched one, stays
    decoded (T x H x W x 3 bytes); with workers they live in shared memory (/dev/shm), and an
    episode that does not fit raises :class:`SharedMemoryFullError` rather than crashing a worker.
    With colour jitter in the workers, each window instead holds its own k frames, sent in chunks
    of :data:`datamodules.augment.WORKER_CLIP_CHUNK` windows.
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
        num_workers: int = 0,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        colour_jitter: JitterPlacement = "loader",
        max_member_mb: float = DEFAULT_MAX_MEMBER_MB,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if colour_jitter not in JITTER_PLACEMENTS:
            raise ValueError(f"colour_jitter must be one of {JITTER_PLACEMENTS}, got {colour_jitter!r}")
        if max_member_mb <= 0:
            raise ValueError(f"max_member_mb must be > 0, got {max_member_mb}")
        require_backend(video_backend)  # here, not once per episode in every worker
        gather_kernel()  # compiled (or loaded from its cache) once, here: forked workers inherit it
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        rank_urls = split_by_rank(urls, rank, world_size)
        released = released_table(num_workers) if num_workers > 0 and persistent_workers else None
        self.pooled_frames = PooledFrames(released) if released is not None else None
        if 0 < len(rank_urls) < num_workers:
            log.info(
                "%d shard(s) for %d workers on rank %d: the workers split each shard's episodes; a shard with fewer "
                "episodes than its workers leaves some idle (make_shards.py --max-episode-seconds cuts long recordings)",
                len(rank_urls),
                num_workers,
                rank,
            )
        self.stream = EpisodeStream(
            rank_urls,
            window_config,
            (int(image_size[0]), int(image_size[1])),
            batch_size,
            self.batches_per_rank,
            rank=rank,
            shuffle_shards=shuffle_buffer > 1,
            seed=seed,
            split=split,
            video_backend=video_backend,
            colour_jitter=colour_jitter,
            max_member_mb=max_member_mb,
            released=released,
        )
        self.episodes: Iterable[WorkerEpisode] = self.stream
        if num_workers > 0:
            self.episodes = DataLoader(
                self.stream,
                batch_size=None,
                num_workers=num_workers,
                persistent_workers=persistent_workers,
                prefetch_factor=prefetch_factor,
            )

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle (shard order, windows, goal and augmentation draws) for a new epoch."""
        self.stream.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

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
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, _SHUFFLE_STREAM])
        skip_counts: Counter[str] = Counter()
        windows = records_to_windows(self.episodes, skip_counts, self.pooled_frames)
        return batched(shuffle_buffer(windows, self.shuffle_buffer, rng), self.batch_size, skip_counts, partial=self.batches_per_rank is None)
