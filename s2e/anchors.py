"""K-Means anchors over normalized future trajectories (AGDM's "intent points").

Anchors are fitted on *normalized* trajectories (divided by their mean step length), so one anchor
set serves robots of different speeds. They are stored as ``.npz`` with the TimingSpec they were cut
with (never pickle): a model trained with anchors from another timing would misread them.

``Anchors.load`` reads its file with ``allow_pickle=False`` and reports anything that is not such an
``.npz`` (random bytes, a bare ``.npy``, wrong members, dtypes, shapes, NaNs) as one short
``not an anchors file: PATH (...)`` error that says what was expected. numpy's own messages are
dropped on purpose: for bytes that are neither ``.npy`` nor zip it advises loading "unsafely
using allow_pickle", which for a file passed on a command line means executing whatever it holds.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2e.timing import TimingSpec

#: What an anchors file holds, as every "not an anchors file" error states it.
ANCHORS_FILE_LAYOUT = (
    "an .npz from tools/compute_anchors.py holding points float [M, 2], trajectories float [M, T, 2] "
    "(T = the timing's num_waypoints), counts int [M] and timing (a TimingSpec as a JSON string)"
)
#: Member name -> numpy dtype kinds it may have ('f' float, 'i'/'u' integer, 'U' unicode string).
_MEMBER_KINDS = {"points": "f", "trajectories": "f", "counts": "iu", "timing": "U"}
#: What ``np.load`` and reading members raise for bytes that are not a valid ``.npy``/``.npz``
#: (found by mutating valid files: bad zip structure, bad or truncated headers, corrupt
#: compressed data, unsupported zip features, bytes that are neither format).
_UNREADABLE = (ValueError, EOFError, OSError, NotImplementedError, zipfile.BadZipFile, zlib.error)


@dataclass
class Anchors:
    """M anchors.

    Attributes:
        points: float32 [M, 2] the intent point of each anchor (normalized endpoint of its cluster).
        trajectories: float32 [M, T, 2] the mean normalized trajectory of each cluster.
        timing: the TimingSpec the trajectories were cut with.
        counts: int64 [M] training trajectories assigned to each anchor.
    """

    points: np.ndarray
    trajectories: np.ndarray
    timing: TimingSpec
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 2 or self.points.shape[0] < 1:
            raise ValueError(f"anchor points must be [M, 2] with M >= 1, got {self.points.shape}")
        m = self.points.shape[0]
        expected = (m, self.timing.num_waypoints, 2)
        if self.trajectories.shape != expected:
            raise ValueError(f"anchor trajectories must be {expected} for this TimingSpec, got {self.trajectories.shape}")
        if self.counts.shape != (m,):
            raise ValueError(f"anchor counts must be [{m}], got {self.counts.shape}")
        if not (np.isfinite(self.points).all() and np.isfinite(self.trajectories).all()):
            raise ValueError("anchors contain NaN or inf")

    @property
    def num_anchors(self) -> int:
        return int(self.points.shape[0])

    def save(self, path: str | Path) -> None:
        np.savez(
            Path(path),
            points=self.points.astype(np.float32),
            trajectories=self.trajectories.astype(np.float32),
            counts=self.counts.astype(np.int64),
            timing=np.array(json.dumps(self.timing.to_dict())),
        )

    @classmethod
    def load(cls, path: str | Path) -> "Anchors":
        """Read an anchors file (never unpickling); anything else is a ValueError naming ``path`` and the expected layout."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"anchors file not found: {path} (make one with tools/compute_anchors.py)")
        members = _read_members(path)
        try:
            timing = TimingSpec.from_dict(json.loads(str(members["timing"])))
        except (TypeError, ValueError) as err:
            raise _not_anchors(path, f"timing is not a TimingSpec as JSON: {err}") from None
        try:
            return cls(
                points=members["points"].astype(np.float32),
                trajectories=members["trajectories"].astype(np.float32),
                counts=members["counts"].astype(np.int64),
                timing=timing,
            )
        except ValueError as err:
            raise _not_anchors(path, str(err)) from None


def _not_anchors(path: Path, problem: str) -> ValueError:
    """The one error for a file that is not a usable anchors file: path, what is wrong, what was expected."""
    return ValueError(f"not an anchors file: {path} ({problem}); expected {ANCHORS_FILE_LAYOUT}")


def _read_members(path: Path) -> dict[str, np.ndarray]:
    """The four members of an anchors ``.npz``, each of an allowed dtype kind (see ``_MEMBER_KINDS``).

    Every way the bytes can fail to be such an archive becomes :func:`_not_anchors` without its
    cause (``from None``), so numpy's advice to load "unsafely using allow_pickle" never reaches a user.
    """
    members: dict[str, np.ndarray] = {}
    try:
        loaded = np.load(path, allow_pickle=False)  # an NpzFile, or a bare array for an .npy file
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                members = {name: loaded[name] for name in _MEMBER_KINDS if name in loaded.files}
    except _UNREADABLE:
        raise _not_anchors(path, "not a readable .npz archive") from None
    if isinstance(loaded, np.ndarray):
        raise _not_anchors(path, f"a single .npy array of dtype {loaded.dtype} shape {list(loaded.shape)}, not an .npz archive")
    missing = sorted(set(_MEMBER_KINDS) - set(members))
    if missing:
        raise _not_anchors(path, f"it lacks {missing}")
    for name, kinds in _MEMBER_KINDS.items():
        array = members[name]
        if array.dtype.kind not in kinds:
            raise _not_anchors(path, f"{name} has dtype {array.dtype} shape {list(array.shape)}")
    return members


def fit_anchors(trajectories: np.ndarray, num_anchors: int, timing: TimingSpec, *, seed: int = 0) -> Anchors:
    """K-Means (scikit-learn) over whole normalized trajectories [N, T, 2].

    Clustering whole shapes rather than endpoints separates "swerve left then straight" from
    "straight then left" that end near the same point. Each anchor's intent point is its cluster
    mean's endpoint.
    """
    from sklearn.cluster import KMeans

    if trajectories.ndim != 3 or trajectories.shape[1:] != (timing.num_waypoints, 2):
        raise ValueError(f"trajectories must be [N, {timing.num_waypoints}, 2], got {trajectories.shape}")
    finite = np.isfinite(trajectories).all(axis=(1, 2))
    data = trajectories[finite].reshape(int(finite.sum()), -1).astype(np.float64)
    if data.shape[0] < num_anchors:
        raise ValueError(f"need at least {num_anchors} finite trajectories for {num_anchors} anchors, got {data.shape[0]}")
    km = KMeans(n_clusters=num_anchors, n_init=4, random_state=seed).fit(data)
    centres = km.cluster_centers_.reshape(num_anchors, timing.num_waypoints, 2)
    counts = np.bincount(km.labels_, minlength=num_anchors)
    order = np.lexsort((centres[:, -1, 1], centres[:, -1, 0]))  # deterministic order: by endpoint x, then y
    return Anchors(
        points=centres[order, -1].astype(np.float32),
        trajectories=centres[order].astype(np.float32),
        timing=timing,
        counts=counts[order].astype(np.int64),
    )
