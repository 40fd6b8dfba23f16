"""NavBench reports: ``report.json`` (everything, per episode too), ``report.csv`` (one row per
domain x task x metric), ``report.md`` (tables with confidence intervals), and the side-by-side
comparison of several reports in the layout of the paper's tables.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from s2e.bench.metrics import METRICS, EpisodeResult, format_metric, summarize
from s2e.bench.suite import Suite

REPORT_FORMAT = 1
OVERALL = "overall"


def build_report(agent: str, suite: Suite, results: Sequence[EpisodeResult], resamples: int, level: float, seed: int) -> dict[str, Any]:
    """The report document: per domain, metrics per task and overall, plus every episode's result."""
    domains = list(dict.fromkeys(r.domain for r in results))
    return {
        "format": REPORT_FORMAT,
        "agent": agent,
        "suite": {"name": suite.name, "fingerprint": suite.fingerprint(), "robot": suite.robot, "timing": suite.timing.to_dict(),
                  "arrival_radius": suite.arrival_radius, "suite_domain": suite.domain},
        "bootstrap": {"resamples": resamples, "level": level, "seed": seed},
        "domains": domains,
        "results": {d: summarize([r for r in results if r.domain == d], suite.arrival_radius, resamples, level, seed) for d in domains},
        "episodes": [r.to_dict() for r in results],
        "files": {},
    }


def _rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [*summary["tasks"].items(), (OVERALL, summary["overall"])]


def markdown_report(report: dict[str, Any]) -> str:
    level = int(round(report["bootstrap"]["level"] * 100))
    lines = [f"# NavBench: {report['agent']}", "",
             f"Suite `{report['suite']['name']}` ({report['suite']['robot']} robot, sha256 {report['suite']['fingerprint'][:12]}); "
             f"mean [{level} % bootstrap CI, {report['bootstrap']['resamples']} resamples]. Definitions: `s2e/bench/metrics.py`.", ""]
    for domain in report["domains"]:
        summary = report["results"][domain]
        lines += [f"## domain `{domain}` ({summary['episodes']} episodes)", "",
                  "| task | " + " | ".join(METRICS.values()) + " | episodes |", "|---" * (len(METRICS) + 2) + "|"]
        for task, metrics in _rows(summary):
            lines.append(f"| {task} | " + " | ".join(format_metric(metrics[m]) for m in METRICS) + f" | {metrics['success_rate']['n']} |")
        lines.append("")
    files = report.get("files", {})
    if files.get("plots") or files.get("videos"):
        lines += ["## traced episodes", ""]
        lines += [f"- ![{Path(p).stem}]({Path(p).name})" for p in files.get("plots", [])]
        lines += [f"- video: [{Path(v).name}]({Path(v).name})" for v in files.get("videos", [])]
        lines.append("")
    return "\n".join(lines)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for domain in report["domains"]:
        for task, metrics in _rows(report["results"][domain]):
            for name in METRICS:
                rows.append({"agent": report["agent"], "domain": domain, "task": task, "metric": name, **metrics[name]})
    return rows


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.csv and report.md into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1))
    rows = csv_rows(report)
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(markdown_report(report))
    return paths


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json (or the folder holding one), checked for its format."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"report not found: {path}")
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path} is not a NavBench report of format {REPORT_FORMAT}")
    return report


def compare_reports(reports: Sequence[dict[str, Any]], metrics: Sequence[str] = ("success_rate", "route_completion", "collisions"),
                    allow_different_suites: bool = False) -> str:
    """One markdown table per domain and metric: a row per agent, a column per task, then overall
    (means; the per-report files hold the intervals). Reports of different suites are refused
    unless allowed: their numbers are not comparable."""
    if not reports:
        raise ValueError("nothing to compare: no reports given")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known metrics: {list(METRICS)}")
    prints = {r["suite"]["fingerprint"] for r in reports}
    if len(prints) > 1 and not allow_different_suites:
        names = [f"{r['agent']}: {r['suite']['name']} ({r['suite']['fingerprint'][:12]})" for r in reports]
        raise ValueError(f"the reports ran different suites, so their numbers are not comparable: {names}")
    domains = list(dict.fromkeys(d for r in reports for d in r["domains"]))
    lines = [f"# NavBench comparison (suite {', '.join(sorted({r['suite']['name'] for r in reports}))})", ""]
    for domain in domains:
        tasks = list(dict.fromkeys(t for r in reports if domain in r["results"] for t in r["results"][domain]["tasks"]))
        for metric in metrics:
            lines += [f"## {METRICS[metric]}, domain `{domain}`", "", "| method | " + " | ".join([*tasks, OVERALL]) + " |",
                      "|---" * (len(tasks) + 2) + "|"]
            for r in reports:
                summary = r["results"].get(domain)
                if summary is None:
                    continue
                cells = []
                for task in tasks:
                    entry = summary["tasks"].get(task)
                    cells.append(format_metric({"mean": entry[metric]["mean"]}) if entry else "-")
                cells.append(format_metric({"mean": summary["overall"][metric]["mean"]}))
                lines.append(f"| {r['agent']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)
