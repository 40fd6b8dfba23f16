"""Paired differences between NavBench runs of one suite: did method B beat method A on the same episodes?

Two runs of one suite drive the same episodes (same scenes, routes, crowds and seeds), so the
question "is B better than A" is about the per-episode differences ``d_i = B_i - A_i``, not about
whether two marginal intervals overlap. Overlap is a much weaker test: two runs that each have a
CI half-width of 0.2 can differ significantly by far less than 0.4 when they succeed and fail on
mostly the same episodes. Here each task's mean difference gets a percentile-bootstrap interval
over episodes (the pair resampled together, the report's own resample count, level and seed), and
the discordant pairs are counted: episodes only B solved ("gained") and only A solved ("lost").
A difference is called significant when its interval excludes zero.

Episodes are matched by domain and episode id; a run that drove a subset of the other's
episodes is compared on the shared ones (the ``n`` column says how many).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from s2e.bench.metrics import OVERALL, bootstrap_ci

#: Per-episode fields a paired difference is taken of, and their column names.
PAIRED_METRICS: dict[str, str] = {"success": "ΔSR", "route_completion": "ΔRC"}


def _by_episode(report: dict[str, Any], domain: str) -> dict[str, dict[str, Any]]:
    return {e["episode_id"]: e for e in report["episodes"] if e["domain"] == domain}


def paired_difference(baseline: dict[str, Any], other: dict[str, Any], domain: str) -> dict[str, dict[str, Any]]:
    """Per task (in the baseline's order) and overall: for each of :data:`PAIRED_METRICS`
    ``{mean, ci_low, ci_high}`` of other - baseline, plus ``n`` shared episodes and the
    ``gained`` / ``lost`` success counts. Empty when the runs share no episode in ``domain``."""
    base, new = _by_episode(baseline, domain), _by_episode(other, domain)
    shared = [i for i in base if i in new]
    if not shared:
        return {}
    bootstrap = baseline.get("bootstrap", {})
    resamples, level, seed = int(bootstrap.get("resamples", 1000)), float(bootstrap.get("level", 0.95)), int(bootstrap.get("seed", 0))
    tasks = list(dict.fromkeys(base[i]["task"] for i in shared))
    out: dict[str, dict[str, Any]] = {}
    for task in [*tasks, OVERALL]:
        ids = [i for i in shared if task == OVERALL or base[i]["task"] == task]
        entry: dict[str, Any] = {"n": len(ids)}
        for field in PAIRED_METRICS:
            diff = np.array([float(new[i][field]) - float(base[i][field]) for i in ids], dtype=np.float64)
            low, high = bootstrap_ci(diff, resamples, level, seed)
            entry[field] = {"mean": float(diff.mean()), "ci_low": low, "ci_high": high}
        entry["gained"] = sum(bool(new[i]["success"]) and not bool(base[i]["success"]) for i in ids)
        entry["lost"] = sum(bool(base[i]["success"]) and not bool(new[i]["success"]) for i in ids)
        out[task] = entry
    return out


def _cell(entry: dict[str, Any]) -> str:
    mark = " *" if entry["ci_low"] > 0 or entry["ci_high"] < 0 else ""
    return f"{entry['mean']:+.2f} [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}]{mark}"


def paired_section(reports: Sequence[dict[str, Any]], labels: Sequence[str], baseline_index: int = 0) -> list[str]:
    """Markdown lines: every other report of the same suite against ``reports[baseline_index]``, per
    domain both ran, a row per task. No lines when there is nothing to pair."""
    if not 0 <= baseline_index < len(reports):
        raise ValueError(f"baseline index {baseline_index} is out of range for {len(reports)} reports")
    baseline = reports[baseline_index]
    lines: list[str] = []
    for index, other in enumerate(reports):
        if index == baseline_index or other["suite"]["fingerprint"] != baseline["suite"]["fingerprint"]:
            continue  # episode ids pair episodes only within one suite
        for domain in baseline["domains"]:
            if domain not in other["domains"]:
                continue
            rows = paired_difference(baseline, other, domain)
            if not rows:
                continue
            if not lines:
                lines += [
                    f"# Paired differences against {labels[baseline_index]}",
                    "",
                    "Same episodes, method minus baseline: mean difference with its paired bootstrap 95 % CI "
                    "(* = the interval excludes 0), and how many episodes only the method (gained) or only the "
                    'baseline (lost) solved. This is the test for "is it better"; overlapping per-run CIs are not.',
                    "",
                ]
            lines += [
                f"## {labels[index]} vs {labels[baseline_index]}, domain `{domain}`",
                "",
                "| task | n | " + " | ".join(PAIRED_METRICS.values()) + " | gained | lost |",
                "|---" * (4 + len(PAIRED_METRICS)) + "|",
            ]
            for task, entry in rows.items():
                cells = [_cell(entry[field]) for field in PAIRED_METRICS]
                lines.append(f"| {task} | {entry['n']} | " + " | ".join(cells) + f" | {entry['gained']} | {entry['lost']} |")
            lines.append("")
    return lines
