"""K-Means anchors over normalized future trajectories (AGDM's "intent points").

Anchors are fitted on *normalized* trajectories (divided by their mean step length), so one anchor
set serves robots of different speeds. They are stored as ``.npz`` with the TimingSpec they were cut
with (never pickle): a model trained with anchors from another timing would misread them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2e.timing import TimingSpec


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
        m = self.points.shape[0]
        if self.points.ndim != 2 or self.points.shape[1] != 2 or m < 1:
            raise ValueError(f"anchor points must be [M, 2] with M >= 1, got {self.points.shape}")
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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"anchors file not found: {path} (make one with tools/compute_anchors.py)")
        with np.load(path, allow_pickle=False) as npz:
            missing = {"points", "trajectories", "counts", "timing"} - set(npz.files)
            if missing:
                raise ValueError(f"{path} is not an anchors file: it lacks {sorted(missing)}")
            return cls(
                points=npz["points"].astype(np.float32),
                trajectories=npz["trajectories"].astype(np.float32),
                counts=npz["counts"].astype(np.int64),
                timing=TimingSpec.from_dict(json.loads(str(npz["timing"]))),
            )


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
