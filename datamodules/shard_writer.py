"""Write navigation episodes into WebDataset tar shards, rolling to a new shard by count or size.

One sample = one episode (or a chunk of one): ``<key>.mp4`` + ``<key>.traj.npz`` + ``<key>.json``
(see DESIGN.md, "Shard format"). Everything is stored as bytes we produced ourselves; nothing is
pickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import webdataset as wds

from datamodules.episode import META_MEMBER, REQUIRED_META, TRAJ_MEMBER, VIDEO_MEMBER, Trajectory

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class EpisodeShardWriter:
    """Context manager that writes episodes to ``<out>/<prefix>-000000.tar``, ``-000001.tar``, ...

    Args:
        out_dir: folder for the shards (created if missing).
        prefix: shard file name prefix.
        max_count: episodes per shard before rolling over.
        max_size: bytes per shard before rolling over (WebDataset checks before each write).
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", max_count: int = 1000, max_size: float = 1e9) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        pattern = str(self.out_dir / f"{prefix}-%06d.tar")
        self._writer = wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0)
        self._keys: set[str] = set()
        self.episodes = 0

    def write(self, key: str, video_mp4: bytes, traj: Trajectory, meta: Mapping[str, Any]) -> None:
        """Validate and append one episode; a duplicate or malformed key is an error."""
        if not _KEY_RE.match(key):
            raise ValueError(f"episode key {key!r} must match {_KEY_RE.pattern} (no dots: WebDataset splits on them)")
        if key in self._keys:
            raise ValueError(f"duplicate episode key {key!r}")
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"episode {key!r} metadata lacks {missing}")
        if not video_mp4:
            raise ValueError(f"episode {key!r} has an empty video")
        traj.validate()
        self._writer.write(
            {
                "__key__": key,
                VIDEO_MEMBER: video_mp4,
                TRAJ_MEMBER: traj.to_npz_bytes(),
                META_MEMBER: json.dumps(dict(meta), sort_keys=True).encode(),
            }
        )
        self._keys.add(key)
        self.episodes += 1

    @property
    def shard_paths(self) -> list[Path]:
        return sorted(self.out_dir.glob(f"{self.prefix}-*.tar"))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "EpisodeShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
