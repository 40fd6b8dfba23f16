"""Writing H.264 mp4 files with PyAV (FFmpeg).

Shards store the forward camera as mp4; the simulator's demo recordings, the pose-to-shard tool
(for frame folders) and the robot runtime's inspection videos all write through here so there is
one encoder configuration to get right.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import IO, Iterable

import av
import numpy as np


def write_mp4(
    dest: str | Path | IO[bytes],
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    crf: int = 23,
    bframes: int = 0,
    gop: int = 30,
) -> int:
    """Encode HxWx3 uint8 RGB frames to an H.264 mp4; returns the number of frames written.

    ``fps`` may be fractional (e.g. Fraction(30000, 1001)); H.264 needs even sizes, so odd frame
    sizes are rejected with a clear error rather than silently cropped.
    """
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    container = av.open(dest, mode="w", format="mp4")
    stream = None
    count = 0
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be HxWx3 uint8 RGB, got shape {frame.shape} dtype {frame.dtype}")
            if stream is None:
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = gop
                stream.codec_context.max_b_frames = bframes
                stream.options = {"crf": str(crf), "preset": "veryfast", "bf": str(bframes)}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    if count == 0:
        raise ValueError("no frames to write")
    return count
