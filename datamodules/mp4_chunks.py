"""Remux mp4s without re-encoding: split at keyframes, or give frames the times they were recorded at.

The streaming reader decodes a whole episode at once (see datamodules/video_decode.py), so an
hour-long walking video would be one multi-gigabyte episode. Cutting at keyframes keeps every
chunk independently decodable and the pixels bit-identical to the source; with closed GOPs (x264's
default) the frames shown in a chunk are exactly those whose packets lie between its keyframes.

Robot logs (bags, LeRobot episodes) have frames at irregular times: dropped camera messages leave
holes. :func:`retime_mp4` stamps each frame of a constant-rate encoding with its recorded time, so
the stored video tells the reader the truth and no window spans a hole unnoticed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class Mp4Chunk:
    """``start``: presentation time of the chunk's first frame in the whole video (first frame = 0)."""

    start: float
    mp4: bytes


def chunk_starts(boundaries: np.ndarray, max_seconds: float) -> list[int]:
    """Indices of the keyframes that begin chunks of at most ``max_seconds``, of similar lengths.

    ``boundaries`` holds the keyframe times followed by the video's end time. The fewest chunks
    whose cuts (each at the keyframe nearest an even split) keep every chunk within the limit;
    balanced lengths avoid a tiny tail chunk that the minimum-run rule would throw away. Keyframes
    further apart than ``max_seconds`` cannot be helped: then every GOP is its own chunk.
    """
    keyframes, end = np.asarray(boundaries[:-1], np.float64), float(boundaries[-1])
    for n in range(max(1, math.ceil(end / max_seconds - 1e-9)), len(keyframes) + 1):
        starts = sorted({int(np.argmin(np.abs(keyframes - i * end / n))) for i in range(n)})
        if np.all(np.diff(np.append(keyframes[starts], end)) <= max_seconds + 1e-9):
            return starts
    return list(range(len(keyframes)))


def split_mp4(mp4: bytes, max_seconds: float) -> list[Mp4Chunk]:
    """Cut ``mp4`` at keyframes into chunks of at most ``max_seconds`` (the video unchanged if it is shorter)."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    with av.open(io.BytesIO(mp4), mode="r") as source:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.size and p.pts is not None]
        if not packets:
            raise ValueError("video has no packets with timestamps")
        base = min(p.pts for p in packets)
        gop_starts = [i for i, p in enumerate(packets) if p.is_keyframe]
        if not gop_starts or gop_starts[0] != 0:
            raise ValueError("video does not start with a keyframe")
        keyframe_times = np.asarray([float((packets[i].pts - base) * stream.time_base) for i in gop_starts])
        end = max(p.pts + (p.duration or 0) for p in packets)
        starts = chunk_starts(np.append(keyframe_times, float((end - base) * stream.time_base)), max_seconds)
        if len(starts) == 1:
            return [Mp4Chunk(0.0, mp4)]
        bounds = [gop_starts[k] for k in starts] + [len(packets)]
        chunks = []
        for lo, hi, k in zip(bounds[:-1], bounds[1:], starts):
            chunks.append(Mp4Chunk(float(keyframe_times[k]), _remux(stream, packets[lo:hi])))
    return chunks


def _remux(template: av.video.stream.VideoStream, packets: list[av.Packet]) -> bytes:
    """Write packets (one or more whole GOPs, decode order) to a new mp4 whose first frame is at time 0."""
    offset = packets[0].pts  # the keyframe: shifting by it puts the chunk's first shown frame at 0
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream_from_template(template)
        for packet in packets:
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            packet.stream = stream
            out.mux(packet)
    return buf.getvalue()


#: Ticks per second of retimed videos (the MPEG clock): frame times are stored to 11 microseconds.
RETIME_TIMESCALE = 90000


def retime_mp4(mp4: bytes, times: np.ndarray) -> bytes:
    """Give frame ``i`` of ``mp4`` the presentation time ``times[i] - times[0]`` (stream copy).

    Needs a stream without B-frames (packets in presentation order, as :func:`s2e.video_io.write_mp4`
    writes by default) and strictly increasing ``times``; the last frame lasts as long as the
    interval before it.
    """
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or len(times) < 2 or not np.all(np.diff(times) > 0):
        raise ValueError("times must be at least 2 strictly increasing seconds")
    ticks = np.round((times - times[0]) * RETIME_TIMESCALE).astype(np.int64)
    if not np.all(np.diff(ticks) > 0):
        raise ValueError(f"frames closer than 1/{RETIME_TIMESCALE} s cannot be told apart")
    durations = np.diff(ticks, append=2 * ticks[-1] - ticks[-2])
    time_base = Fraction(1, RETIME_TIMESCALE)
    buf = io.BytesIO()
    with av.open(io.BytesIO(mp4), mode="r") as source:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.size]
        if len(packets) != len(times):
            raise ValueError(f"{len(packets)} frames in the video for {len(times)} times")
        if any(p.pts is None or p.pts != p.dts for p in packets) or any(a.pts >= b.pts for a, b in zip(packets, packets[1:])):
            raise ValueError("retiming needs packets in presentation order (no B-frames)")
        with av.open(buf, mode="w", format="mp4") as out:
            target = out.add_stream_from_template(stream)
            target.time_base = time_base
            for packet, tick, duration in zip(packets, ticks.tolist(), durations.tolist()):
                packet.pts = packet.dts = tick
                packet.duration = duration
                packet.time_base = time_base
                packet.stream = target
                out.mux(packet)
    return buf.getvalue()
