"""The video half of ingestion: what a recording's frames become in a shard, and their times.

Every source ends here. Video files: frame presentation times are read with PyAV from decoded
frames' pts (so B-frames and 30000/1001 rates give the true times), relative to the first frame,
exactly as the streaming reader computes them; H.264 mp4 files are stored byte-for-byte and any
other codec/container is re-encoded with :func:`s2e.video_io.write_mp4`. GNM frame folders are
encoded at their nominal rate. Robot logs (bags, LeRobot episodes) hand over (time, frame) pairs
that are encoded once and stamped with their recorded times (:func:`encode_timed_frames`).

Nothing is ever held as a whole decoded clip: frames stream into the encoder.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np
from PIL import Image

from datamodules.mp4_chunks import retime_mp4
from s2e.video_io import write_mp4

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class ClipSkipped(Exception):
    """A clip that yields no episode; ``reason`` is the summary key, ``seconds`` what was lost."""

    def __init__(self, reason: str, detail: str, seconds: float = 0.0) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.seconds = reason, detail, seconds


@dataclass
class EpisodeVideo:
    """The mp4 stored in the shard and its frame times.

    ``source_times`` are the frame times of the recording on its own clock, relative to its first
    frame, and ``source_start`` that first frame's time on the clock (what ``--pose-time
    absolute`` poses, bag stamps and LeRobot timestamps refer to); they equal ``times`` except
    after re-encoding a variable-frame-rate file, whose frames are stored at a constant rate.
    """

    mp4: bytes
    times: np.ndarray
    source_times: np.ndarray
    source_start: float
    fps: float
    copied: bool

    @property
    def seconds(self) -> float:
        """Length counted as frames x nominal frame interval (how hours are counted everywhere)."""
        return len(self.times) / self.fps


@dataclass(frozen=True)
class FrameClock:
    """Presentation times of a video's frames, as the streaming reader computes them."""

    times: np.ndarray  # seconds relative to the first frame
    start: float  # the first frame's time on the container's own clock
    rate: Fraction
    codec: str
    container: str


def frame_times(source: bytes) -> FrameClock:
    """Decode every frame of ``source`` and read its presentation time.

    Times come from each frame's pts, sorted (decode order differs from presentation order with
    B-frames). Raises ClipSkipped ("undecodable") on anything FFmpeg cannot read.
    """
    handle = io.BytesIO(source)
    times: list[float] = []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.video:
                raise ClipSkipped("undecodable", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
            codec, fmt = stream.codec_context.name, container.format.name
            for index, frame in enumerate(container.decode(stream)):
                times.append(float(frame.time) if frame.time is not None else (index / float(rate) if rate else np.nan))
    except ClipSkipped:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise ClipSkipped("undecodable", str(exc)) from exc
    if len(times) < 2:
        raise ClipSkipped("undecodable", f"{len(times)} decodable frame(s)")
    t = np.sort(np.asarray(times, np.float64))
    if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ClipSkipped("bad_video_time", "frame timestamps missing or repeated")
    if not rate:
        rate = Fraction(1.0 / float(np.median(np.diff(t)))).limit_denominator(1001)
    return FrameClock(t - t[0], float(t[0]), rate, codec, fmt)


def load_video_file(path: Path, crf: int) -> EpisodeVideo:
    """Copy an H.264 mp4 byte-for-byte; re-encode anything else to H.264 mp4.

    Re-encoding decodes the source a second time and streams its frames into the encoder, so no
    clip is ever held as decoded frames in memory.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClipSkipped("undecodable", f"{path}: {exc}") from exc
    clock = frame_times(data)
    if clock.codec == "h264" and "mp4" in clock.container.split(",") and path.suffix.lower() in (".mp4", ".m4v"):
        return EpisodeVideo(data, clock.times, clock.times, clock.start, float(clock.rate), copied=True)
    buf = io.BytesIO()

    def frames() -> Iterator[np.ndarray]:
        with av.open(io.BytesIO(data), mode="r") as container:
            for frame in container.decode(container.streams.video[0]):
                yield even_crop(frame.to_ndarray(format="rgb24"))

    try:
        write_mp4(buf, frames(), clock.rate, crf=crf)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ClipSkipped("undecodable", f"re-encoding failed: {exc}") from exc
    stored = frame_times(buf.getvalue())
    if len(stored.times) != len(clock.times):
        raise ClipSkipped("undecodable", f"re-encoded {len(stored.times)} frames of {len(clock.times)}")
    return EpisodeVideo(buf.getvalue(), stored.times, clock.times, clock.start, float(clock.rate), copied=False)


def load_frame_folder(folder: Path, fps: float, crf: int) -> EpisodeVideo:
    """Encode a GNM folder of numbered frames (``0.jpg, 1.jpg, ...``) at ``fps``; frame ``i`` is at ``i / fps``."""
    numbered = {}
    for p in folder.iterdir():
        if p.suffix.lower() in FRAME_SUFFIXES and p.stem.isdigit():
            numbered[int(p.stem)] = p
    if len(numbered) < 2:
        raise ClipSkipped("undecodable", f"{folder}: fewer than 2 numbered frames")
    indices = sorted(numbered)
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))[:5]
        raise ClipSkipped("bad_frames", f"{folder}: frame numbering not contiguous from 0 (missing {missing}...)")

    def frames() -> Iterator[np.ndarray]:
        for i in indices:
            with Image.open(numbered[i]) as image:
                yield even_crop(np.asarray(image.convert("RGB")))

    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    try:
        write_mp4(buf, frames(), rate, crf=crf)
    except (OSError, ValueError, av.FFmpegError) as exc:  # PIL raises OSError for truncated/corrupt images
        raise ClipSkipped("undecodable", f"{folder}: {exc}") from exc
    stored = frame_times(buf.getvalue())
    return EpisodeVideo(buf.getvalue(), stored.times, np.asarray(indices, np.float64) / fps, 0.0, float(rate), copied=False)


def encode_timed_frames(frames: Iterable[tuple[float, np.ndarray]], nominal_fps: float, crf: int) -> EpisodeVideo:
    """Encode (time in seconds, RGB frame) pairs once to H.264 and stamp each frame with its time.

    Times must increase strictly (sources drop out-of-order frames, and count them, before this).
    ``nominal_fps`` only guides the encoder's rate control; the stored frame times are the given
    ones, holes included. Raises ClipSkipped ("no_frames") for fewer than 2 frames.
    """
    times: list[float] = []

    def rgb() -> Iterator[np.ndarray]:
        for t, frame in frames:
            if times and not t > times[-1]:
                raise ValueError(f"frame times must increase strictly: {t} after {times[-1]}")
            times.append(t)
            yield even_crop(frame)

    buf = io.BytesIO()
    try:
        write_mp4(buf, rgb(), nominal_fps, crf=crf)
    except ValueError as exc:
        if not times:
            raise ClipSkipped("no_frames", "no usable frame") from exc
        raise
    if len(times) < 2:
        raise ClipSkipped("no_frames", f"{len(times)} usable frame(s)")
    t = np.asarray(times, np.float64)
    mp4 = retime_mp4(buf.getvalue(), t)
    stored = frame_times(mp4)
    return EpisodeVideo(mp4, stored.times, t - t[0], float(t[0]), 1.0 / float(np.median(np.diff(t))), copied=False)


def even_crop(frame: np.ndarray) -> np.ndarray:
    """Drop the last row/column of odd-sized frames: H.264 (yuv420p) needs even sizes."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]
