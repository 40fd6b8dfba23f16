"""Anchors files: anything that is not one fails with one short error naming the file, never numpy's pickle advice."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import traceback
from typing import Callable

import numpy as np
import pytest

from s2e.anchors import Anchors
from s2e.timing import TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING = TimingSpec()


def _members(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    """The members of a valid 3-anchor file for ``TIMING``, with some replaced."""
    m, t = 3, TIMING.num_waypoints
    members = {
        "points": np.arange(m * 2, dtype=np.float32).reshape(m, 2),
        "trajectories": np.linspace(0, 1, m * t * 2, dtype=np.float32).reshape(m, t, 2),
        "counts": np.array([5, 3, 2], np.int64),
        "timing": np.array(json.dumps(TIMING.to_dict())),
    }
    return {**members, **overrides}


def _write_npz(path: pathlib.Path, members: dict[str, np.ndarray]) -> None:
    np.savez(path, **members)


def test_a_missing_file_is_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match=f"anchors file not found: {path}"):
        Anchors.load(path)


def test_the_saved_layout_round_trips(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "anchors.npz"
    _write_npz(path, _members())
    anchors = Anchors.load(path)
    assert anchors.num_anchors == 3 and anchors.timing == TIMING
    np.testing.assert_array_equal(anchors.counts, [5, 3, 2])


def _random_bytes(path: pathlib.Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def _npy(path: pathlib.Path) -> None:
    with path.open("wb") as handle:  # a handle: np.save would append ".npy" to the path
        np.save(handle, np.zeros((3, 2), np.float32))


BAD_FILES: dict[str, tuple[Callable[[pathlib.Path], None], str]] = {
    # name: (write the file, what the error says is wrong)
    "random bytes": (_random_bytes, "not a readable .npz archive"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable .npz archive"),
    "pickled object array": (lambda p: _write_npz(p, _members(points=np.array([{"x": 1}, None], dtype=object))), "not a readable .npz archive"),
    "bare .npy": (_npy, "a single .npy array of dtype float32 shape [3, 2], not an .npz archive"),
    "missing member": (lambda p: _write_npz(p, {k: v for k, v in _members().items() if k != "counts"}), "it lacks ['counts']"),
    "integer points": (lambda p: _write_npz(p, _members(points=np.zeros((3, 2), np.int64))), "points has dtype int64 shape [3, 2]"),
    "wrong trajectory length": (
        lambda p: _write_npz(p, _members(trajectories=np.zeros((3, 4, 2), np.float32))),
        "anchor trajectories must be (3, 10, 2) for this TimingSpec, got (3, 4, 2)",
    ),
    "scalar points": (lambda p: _write_npz(p, _members(points=np.float32(1.0))), "anchor points must be [M, 2] with M >= 1, got ()"),
    "NaN": (lambda p: _write_npz(p, _members(points=np.full((3, 2), np.nan, np.float32))), "anchors contain NaN or inf"),
    "bad timing": (lambda p: _write_npz(p, _members(timing=np.array('{"fps": 5}'))), "timing is not a TimingSpec as JSON: unknown TimingSpec fields ['fps']"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_names_itself_and_what_was_expected(tmp_path: pathlib.Path, name: str) -> None:
    write, problem = BAD_FILES[name]
    path = tmp_path / "anchors.npz"
    write(path)
    with pytest.raises(ValueError) as caught:
        Anchors.load(path)
    message = str(caught.value)
    assert message.startswith(f"not an anchors file: {path} ({problem}")
    assert "); expected an .npz from tools/compute_anchors.py holding points float [M, 2], trajectories float [M, T, 2]" in message
    printed = "".join(traceback.format_exception(caught.value))  # what an uncaught error shows, chained causes included
    assert "allow_pickle" not in printed and "unsafely" not in printed


@pytest.mark.parametrize("compressed", [False, True])
def test_corrupted_archives_only_ever_fail_as_not_an_anchors_file(tmp_path: pathlib.Path, compressed: bool) -> None:
    """Flipped bytes and truncations hit every numpy/zip/zlib failure mode; none may escape as another error."""
    valid = tmp_path / "valid.npz"
    (np.savez_compressed if compressed else np.savez)(valid, **_members())
    original = valid.read_bytes()
    rng = np.random.default_rng(1)
    path = tmp_path / "anchors.npz"
    failures = 0
    for trial in range(150):
        data = bytearray(original)
        if trial % 2:
            data = data[: int(rng.integers(len(data)))]
        else:
            for position in rng.integers(len(data), size=int(rng.integers(1, 8))):
                data[position] = int(rng.integers(256))
        path.write_bytes(bytes(data))
        try:
            Anchors.load(path)
        except ValueError as err:
            assert str(err).startswith(f"not an anchors file: {path} ("), err
            failures += 1
    assert failures >= 75  # every truncation fails: the zip directory sits at the end


def test_the_cli_reports_a_random_bytes_anchors_file_without_pickle_advice(tmp_path: pathlib.Path) -> None:
    """The real ``python -m s2e fit`` path: the model fails while it is built, before any data is read."""
    bad = tmp_path / "anchors.npz"
    _random_bytes(bad)
    command = [
        sys.executable,
        "-m",
        "s2e",
        "fit",
        "--config",
        str(ROOT / "experiments" / "pretrain.yaml"),
        "--model.init_args.anchors_path",
        str(bad),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"not an anchors file: {bad} (not a readable .npz archive)" in result.stderr
    assert "allow_pickle" not in result.stderr and "unsafely" not in result.stderr
