"""``policy.json`` of an export folder: file names, and the integrity check every loader runs.

Kept free of torch so that a robot that runs the ONNX graphs with onnxruntime alone
(:mod:`s2e.deploy`) reads and verifies an export without importing it.

Integrity: ``sha256`` maps every exported file to its digest and ``metadata_sha256`` is the digest
of the metadata itself (canonical JSON of everything but that key). So an edited timing or
controller limit, a swapped model file, a hash table emptied or cut short are all refused, not
used: a robot must never run a policy under constants other than those it was exported with.
This guards against corruption and careless edits, not against a forger, who can rehash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

FORMAT_VERSION = 2  # 2: metadata_sha256 and the "formats" table
JSON_FILE = "policy.json"
TS_FILE, PT2_FILE = "policy.ts", "policy.pt2"
ONNX_FILE, ONNX_ENCODER_FILE, ONNX_DECODER_FILE = "policy.onnx", "policy_encoder.onnx", "policy_decoder.onnx"
#: Files each export format writes (``python -m s2e export --formats``).
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "ts": (TS_FILE,),
    "pt2": (PT2_FILE,),
    "onnx": (ONNX_FILE, ONNX_ENCODER_FILE, ONNX_DECODER_FILE),
}
METADATA_HASH_KEY = "metadata_sha256"


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``meta`` without its own hash."""
    body = {key: value for key, value in meta.items() if key != METADATA_HASH_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_export_metadata(directory: Union[str, Path], meta: dict[str, Any], files: Iterable[str]) -> dict[str, Any]:
    """Hash ``files`` (already written in ``directory``) and the metadata, write policy.json; returns it."""
    directory = Path(directory)
    meta = {**meta, "sha256": {name: sha256_file(directory / name) for name in files}}
    meta[METADATA_HASH_KEY] = metadata_digest(meta)
    (directory / JSON_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def read_export_metadata(directory: Union[str, Path], verify: bool = True, require: Iterable[str] = ()) -> dict[str, Any]:
    """policy.json of an export folder. With ``verify``, the metadata must match its own hash and every
    file of every exported format must be in the hash table and match its digest; ``require`` names
    files the caller is about to load (see :func:`check_files`)."""
    directory = Path(directory)
    path = directory / JSON_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a folder written by `python -m s2e export`?")
    meta = json.loads(path.read_text())
    if verify:
        _verify(directory, path, meta, exported_files(meta))
    check_files(meta, directory, require)
    return meta


def exported_files(meta: Mapping[str, Any]) -> set[str]:
    """Every file of every format the metadata lists."""
    return {name for names in (meta.get("formats") or {}).values() for name in names}


def check_files(meta: Mapping[str, Any], directory: Union[str, Path], require: Iterable[str]) -> None:
    """An export that lacks a file the caller needs is refused, saying which format to export."""
    missing = [name for name in require if name not in exported_files(meta)]
    if missing:
        formats = sorted(meta.get("formats") or {})
        raise ValueError(
            f"{directory} has no {', '.join(missing)} (it holds the formats {formats}); "
            "export it again with `python -m s2e export --formats ...` naming the format you need"
        )


def _verify(directory: Path, path: Path, meta: dict[str, Any], files: set[str]) -> None:
    stored = meta.get(METADATA_HASH_KEY)
    if stored is None:
        raise ValueError(
            f"{path} has no {METADATA_HASH_KEY!r}: it was written before export format {FORMAT_VERSION} or edited; "
            "export the checkpoint again with `python -m s2e export`"
        )
    if stored != metadata_digest(meta):
        raise ValueError(f"{path} does not match its {METADATA_HASH_KEY}: the metadata (timing, limits, file table, ...) was edited or is corrupt")
    table = meta.get("sha256")
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path} has no file hash table ('sha256'): the export cannot be verified and is refused")
    unhashed = sorted(files - set(table))
    if unhashed or not files:
        raise ValueError(f"{path} lists files without a sha256 ({unhashed or 'no formats'}): the export cannot be verified and is refused")
    for name, digest in table.items():
        if Path(name).name != name:
            raise ValueError(f"{path} hashes {name!r}, which is not a file of the export folder")
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is listed in {path} but missing: copy the whole export folder")
        if sha256_file(directory / name) != digest:
            raise ValueError(f"{directory / name} does not match the sha256 in {path}: the export is corrupt or was edited")
