"""Decode a whole episode video (mp4 bytes) to resized uint8 frames plus their timestamps.

Training cuts many windows from one episode, so each video is decoded once, sequentially, and
resized by the decoder itself (decord resizes in FFmpeg's scaler on the native thread; resizing
afterwards in numpy/torch would double the cost). Random access per sample would re-seek to a
keyframe and re-decode the GOP for every window, which is ~40x slower.

decord is the fast path; PyAV (FFmpeg too, but always installed with s2e) is the fallback when
decord is missing or refuses a file. TorchCodec is an optional third backend, chosen by name only
(``video_backend: torchcodec``); it needs FFmpeg's shared libraries on the system, and
:func:`require_backend` says what to install when it cannot load. Anything that cannot give at
least one frame raises :class:`UndecodableVideoError`, which the streaming pipeline counts and skips.

Rotation: phones store portrait video as landscape frames plus a display-matrix rotation. One rule
for every backend: frames come out as displayed (rotated), then scaled to the requested size.
decord and TorchCodec do that themselves; the PyAV path applies the frame's rotation in quarter
turns (flips in a display matrix are not applied by any backend).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import av
import numpy as np

try:  # decord is the fast path; without it every video goes through PyAV
    import decord
except ImportError:  # pragma: no cover - depends on the installation
    decord = None

Backend = Literal["auto", "decord", "pyav", "torchcodec"]
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav", "torchcodec")

#: How to get TorchCodec working next to torch 2.13 on CPU (it loads FFmpeg 4-8 from the system).
TORCHCODEC_INSTALL = (
    "pip install torchcodec==0.13.0 (the release for torch 2.13) and FFmpeg's shared libraries "
    "(Debian 12: apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavfilter8 libavdevice59)"
)

#: Makes the uint8 [T, H, W, 3] array the frames are decoded into. The streaming pipeline passes one
#: that allocates shared memory, so a DataLoader worker hands the episode over without a copy.
FrameAllocator = Callable[[tuple[int, int, int, int]], np.ndarray]

#: Frames fetched per decord ``get_batch`` (or TorchCodec range) call: large enough to amortize the
#: call, small enough that the batch copy is not a second full-video buffer.
DECORD_CHUNK = 64


class UndecodableVideoError(ValueError):
    """The bytes are not a video any backend can decode, or the video has no frames."""


class BackendUnavailableError(RuntimeError):
    """A backend named in the configuration cannot run here (not installed, or its libraries do not load)."""


@functools.cache
def backend_unavailable(backend: str) -> Optional[str]:
    """Why ``backend`` cannot run in this environment, or None when it can ("auto" always can: PyAV)."""
    if backend not in BACKENDS:
        return f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}"
    if backend == "decord" and decord is None:
        return "decord is not installed (pip install decord==0.6.0)"
    if backend == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401  (loads its FFmpeg-linked core library)
        except (ImportError, OSError, RuntimeError) as exc:
            return f"TorchCodec cannot load ({str(exc).splitlines()[0]}): {TORCHCODEC_INSTALL}"
    return None


def require_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` (or ValueError for an unknown name) unless ``backend`` can run."""
    reason = backend_unavailable(backend)
    if reason is not None:
        raise (ValueError if backend not in BACKENDS else BackendUnavailableError)(reason)


@dataclass
class DecodedVideo:
    """Frames of one video.

    Attributes:
        frames: uint8 [T, H, W, 3] RGB at the requested size.
        times: float64 [T] presentation time of each frame in seconds, relative to the stream start.
        backend: which decoder produced them ("decord", "pyav" or "torchcodec"), for logs and tests.
    """

    frames: np.ndarray
    times: np.ndarray
    backend: str

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class VideoStream:
    """A video opened for decoding: every frame's time is known, the frames are decoded in chunks.

    ``frames`` (uint8 [T, H, W, 3], made by the allocator up front) fills as :meth:`chunks` is
    iterated: each step decodes the next frames and yields how many are decoded so far, the last
    step ``T``. decord decodes chunk by chunk (its index gives every frame's time before any is
    decoded); PyAV and TorchCodec decode everything when the video is opened and yield once. A
    chunk that fails raises :class:`UndecodableVideoError`; the frames before it stay good.

    The streaming pipeline cuts an episode's windows as soon as it is opened and sends each batch
    of windows as soon as its frames are decoded, so the consuming process gathers an episode's
    first windows while its last frames are still being decoded.
    """

    frames: np.ndarray
    times: np.ndarray
    backend: str
    _chunks: Iterator[int]

    def chunks(self) -> Iterator[int]:
        return self._chunks

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def open_video(data: bytes, size: tuple[int, int], backend: Backend = "auto", allocate: Optional[FrameAllocator] = None) -> VideoStream:
    """Open ``data`` for decoding at ``size`` = (height, width); backends as in :func:`decode_video`.

    With ``"auto"`` a file decord cannot open goes to PyAV; a decord chunk that fails later raises
    from :meth:`VideoStream.chunks` (:func:`decode_video` then decodes the file with PyAV).
    """
    allocate = allocate if allocate is not None else _empty
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"decode size must be positive (height, width), got {size}")
    if not data:
        raise UndecodableVideoError("empty video member (0 bytes)")
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torchcodec":
        require_backend(backend)
        return _decoded(_decode_torchcodec(data, height, width, allocate))
    if backend in ("auto", "decord"):
        _probe(data)
        try:
            return _open_decord(data, height, width, allocate)
        except Exception as exc:  # decord raises its own DECORDError / RuntimeError types
            if backend == "decord":
                raise UndecodableVideoError(f"decord could not decode the video: {exc}") from exc
    return _decoded(_decode_pyav(data, height, width, allocate))


