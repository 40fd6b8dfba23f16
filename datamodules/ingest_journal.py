"""The ingest journal: which clips are finished, committed shard by shard, so an interrupted run can resume.

``<out>/ingest-journal.jsonl`` starts with a header naming the run (its inputs and options); then
one line per finished shard lists the outcomes (:class:`datamodules.ingest_summary.ClipOutcome`)
of the clips processed since the previous shard. The line is written and synced *before* the shard
is renamed from ``.partial`` to ``.tar`` (see :mod:`datamodules.shard_writer`), and a recording is
never split across shards, so at any instant -- SIGKILL included -- every finished shard is fully
described by the journal, and a line whose shard never got its final name is ignored. A resumed
run therefore deletes the ``.partial`` file, skips every clip of a valid line, and continues with
the next shard number; ``summary.json`` is written last, after all shards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from datamodules.shard_writer import PARTIAL_SUFFIX

JOURNAL_NAME = "ingest-journal.jsonl"
SUMMARY_NAME = "summary.json"
JOURNAL_VERSION = 1
_SHARD_INDEX_RE = re.compile(r"-(\d{6})\.tar$")


class OutputStateError(RuntimeError):
    """The output folder holds files this run cannot continue from or must not overwrite."""


@dataclass(frozen=True)
class OutputState:
    """What an output folder already holds of an ingest run."""

    shards: list[Path]
    partials: list[Path]
    journal: Optional[Path]
    summary: Optional[Path]

    @property
    def empty(self) -> bool:
        """True when nothing blocks a fresh run (a summary alone is the report of a run that wrote nothing)."""
        return not (self.shards or self.partials or self.journal)

    def describe(self) -> str:
        parts = [f"{len(self.shards)} finished shard(s)"]
        if self.partials:
            parts.append(f"{len(self.partials)} unfinished .partial shard(s)")
        parts.append("a journal" if self.journal else "no journal")
        if self.summary is None:
            parts.append("no summary.json (the run that wrote them was interrupted)" if self.journal else "no summary.json")
        return ", ".join(parts)


def inspect_output(out_dir: Path, prefix: str = "shard") -> OutputState:
    """List the shards, unfinished shards, journal and summary in ``out_dir`` (which may not exist)."""
    if not out_dir.is_dir():
        return OutputState([], [], None, None)
    journal, summary = out_dir / JOURNAL_NAME, out_dir / SUMMARY_NAME
    return OutputState(
        shards=sorted(out_dir.glob(f"{prefix}-*.tar")),
        partials=sorted(out_dir.glob(f"{prefix}-*.tar{PARTIAL_SUFFIX}")),
        journal=journal if journal.is_file() else None,
        summary=summary if summary.is_file() else None,
    )


def clear_output(state: OutputState) -> None:
    """Delete an earlier run's shards, unfinished shards, journal and summary (``--overwrite``); nothing else."""
    for path in [*state.shards, *state.partials, state.journal, state.summary]:
        if path is not None:
            path.unlink(missing_ok=True)


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _append_synced(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class IngestJournal:
    """Append-only record of finished clips for one output folder.

    Args:
        out_dir: the output folder.
        identity: JSON-able description of the run (inputs, options); a resumed run must match it.
        resume: continue the journal already there instead of starting a new one (the caller made
            sure a fresh run starts in a folder without shards or journal).

    After construction, ``done`` maps the clip names an earlier run finished to their outcome
    dicts, and ``next_shard`` is the number of the first shard this run writes.
    """

    def __init__(self, out_dir: Path, identity: dict[str, Any], resume: bool, prefix: str = "shard") -> None:
        self.path = out_dir / JOURNAL_NAME
        self.identity = _normalised(identity)
        self.done: dict[str, dict[str, Any]] = {}
        self.next_shard = 0
        self._pending: list[dict[str, Any]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        state = inspect_output(out_dir, prefix)
        if resume and state.journal is not None:
            self._resume(state)
        else:
            if state.shards:
                raise OutputStateError(f"{out_dir} holds shards without a journal (another tool, or an older make_shards): use --overwrite")
            clear_output(state)
            self._rewrite([])

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the journal by the header and ``records`` in one atomic step."""
        lines = [{"journal": JOURNAL_VERSION, "run": self.identity}, *records]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def _resume(self, state: OutputState) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])
        except (IndexError, ValueError) as exc:
            raise OutputStateError(f"{self.path} has no readable header ({exc}): use --overwrite") from exc
        records = []
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line cut by a crash mid-write: its shard never got its final name
        earlier = header.get("run", {}) if isinstance(header, dict) else {}
        if header.get("journal") != JOURNAL_VERSION or earlier != self.identity:
            differ = sorted(k for k in set(self.identity) | set(earlier) if self.identity.get(k) != earlier.get(k))
            raise OutputStateError(
                f"--resume: the earlier run in {self.path.parent} used other inputs or options ({', '.join(differ) or 'journal version'}); use --overwrite"
            )
        present = {p.name for p in state.shards}
        valid = [r for r in records if r["shard"] is None or r["shard"] in present]
        referenced = {r["shard"] for r in valid if r["shard"] is not None}
        strangers = sorted(present - referenced)
        if strangers:
            raise OutputStateError(f"{self.path.parent} holds shards the journal does not describe ({', '.join(strangers)}): use --overwrite")
        for partial in state.partials:
            partial.unlink()
        for record in valid:
            for outcome in record["clips"]:
                self.done[outcome["clip"]] = outcome
        indices = [int(m.group(1)) for name in referenced if (m := _SHARD_INDEX_RE.search(name))]
        self.next_shard = max(indices, default=-1) + 1
        self._rewrite(valid)

    def add(self, outcome: dict[str, Any]) -> None:
        """Record a finished clip; it is committed with the shard that holds its episodes."""
        self._pending.append(outcome)

    def commit(self, shard: Optional[Path]) -> None:
        """Write the pending outcomes as finished in ``shard`` (None: they wrote no episode)."""
        if self._pending:
            _append_synced(self.path, {"shard": shard.name if shard is not None else None, "clips": self._pending})
        self._pending = []

    def close(self, keep: bool) -> None:
        """Commit what is left (clips that wrote nothing since the last shard); ``keep=False`` deletes the journal."""
        self.commit(None)
        if not keep:
            self.path.unlink(missing_ok=True)
