"""Write navigation episodes into WebDataset tar shards, rolling to a new shard by count or size.

One sample = one episode (or a chunk of one): ``<key>.mp4`` + ``<key>.traj.npz`` + ``<key>.json``
(see the README, "Shard format"). Everything is stored as bytes we produced ourselves; nothing is
pickled.

A shard is written as ``<name>.tar.partial`` and renamed to ``<name>.tar`` once it is closed and
synced, so a file matching ``shard-*.tar`` is always complete: a run killed half-way leaves at most
one ``.partial`` file (which no shard pattern matches), never a truncated shard whose first
episodes still read as data. A shard is only created when its first episode arrives, so a writer
that writes nothing leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional

import webdataset as wds

from datamodules.episode import META_MEMBER, REQUIRED_META, TRAJ_MEMBER, VIDEO_MEMBER, Trajectory

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
#: Suffix of a shard while it is being written.
PARTIAL_SUFFIX = ".partial"


def shard_name(prefix: str, index: int) -> str:
    """``shard-000003.tar``: the file name of shard ``index``."""
    return f"{prefix}-{index:06d}.tar"


class EpisodeShardWriter:
    """Context manager that writes episodes to ``<out>/<prefix>-000000.tar``, ``-000001.tar``, ...

    Args:
        out_dir: folder for the shards (created if missing).
        prefix: shard file name prefix.
        max_count: episodes per shard before rolling over.
        max_size: bytes per shard before rolling over (checked before each write).
        start_index: number of the first shard (a resumed run continues after its finished shards).
        on_finalize: called with a shard's final path after its data is synced and before it is
            renamed to that path; an ingest journal records the shard's contents there, so a shard
            never exists without its record.

    Leaving the ``with`` block through an exception (KeyboardInterrupt included) deletes the open
    ``.partial`` shard instead of finishing it; the shards finished before stay.
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "shard",
        max_count: int = 1000,
        max_size: float = 1e9,
        *,
        start_index: int = 0,
        on_finalize: Optional[Callable[[Path], None]] = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_count, self.max_size = max_count, max_size
        self.on_finalize = on_finalize
        self._index = start_index
        self._file: Optional[IO[bytes]] = None
        self._tar: Optional[wds.TarWriter] = None
        self._count = 0
        self._size = 0
        self._keys: set[str] = set()
        self.episodes = 0

    def write(self, key: str, video_mp4: bytes, traj: Trajectory, meta: Mapping[str, Any], *, same_shard: bool = False) -> None:
        """Validate and append one episode; a duplicate or malformed key is an error.

        ``same_shard`` keeps the episode in the shard of the previous one even when that shard is
        full, so the chunks of one recording never straddle a shard boundary (a resumed run then
        never finds half a recording in a finished shard).
        """
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
        full = self._count >= self.max_count or self._size >= self.max_size
        if self._tar is not None and full and not same_shard:
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._size += self._tar.write(
            {
                "__key__": key,
                VIDEO_MEMBER: video_mp4,
                TRAJ_MEMBER: traj.to_npz_bytes(),
                META_MEMBER: json.dumps(dict(meta), sort_keys=True).encode(),
            }
        )
        self._count += 1
        self._keys.add(key)
        self.episodes += 1

    @property
    def shard_paths(self) -> list[Path]:
        """Finished shards in this folder."""
        return sorted(self.out_dir.glob(f"{self.prefix}-*.tar"))

    def _path(self) -> Path:
        return self.out_dir / shard_name(self.prefix, self._index)

    def _open(self) -> None:
        final = self._path()
        if final.exists():  # never write over a finished shard (of this run or another)
            raise FileExistsError(f"{final} exists already")
        self._file = open(final.with_name(final.name + PARTIAL_SUFFIX), "wb")
        self._tar = wds.TarWriter(self._file)
        self._count = self._size = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()  # writes the tar end blocks; the file object stays ours to sync
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._path()
        if self.on_finalize is not None:
            self.on_finalize(final)
        os.replace(self._file.name, final)
        self._tar = self._file = None
        self._index += 1

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file); finished shards stay."""
        if self._tar is not None and self._file is not None:
            with contextlib.suppress(OSError, ValueError):  # the file is discarded; a failing close changes nothing
                self._tar.close()
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
        self._tar = self._file = None

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._tar is not None:
            self._finish()

    def __enter__(self) -> "EpisodeShardWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
