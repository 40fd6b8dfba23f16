"""Whole-video decoding: right frames at the right times, decord and the PyAV fallback agree."""

from __future__ import annotations

from fractions import Fraction

import io

import av
import numpy as np
import pytest

from conftest import encode_indexed_video, frame_with_index, read_frame_index
from datamodules import video_decode
from datamodules.video_decode import UndecodableVideoError, decode_video

NTSC = Fraction(30000, 1001)


def raw_h264_stream(n: int) -> bytes:
    """An H.264 elementary stream (no container, no timestamps): decord refuses it, PyAV decodes it at 25 fps."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_with_index(i), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def bframe_video() -> bytes:
    return encode_indexed_video(45, NTSC, bframes=2)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decodes_every_frame_resized_in_order_with_ntsc_times(bframe_video: bytes, backend: str) -> None:
    video = decode_video(bframe_video, (48, 64), backend)
    assert video.backend == backend
    assert video.frames.shape == (45, 48, 64, 3) and video.frames.dtype == np.uint8
    assert [read_frame_index(f) for f in video.frames] == list(range(45))
    np.testing.assert_allclose(video.times, np.arange(45) * 1001 / 30000, atol=1e-4)


def test_backends_give_the_same_pixels(bframe_video: bytes) -> None:
    a = decode_video(bframe_video, (48, 64), "decord").frames.astype(np.int16)
    b = decode_video(bframe_video, (48, 64), "pyav").frames.astype(np.int16)
    # two scalers, same frames: only interpolation differences
    assert np.abs(a - b).mean() < 8


def test_auto_falls_back_to_pyav_when_decord_is_missing(bframe_video: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_decode, "decord", None)  # what an installation without decord looks like
    video = decode_video(bframe_video, (48, 64))
    assert video.backend == "pyav"
    assert [read_frame_index(f) for f in video.frames] == list(range(45))


def test_auto_falls_back_to_pyav_on_a_file_decord_refuses() -> None:
    data = raw_h264_stream(20)
    with pytest.raises(UndecodableVideoError, match="decord"):
        decode_video(data, (48, 64), "decord")
    video = decode_video(data, (48, 64))
    assert video.backend == "pyav"
    assert [read_frame_index(f) for f in video.frames] == list(range(20))


def test_auto_uses_decord_when_it_works(bframe_video: bytes) -> None:
    assert decode_video(bframe_video, (48, 64)).backend == "decord"


@pytest.mark.parametrize("data", [b"", b"definitely not an mp4 file" * 40])
def test_garbage_raises_the_counted_error(data: bytes) -> None:
    with pytest.raises(UndecodableVideoError):
        decode_video(data, (48, 64))


def test_truncated_video_keeps_the_frames_that_decode(bframe_video: bytes) -> None:
    """A file cut in half either decodes a prefix of the frames or is rejected, never garbage."""
    try:
        video = decode_video(bframe_video[: len(bframe_video) // 2], (48, 64), "pyav")
    except UndecodableVideoError:
        return
    indices = [read_frame_index(f) for f in video.frames]
    assert indices == list(range(len(indices)))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_are_decoded_into_the_callers_array(bframe_video: bytes, backend: str) -> None:
    """The pipeline decodes into shared memory this way: the result must be that very array, in order."""
    made: list[np.ndarray] = []

    def allocate(shape):
        made.append(np.full(shape, 7, np.uint8))
        return made[-1]

    video = decode_video(bframe_video, (48, 64), backend, allocate)
    assert len(made) == 1 and made[0].shape == (45, 48, 64, 3)
    assert video.frames is made[0]
    assert [read_frame_index(f) for f in made[0]] == list(range(45))
