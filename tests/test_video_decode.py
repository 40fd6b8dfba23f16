"""Whole-video decoding: right frames at the right times, decord and the PyAV fallback agree; decoding in chunks."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import encode_indexed_video, frame_with_index, read_frame_index
from datamodules import video_decode
from datamodules.video_decode import UndecodableVideoError, backend_unavailable, decode_video, open_video, require_backend

NTSC = Fraction(30000, 1001)
#: Every backend that can run here; TorchCodec is optional and needs FFmpeg's shared libraries.
BACKENDS = ["decord", "pyav"] + ([] if backend_unavailable("torchcodec") else ["torchcodec"])


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_decodes_every_frame_resized_in_order_with_ntsc_times(bframe_video: bytes, backend: str) -> None:
    video = decode_video(bframe_video, (48, 64), backend)
    assert video.backend == backend
    assert video.frames.shape == (45, 48, 64, 3) and video.frames.dtype == np.uint8
    assert [read_frame_index(f) for f in video.frames] == list(range(45))
    np.testing.assert_allclose(video.times, np.arange(45) * 1001 / 30000, atol=1e-4)


def test_backends_give_the_same_pixels(bframe_video: bytes) -> None:
    a = decode_video(bframe_video, (48, 64), "decord").frames.astype(np.int16)
    for backend in BACKENDS[1:]:
        b = decode_video(bframe_video, (48, 64), backend).frames.astype(np.int16)
        # other scalers, same frames: only interpolation differences
        assert np.abs(a - b).mean() < 8, backend


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


@pytest.mark.parametrize("backend", BACKENDS)
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


def rotated_video(degrees: int) -> bytes:
    """A 64x48 video whose display matrix turns it ``degrees`` counter-clockwise; a white block marks its top-left corner."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(degrees)
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:24, :16] = 255
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


@pytest.mark.parametrize("degrees, corner", [(90, "bottom-left"), (180, "bottom-right"), (270, "top-right")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_metadata_is_applied_by_every_backend(backend: str, degrees: int, corner: str) -> None:
    """One rule everywhere: frames come out as displayed, then scaled (issue 16.5: PyAV used to ignore it)."""
    frames = decode_video(rotated_video(degrees), (24, 32), backend).frames
    assert frames.shape == (5, 24, 32, 3)
    rows, cols = np.nonzero(frames[0, ..., 0] > 128)
    where = ("top" if rows.mean() < 12 else "bottom") + "-" + ("left" if cols.mean() < 16 else "right")
    assert where == corner
    # the block covers 1/8 of the displayed frame whichever way it was turned
    assert abs((frames[0, ..., 0] > 128).mean() - 1 / 8) < 0.03


def test_an_unavailable_backend_is_named_with_what_to_install() -> None:
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        require_backend("ffmpeg")
    reason = backend_unavailable("torchcodec")
    if reason is not None:  # where it cannot load, the message says how to get it
        assert "pip install torchcodec==0.13.0" in reason and "libavcodec" in reason


class _BreakingReader:
    """decord's reader, failing from frame ``BREAK_AT`` on (a stream corrupt part-way)."""

    BREAK_AT = 30

    def __init__(self, *args, **kwargs) -> None:
        self.reader = _REAL_READER(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.reader)

    def get_frame_timestamp(self, indices):
        return self.reader.get_frame_timestamp(indices)

    def get_batch(self, indices):
        if indices[-1] >= self.BREAK_AT:
            raise RuntimeError("corrupt packet")
        return self.reader.get_batch(indices)


_REAL_READER = video_decode.decord.VideoReader if video_decode.decord is not None else None


@pytest.mark.skipif(video_decode.decord is None, reason="decord is not installed")
def test_decord_opens_with_every_time_known_and_decodes_in_chunks(bframe_video: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_decode, "DECORD_CHUNK", 16)
    stream = open_video(bframe_video, (48, 64), allocate=lambda shape: np.zeros(shape, np.uint8))
    whole = decode_video(bframe_video, (48, 64))
    assert stream.backend == "decord" and len(stream) == 45 and np.array_equal(stream.times, whole.times)
    steps = []
    for decoded in stream.chunks():  # each step: its frames are there, the later ones not yet
        assert [read_frame_index(f) for f in stream.frames[:decoded]] == list(range(decoded))
        assert not stream.frames[decoded:].any()
        steps.append(decoded)
    assert steps == [16, 32, 45] and np.array_equal(stream.frames, whole.frames)
    assert list(open_video(bframe_video, (48, 64), "pyav").chunks()) == [45]  # PyAV decodes when opened


@pytest.mark.skipif(video_decode.decord is None, reason="decord is not installed")
def test_a_stream_decord_fails_part_way_is_decoded_by_pyav_or_reported(bframe_video: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_decode, "DECORD_CHUNK", 16)
    monkeypatch.setattr(video_decode.decord, "VideoReader", _BreakingReader)
    video = decode_video(bframe_video, (48, 64))  # auto: PyAV decodes the whole file instead
    assert video.backend == "pyav" and [read_frame_index(f) for f in video.frames] == list(range(45))
    with pytest.raises(UndecodableVideoError, match="decord failed at frame 16"):
        decode_video(bframe_video, (48, 64), "decord")
    stream = open_video(bframe_video, (48, 64))
    chunks = stream.chunks()
    assert next(chunks) == 16
    with pytest.raises(UndecodableVideoError):
        next(chunks)
