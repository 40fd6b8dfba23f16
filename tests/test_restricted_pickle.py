"""The restricted unpickler admits numpy data and refuses code, without running it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from datamodules.pose_formats import PoseFormatError, read_gnm
from datamodules.restricted_pickle import UnsafePickleError, restricted_load, restricted_loads


class _RunsShell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_arrays_scalars_and_containers_round_trip(protocol):
    data = {
        "position": np.arange(12, dtype=np.float64).reshape(6, 2),
        "yaw": np.linspace(-1, 1, 6, dtype=np.float32),
        "count": np.int64(6),
        "tags": ["a", ("b", 2.5)],
        "raw": b"\x00\x01",
    }
    out = restricted_loads(pickle.dumps(data, protocol=protocol))
    np.testing.assert_array_equal(out["position"], data["position"])
    assert out["yaw"].dtype == np.float32 and out["count"] == 6
    assert out["tags"] == ["a", ("b", 2.5)] and out["raw"] == b"\x00\x01"


def test_os_system_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"position": np.zeros((2, 2)), "yaw": _RunsShell(str(marker))})
    with pytest.raises(UnsafePickleError, match=r"(posix|nt|os)\.system"):
        restricted_loads(payload)
    assert not marker.exists()
    # the same payload through the GNM reader: a clear format error, still nothing executed
    (tmp_path / "traj_data.pkl").write_bytes(payload)
    with pytest.raises(PoseFormatError, match="refusing"):
        read_gnm(tmp_path, fps=5)
    assert not marker.exists()


def test_other_globals_are_refused():
    for obj in (print, np.load, object()):
        with pytest.raises(UnsafePickleError):
            restricted_loads(pickle.dumps(obj))


def test_object_arrays_are_refused():
    """An object-dtype array pickles its elements by reference to their classes: refused."""
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(np.array([_RunsShell("/nonexistent/x")], dtype=object)))


def test_garbage_is_an_unpickling_error(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(pickle.UnpicklingError):
        restricted_load(path)
