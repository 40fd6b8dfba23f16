"""Whole-video decoding: right frames at the right times, decord and the PyAV fallback agree."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from conftest import encode_indexed_video, read_frame_index
from datamodules import video_decode
from datamodules.video_decode import UndecodableVideoError, decode_video

NTSC = Fraction(30000, 1001)


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
