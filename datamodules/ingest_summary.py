"""What happened to every recording of an ingest run, clip by clip and in total.

Each clip ends in exactly one :class:`ClipOutcome`: kept (one or more episodes written) or skipped
(with a reason), plus the seconds dropped inside it by reason, warnings, and the messages a robot
log source could not use. Outcomes are plain JSON so the ingest journal can store them and a
resumed run can count the clips an earlier run finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

SECONDS_PER_HOUR = 3600.0


@dataclass
class ClipOutcome:
    """One clip's result: ``kept`` episode entries, or ``skipped`` = {clip, reason, detail}."""

    clip: str
    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: Optional[dict[str, str]] = None
    dropped_seconds: dict[str, float] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    message_skips: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, detail: str, seconds: float = 0.0) -> "ClipOutcome":
        self.skipped = {"clip": self.clip, "reason": reason, "detail": detail}
        self.drop(reason, seconds)
        return self

    def drop(self, reason: str, seconds: float) -> None:
        if seconds > 0:
            self.dropped_seconds[reason] = self.dropped_seconds.get(reason, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClipOutcome":
        return cls(**data)


def _add_counts(total: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value


@dataclass
class IngestSummary:
    """Kept episodes (several per clip when split), skipped clips, hours dropped, warnings, message skips."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    hours_dropped: dict[str, float] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    messages_skipped: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: ClipOutcome) -> None:
        """Count one clip; it must be kept or skipped, never neither."""
        if bool(outcome.kept) == (outcome.skipped is not None):
            raise ValueError(f"clip {outcome.clip!r} must be either kept or skipped")
        self.kept.extend(outcome.kept)
        if outcome.skipped is not None:
            self.skipped.append(outcome.skipped)
        _add_counts(self.hours_dropped, {k: v / SECONDS_PER_HOUR for k, v in outcome.dropped_seconds.items()})
        _add_counts(self.warnings, {k: 1 for k in outcome.warnings})
        _add_counts(self.messages_skipped, outcome.message_skips)

    @property
    def hours_kept(self) -> float:
        return sum(k["valid_hours"] for k in self.kept)

    @property
    def clips_kept(self) -> int:
        return len({k["clip"] for k in self.kept})

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            _add_counts(counts, {s["reason"]: 1})
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "clips": self.clips_kept + len(self.skipped),
            "clips_kept": self.clips_kept,
            "clips_skipped": len(self.skipped),
            "episodes": len(self.kept),
            "hours_kept": self.hours_kept,
            "hours_dropped": dict(sorted(self.hours_dropped.items())),
            "skipped_by_reason": self.skipped_by_reason(),
            "warnings": dict(sorted(self.warnings.items())),
            "messages_skipped": dict(sorted(self.messages_skipped.items())),
            "kept": self.kept,
            "skipped": self.skipped,
        }

    def table(self) -> str:
        """A human-readable summary for the terminal."""
        lines = [f"clips kept: {self.clips_kept} ({len(self.kept)} episodes)   clips skipped: {len(self.skipped)}   hours kept: {self.hours_kept:.4f}"]
        for reason, count in sorted(self.skipped_by_reason().items()):
            lines.append(f"  skipped clips     {reason:<24} {count:>6}")
        for reason, hours in sorted(self.hours_dropped.items()):
            lines.append(f"  hours dropped     {reason:<24} {hours:>10.4f}")
        for reason, count in sorted(self.warnings.items()):
            lines.append(f"  clips warned      {reason:<24} {count:>6}")
        for reason, count in sorted(self.messages_skipped.items()):
            lines.append(f"  messages skipped  {reason:<24} {count:>6}")
        return "\n".join(lines)
