"""Recycled shared memory for decoded episodes: a worker decodes into slots the consumer has let go of.

Without it every decoded episode gets a fresh shared-memory segment. The kernel hands out fresh
pages zeroed, one fault each, in the worker that decodes into them and again in the training
process that maps them; on small recordings (160x120 decodes at 0.15 ms a frame) that was a fifth
of the loader's cost over pure decoding (README, "Data pipeline throughput"). A pool keeps each
worker's segments ("slots") mapped in both processes and reuses a slot once every window cut from
its last episode has left the training process.

The protocol, for persistent DataLoader workers (one worker process per pool, for the loader's life):

- the training process creates ``released``, an int64 [workers, slots] tensor in shared memory,
  before the workers start; each worker owns one row;
- a worker hands out a slot for an episode under a new *use* number (a random 62-bit base per pool
  plus a counter) and sends, with the episode's records, ``(slot, use, shape)`` instead of the
  frames, plus the slot's tensor the first time the slot is sent (:class:`PooledFrames`);
- the training process builds one frames view per (slot, use); when the last window holding it is
  gone, a finalizer writes ``released[worker, slot] = use``;
- the worker reuses a slot only when its ``released`` entry equals the slot's last use, or when no
  record of that use ever left the worker (an episode skipped after decoding started). A release
  from an earlier pool, or one lost with a discarded record, can never equal a live use: at worst
  a slot stays busy and the worker allocates a fresh, unpooled segment, as without a pool.

No frame a window still references is ever overwritten, and nothing waits: a full pool falls back
to fresh segments. An episode takes the smallest free slot it fits in; when none fits, a free slot
is replaced by one of the episode's size, so slots grow to the longest episodes a worker sees, and
the pool holds at most :data:`POOL_SLOTS` of them per worker.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Slots per worker. The shuffle buffer keeps an episode alive until its last window leaves it, so
#: several episodes per worker are alive at once; beyond this many, episodes get fresh segments.
POOL_SLOTS = 16


@dataclass
class PooledRef:
    """What a record carries instead of its frames: which slot, which use of it, the frames' shape.

    ``storage`` (the slot's whole uint8 tensor) travels only with the slot's first record; the
    training process keeps it mapped from then on.
    """

    slot: int
    use: int
    shape: tuple[int, ...]
    storage: Optional[torch.Tensor] = None


@dataclass
class _Slot:
    tensor: torch.Tensor  # uint8 [capacity], shared memory
    use: int = -1  # the use last handed out (-1: never)
    sent: bool = False  # the training process has the tensor
    use_sent: bool = False  # a record of the current use left the worker (else only the worker ever saw it)
    frames: Optional[torch.Tensor] = None  # the view handed out with ``use``


def released_table(workers: int, slots: int = POOL_SLOTS) -> torch.Tensor:
    """The release counters every pool of a loader shares with the training process (all -2: nothing released)."""
    return torch.full((workers, slots), -2, dtype=torch.int64).share_memory_()


class FramePool:
    """One worker's slots. ``take(shape)`` gives frames to decode into; ``ref(frames)`` says how to send them.

    Args:
        released: this worker's row of :func:`released_table` (shared with the training process).
        allocate: makes a fresh shared uint8 tensor of a given length with its pages faulted in (the
            pipeline's :func:`datamodules.pipeline.touched_shared_frames`, which checks that /dev/shm can hold it).
    """

    def __init__(self, released: torch.Tensor, allocate: Callable[[tuple[int, ...]], torch.Tensor]) -> None:
        self._released = released.numpy()
        self._allocate = allocate
        self._slots: list[_Slot] = []
        self._next_use = int.from_bytes(os.urandom(8), "little") >> 2  # random base: a stale release never matches
        self.fresh = 0  # episodes that got an unpooled segment (pool full): counted for logs and tests

    def __len__(self) -> int:
        return len(self._slots)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A uint8 tensor of ``shape`` in shared memory: a free slot's memory, a new slot, or (pool full) a fresh segment."""
        size = int(np.prod(shape))
        free = [i for i, s in enumerate(self._slots) if not s.use_sent or self._released[i] == s.use]
        fitting = [i for i in free if self._slots[i].tensor.numel() >= size]
        if fitting:
            index = min(fitting, key=lambda i: self._slots[i].tensor.numel())
        elif len(self._slots) < len(self._released):  # grow
            index = len(self._slots)
            self._slots.append(_Slot(self._allocate((size,))))
        elif free:  # replace a free slot too small
            index = free[0]
            self._slots[index] = _Slot(self._allocate((size,)))
        else:
            if not self.fresh:
                log.info("all %d frame-pool slots of this worker are in use: further episodes get fresh shared memory while they are", len(self._slots))
            self.fresh += 1
            return self._allocate((size,)).view(shape)
        slot = self._slots[index]
        slot.use, slot.use_sent, self._next_use = self._next_use, False, self._next_use + 1
        slot.frames = slot.tensor[:size].view(shape)
        return slot.frames

    def ref(self, frames: torch.Tensor) -> Optional[PooledRef]:
        """How to send ``frames``: a :class:`PooledRef` when they are a slot's current use, else None (send the tensor)."""
        for index, slot in enumerate(self._slots):
            if slot.frames is frames:
                ref = PooledRef(index, slot.use, tuple(frames.shape), None if slot.sent else slot.tensor)
                slot.sent = slot.use_sent = True
                return ref
        return None


class PooledFrames:
    """The training process's side: every worker's slots stay mapped; one frames view per (slot, use).

    The view of a worker's latest pooled episode is held here until that worker sends its next
    pooled episode: records of one worker arrive in order, so only then has every slice of the
    episode arrived. (Released earlier, when the windows of the slices received so far had all been
    batched, the worker could reuse the slot while it still had slices of that episode to send.)
    After that the windows alone hold the view, and the last one gone releases the slot.
    """

    def __init__(self, released: torch.Tensor) -> None:
        self._released = released.numpy()
        self._slots: dict[tuple[int, int], torch.Tensor] = {}
        self._latest: dict[int, tuple[int, int, torch.Tensor]] = {}  # worker -> (slot, use, view) of its latest pooled episode

    def frames(self, worker: int, ref: PooledRef) -> torch.Tensor:
        """The frames of a record ``ref`` from ``worker``: the view its episode's earlier slices got, or a new one."""
        if ref.storage is not None:
            self._slots[(worker, ref.slot)] = ref.storage
        latest = self._latest.get(worker)
        if latest is not None and latest[:2] == (ref.slot, ref.use):
            return latest[2]
        storage = self._slots.get((worker, ref.slot))
        if storage is None:
            raise RuntimeError(f"worker {worker} sent slot {ref.slot} before its memory: the records arrived out of order")
        view = storage[: int(np.prod(ref.shape))].view(ref.shape)
        weakref.finalize(view, _release, self._released, worker, ref.slot, ref.use)
        self._latest[worker] = (ref.slot, ref.use, view)
        return view


def _release(released: np.ndarray, worker: int, slot: int, use: int) -> None:
    released[worker, slot] = use