def decode_video(data: bytes, size: tuple[int, int], backend: Backend = "auto", allocate: Optional[FrameAllocator] = None) -> DecodedVideo:
    """Decode all frames of ``data`` resized to ``size`` = (height, width).

    ``backend="auto"`` tries decord and falls back to PyAV when decord is not installed or fails on
    this file; naming a backend uses only that one (tests, benchmarks; an unavailable
    "torchcodec" raises :class:`BackendUnavailableError`). ``allocate`` makes the frame array
    (default ``np.empty``); the returned ``frames`` is the array it made last. Rotated videos come
    out as displayed (see the module docstring).
    """
    stream = open_video(data, size, backend, allocate)
    try:
        for _ in stream.chunks():
            pass
    except UndecodableVideoError:
        if backend != "auto" or stream.backend != "decord":
            raise
        return _decode_pyav(data, int(size[0]), int(size[1]), allocate if allocate is not None else _empty)
    return DecodedVideo(frames=stream.frames, times=stream.times, backend=stream.backend)


def _decoded(video: DecodedVideo) -> VideoStream:
    """A stream over an already decoded video: one step."""
    return VideoStream(frames=video.frames, times=video.times, backend=video.backend, _chunks=iter([len(video)]))


def _empty(shape: tuple[int, int, int, int]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def _probe(data: bytes) -> None:
    """Open the container with PyAV (header only, no decoding) before decord sees it.

    decord reports a file it cannot open by printing the whole input to stderr, which for a
    BytesIO is the raw video bytes; the probe turns such files into a one-line counted error.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise UndecodableVideoError("file has no video stream")
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise UndecodableVideoError(f"not a readable video container: {exc}") from exc


def _open_decord(data: bytes, height: int, width: int, allocate: FrameAllocator) -> VideoStream:
    if decord is None:
        raise UndecodableVideoError("decord is not installed")
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    count = len(reader)
    if count == 0:
        raise UndecodableVideoError("video has no frames")
    times = reader.get_frame_timestamp(np.arange(count))[:, 0].astype(np.float64)
    frames = allocate((count, height, width, 3))

    def chunks() -> Iterator[int]:
        for start in range(0, count, DECORD_CHUNK):
            stop = min(start + DECORD_CHUNK, count)
            try:
                frames[start:stop] = reader.get_batch(list(range(start, stop))).asnumpy()
            except Exception as exc:  # decord's own error types
                raise UndecodableVideoError(f"decord failed at frame {start} of {count}: {exc}") from exc
            yield stop

    return VideoStream(frames=frames, times=times - times[0], backend="decord", _chunks=chunks())


def _decode_pyav(data: bytes, height: int, width: int, allocate: FrameAllocator) -> DecodedVideo:
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise UndecodableVideoError("file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 turns
                # scale to the size that the turn makes (height, width), then turn: no second resample
                scaled = (height, width) if turns % 2 else (width, height)
                rgb = frame.reformat(width=scaled[0], height=scaled[1], format="rgb24").to_ndarray()
                frames.append(np.rot90(rgb, turns) if turns else rgb)
                # pts can be missing on broken streams; fall back to the nominal frame rate
                if frame.time is not None:
                    times.append(float(frame.time))
                else:
                    rate = float(stream.average_rate or 0) or 1.0
                    times.append(index / rate)
    except UndecodableVideoError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        if not frames:
            raise UndecodableVideoError(f"PyAV could not decode the video: {exc}") from exc
        # a stream cut short after some good frames: keep what decoded (the pose check decides)
    if not frames:
        raise UndecodableVideoError("video has no frames")
    t = np.asarray(times, np.float64)
    order = np.argsort(t, kind="stable")  # decode order is presentation order for sane files; enforce it
    out = allocate((len(frames), height, width, 3))
    for slot, index in enumerate(order.tolist()):
        out[slot] = frames[index]
    return DecodedVideo(frames=out, times=t[order] - t[order][0], backend="pyav")


def _decode_torchcodec(data: bytes, height: int, width: int, allocate: FrameAllocator) -> DecodedVideo:
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    try:  # TorchCodec reports unreadable input as RuntimeError or ValueError
        decoder = VideoDecoder(data, dimension_order="NHWC", num_ffmpeg_threads=1, transforms=[Resize((height, width))])
        count = len(decoder)
        if count == 0:
            raise UndecodableVideoError("video has no frames")
        frames = allocate((count, height, width, 3))
        times = np.empty(count, np.float64)
        for start in range(0, count, DECORD_CHUNK):
            stop = min(start + DECORD_CHUNK, count)
            batch = decoder.get_frames_in_range(start, stop)
            frames[start:stop] = batch.data.numpy()
            times[start:stop] = batch.pts_seconds.numpy()
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, UndecodableVideoError):
            raise
        raise UndecodableVideoError(f"TorchCodec could not decode the video: {exc}") from exc
    return DecodedVideo(frames=frames, times=times - times[0], backend="torchcodec")
