"""Where the colour jitter of training windows runs: in the DataLoader workers, or where the batch lives.

:func:`datamodules.windows.cut_windows` draws every window's flip and (brightness, contrast,
saturation) factors in the worker, and :func:`datamodules.windows.collate_windows` applies both
while it gathers the window's k frames. Gathering happens in the consuming process, so applied
there the jitter (a few float passes over every output frame, k per window) ran in the training
process and held the loader at 0.33 of the decode ceiling (issue 20). Two placements instead:

- ``"workers"``: the worker gathers and jitters each window's frames itself (:func:`jittered_clips`,
  with collation's own jitter kernel) and sends the finished clips; the consumer only copies them
  into batches. The jitter's CPU time moves off the training process, but it is still spent on the
  machine's cores: where every core is decoding, it costs throughput wherever it runs (it is
  several float passes over k output frames per window, while decoding touches each frame once).
  Memory: every window holds its own k frames instead of sharing the episode's.
- ``"batch"``: the worker sends the episode untouched together with the factors
  (:func:`defer_colour_jitter`); every batch carries them as ``batch["colour_jitter"]`` [B, 3] and
  :func:`apply_colour_jitter` runs where the batch lives: on the accelerator after transfer
  (``NavVideoDataModule.on_after_batch_transfer``) it is a handful of elementwise kernels.

Flips are the same in both: ``collate_windows`` mirrors the frames together with the waypoints
and the goal; the jitter (a per-pixel map and a per-frame mean) commutes with a mirror.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from datamodules.windows import LUMA, EpisodeWindows, Window, colour_jitter

JitterPlacement = Literal["workers", "batch"]
JITTER_PLACEMENTS: tuple[str, ...] = ("workers", "batch")

#: Windows per clip tensor a worker sends in the "workers" placement. A tensor lives until the
#: shuffle buffer has let go of its last window, so small chunks keep memory near
#: shuffle_buffer x k frames; each tensor is one shared-memory segment to hand over, so not too small.
WORKER_CLIP_CHUNK = 32


@dataclass
class DeferredJitterWindows(EpisodeWindows):
    """Windows whose jitter factors travel with the batch instead of being applied by ``collate_windows``.

    ``jitter`` is None (so collation leaves the pixels alone); ``colour_jitter`` holds the [n, 3]
    factors that :func:`batch_colour_jitter` puts into the batch.
    """

    colour_jitter: Optional[np.ndarray] = None


def defer_colour_jitter(windows: EpisodeWindows) -> EpisodeWindows:
    """The same windows with their jitter moved out of collation and into the batch ("batch" placement)."""
    if windows.jitter is None:
        return windows
    values = {f.name: getattr(windows, f.name) for f in dataclasses.fields(EpisodeWindows)}
    values["jitter"] = None
    return DeferredJitterWindows(**values, colour_jitter=windows.jitter)


def jittered_clips(
    windows: EpisodeWindows, allocate: Optional[Callable[[tuple[int, ...]], torch.Tensor]] = None, chunk: int = WORKER_CLIP_CHUNK
) -> Iterator[EpisodeWindows]:
    """The windows with their frames gathered and jittered in this process ("workers" placement).

    Each chunk of windows becomes an :class:`EpisodeWindows` whose frames are the jittered clips
    (window i's k frames at rows i*k .. i*k+k-1, one gather per chunk into a tensor made by
    ``allocate``: shared memory in a DataLoader worker), with no jitter left to apply. Flips stay
    with the rows: the consumer's ``collate_windows`` mirrors frames, waypoints and goal while it
    copies, as for any window. Windows without jitter pass through: their frames stay shared.
    """
    if windows.jitter is None:
        yield windows
        return
    episode = windows.frames.numpy()
    k = windows.frame_indices.shape[1]
    per_row = [f.name for f in dataclasses.fields(EpisodeWindows) if f.name not in ("frames", "jitter", "key")]
    for start in range(0, len(windows), chunk):
        rows = slice(start, min(start + chunk, len(windows)))
        n = rows.stop - start
        shape = (n * k, *episode.shape[1:])
        clips = allocate(shape) if allocate is not None else torch.empty(shape, dtype=torch.uint8)
        np.take(episode, windows.frame_indices[rows].ravel(), axis=0, out=clips.numpy())
        for i, factors in enumerate(windows.jitter[rows].tolist()):
            colour_jitter(clips.numpy()[i * k : (i + 1) * k], *factors)
        values = {name: getattr(windows, name)[rows] for name in per_row}
        values["frame_indices"] = np.arange(n * k, dtype=np.int64).reshape(n, k)
        yield EpisodeWindows(frames=clips, jitter=None, key=windows.key, **values)


def batch_colour_jitter(windows: Sequence[Window]) -> Optional[torch.Tensor]:
    """float32 [B, 3] factors of a batch's deferred windows (1, 1, 1 for the others); None when none has any."""
    deferred = [isinstance(e, DeferredJitterWindows) and e.colour_jitter is not None for e, _ in windows]
    if not any(deferred):
        return None
    factors = np.ones((len(windows), 3), np.float32)
    for slot, ((episode, row), has) in enumerate(zip(windows, deferred)):
        if has:
            factors[slot] = episode.colour_jitter[row]
    return torch.from_numpy(factors)


def apply_colour_jitter(frames: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, k, 3, H, W] jittered per window by factors [B, 3], where the frames are.

    The definition of ``collate_windows``' jitter (brightness x*b; contrast: blend with the frame's
    mean grey by c; saturation: blend with each pixel's grey by s; clamped and rounded once at the
    end). On the CPU that is collation's own numpy kernel (torch's broadcasts over the 3-channel
    axis ran 6x slower there); on an accelerator, :func:`_jitter_tensor`. The result keeps the
    frames' memory layout (channels-last from the loader).
    """
    if frames.device.type != "cpu":
        return _jitter_tensor(frames, factors)
    out = frames.clone(memory_format=torch.preserve_format)
    clips = out.permute(0, 1, 3, 4, 2).numpy()  # [B, k, H, W, 3]: the loader's memory, a view
    if not clips.flags.c_contiguous:
        raise ValueError("frames must have the loader's channels-last memory ([B, k, H, W, 3] contiguous)")
    for clip, window_factors in zip(clips, factors.tolist()):
        colour_jitter(clip, *window_factors)
    return out


def _jitter_tensor(frames: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """:func:`apply_colour_jitter` as elementwise tensor kernels, in float32, for accelerators."""
    x = frames.to(torch.float32)
    b, c, s = (f.view(-1, 1, 1, 1, 1) for f in factors.to(device=x.device, dtype=torch.float32).unbind(-1))
    luma = torch.tensor(LUMA, device=x.device, dtype=torch.float32).view(1, 1, 3, 1, 1)
    grey = (x * luma).sum(2, keepdim=True)  # [B, k, 1, H, W]
    mean = grey.mean(dim=(-2, -1), keepdim=True) * b  # mean grey after brightness, per frame
    y = x * (b * c * s) + grey * (b * c * (1 - s)) + mean * (1 - c)
    out = torch.empty_like(frames)
    out.copy_(y.clamp_(0, 255).round_())
    return out
