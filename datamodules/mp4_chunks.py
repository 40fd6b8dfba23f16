"""Split an mp4 into shorter mp4s at keyframes by remuxing (stream copy, no re-encode).

The streaming reader decodes a whole episode at once (see datamodules/video_decode.py), so an
hour-long walking video would be one multi-gigabyte episode. Cutting at keyframes keeps every
chunk independently decodable and the pixels bit-identical to the source; with closed GOPs (x264's
default) the frames shown in a chunk are exactly those whose packets lie between its keyframes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

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
