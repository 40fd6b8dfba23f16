"""NavBench reports: ``report.json`` (everything, per episode too), ``report.csv`` (one row per
domain x task x metric), ``report.md`` (tables with confidence intervals), and the side-by-side
comparison of several reports in the layout of the paper's tables, with a camera-ablation
section when one policy was run with real and with ablated frames (``run.frames``, see
:data:`FRAME_MODES`; ``s2e.bench.runner`` applies them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from s2e.bench.metrics import METRICS, OVERALL, EpisodeResult, format_metric, summarize
from s2e.bench.paired import paired_section
from s2e.bench.suite import Suite

REPORT_FORMAT = 1
#: What the agent sees in place of its camera, per ``frames`` mode of a run (the camera ablation).
FRAME_MODES: dict[str, str] = {
    "real": "its own camera",
    "grey": "uniform mid-grey (128) frames",
    "shuffled": "the frames of another episode of its batch at the same step (the batch rolled by one)",
}
ABLATIONS = tuple(m for m in FRAME_MODES if m != "real")


def frames_mode(report: dict[str, Any]) -> str:
    """What the agent saw as its camera (``real`` for reports written before the ablation existed)."""
    return report.get("run", {}).get("frames", "real")


def frames_suffix(frames: str) -> str:
    """`` [grey frames]`` for an ablated run, nothing for ``real``."""
    return "" if frames == "real" else f" [{frames} frames]"


def method_label(report: dict[str, Any]) -> str:
    """The agent's name with its frames mode, unless the name already carries it."""
    suffix = frames_suffix(frames_mode(report))
    return report["agent"] if report["agent"].endswith(suffix) else report["agent"] + suffix


def build_report(agent: str, suite: Suite, results: Sequence[EpisodeResult], resamples: int, level: float, seed: int) -> dict[str, Any]:
    """The report document: per domain, metrics per task and overall, plus every episode's result."""
    domains = list(dict.fromkeys(r.domain for r in results))
    return {
        "format": REPORT_FORMAT,
        "agent": agent,
        "suite": {
            "name": suite.name,
            "fingerprint": suite.fingerprint(),
            "robot": suite.robot,
            "timing": suite.timing.to_dict(),
            "arrival_radius": suite.arrival_radius,
            "suite_domain": suite.domain,
        },
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
    frames = frames_mode(report)
    camera = (
        f"real (the agent saw {FRAME_MODES['real']})"
        if frames == "real"
        else f"**{frames}**: camera ablation, the agent saw {FRAME_MODES[frames]} (videos show its camera)"
    )
    lines = [
        f"# NavBench: {method_label(report)}",
        "",
        f"Suite `{report['suite']['name']}` ({report['suite']['robot']} robot, sha256 {report['suite']['fingerprint'][:12]}); "
        f"mean [{level} % bootstrap CI, {report['bootstrap']['resamples']} resamples]. Definitions: `s2e/bench/metrics.py`.",
        "",
        f"Frames: {camera}.",
        "",
    ]
    for domain in report["domains"]:
        summary = report["results"][domain]
        lines += [
            f"## domain `{domain}` ({summary['episodes']} episodes)",
            "",
            "| task | " + " | ".join(METRICS.values()) + " | episodes |",
            "|---" * (len(METRICS) + 2) + "|",
        ]
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
    rows, frames = [], frames_mode(report)
    for domain in report["domains"]:
        for task, metrics in _rows(report["results"][domain]):
            for name in METRICS:
                rows.append({"agent": report["agent"], "frames": frames, "domain": domain, "task": task, "metric": name, **metrics[name]})
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


def compare_reports(
    reports: Sequence[dict[str, Any]],
    metrics: Sequence[str] = ("success_rate", "route_completion", "collisions"),
    allow_different_suites: bool = False,
    baseline: Optional[int] = 0,
    labels: Optional[Sequence[str]] = None,
) -> str:
    """One markdown table per domain and metric: a row per agent, a column per task, then overall
    (means; the per-report files hold the intervals). Reports of different suites are refused
    unless allowed: their numbers are not comparable. Then the camera-ablation section, and the
    paired differences of every report against ``reports[baseline]`` (:mod:`s2e.bench.paired`;
    None: no such section). ``labels``: row names, one per report (default: each agent's name
    with its frames mode; two checkpoints both called ``last.ckpt`` need them)."""
    if not reports:
        raise ValueError("nothing to compare: no reports given")
    if labels is None:
        labels = [method_label(r) for r in reports]
    elif len(labels) != len(reports):
        raise ValueError(f"{len(labels)} labels for {len(reports)} reports")
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
            lines += [f"## {METRICS[metric]}, domain `{domain}`", "", "| method | " + " | ".join([*tasks, OVERALL]) + " |", "|---" * (len(tasks) + 2) + "|"]
            for r, label in zip(reports, labels):
                summary = r["results"].get(domain)
                if summary is None:
                    continue
                cells = []
                for task in tasks:
                    entry = summary["tasks"].get(task)
                    cells.append(format_metric({"mean": entry[metric]["mean"]}) if entry and metric in entry else "-")  # older reports lack newer metrics
                overall = summary["overall"].get(metric)
                cells.append(format_metric({"mean": overall["mean"]}) if overall else "-")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    paired = [] if baseline is None else paired_section(reports, labels, baseline)
    return "\n".join(lines + camera_ablation(reports) + paired)


def _policy_key(report: dict[str, Any]) -> tuple[str, str]:
    """Runs of one policy on one suite: same suite fingerprint and same checkpoint / export (a
    baseline, or a report without a source: same name less its frames suffix)."""
    name = report["agent"].removesuffix(frames_suffix(frames_mode(report)))
    return report["suite"]["fingerprint"], report.get("run", {}).get("source") or name


def camera_ablation(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: per policy run with ``real`` and ablated frames, per domain and task, SR real
    vs grey / shuffled and the drop, flagging rows the ablation moved by less than the real run's CI
    half-width ("within CI") or not at all ("unchanged"): camera-blind. No lines without such a pair."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in reports:
        groups.setdefault(_policy_key(r), {}).setdefault(frames_mode(r), r)  # the first report of each mode
    lines: list[str] = []
    for (_, source), runs in groups.items():
        real, modes = runs.get("real"), [m for m in ABLATIONS if m in runs]
        if real is None or not modes:
            continue
        if not lines:
            lines += [
                "# Camera ablation",
                "",
                "SR with the true camera (real) and with it taken away: grey = uniform grey frames, shuffled = another "
                "episode's frames; drop = real - ablated. ± is the half-width of the real run's CI. A row whose SR an "
                "ablation moved by less than that is flagged **camera-blind**: the policy may not be using its camera.",
                "",
            ]
        for domain in real["domains"]:
            if not all(domain in runs[m]["results"] for m in modes):
                continue
            lines += [
                f"## {real['agent']} (`{source}`), domain `{domain}`",
                "",
                "| task | real | ± | " + " | ".join(f"{m} | drop" for m in modes) + " | camera |",
                "|---" * (3 + 2 * len(modes) + 1) + "|",
            ]
            summary = real["results"][domain]
            for task, metrics in _rows(summary):
                sr = metrics["success_rate"]
                half = (sr["ci_high"] - sr["ci_low"]) / 2 if sr["ci_low"] is not None else 0.0
                cells, blind = [f"{sr['mean']:.2f}", f"{half:.2f}"], []
                for m in modes:
                    other = runs[m]["results"][domain]
                    entry = other["overall"] if task == OVERALL else other["tasks"].get(task)
                    if entry is None:
                        cells += ["-", "-"]
                        continue
                    drop = sr["mean"] - entry["success_rate"]["mean"]
                    cells += [f"{entry['success_rate']['mean']:.2f}", f"{drop:+.2f}"]
                    if abs(drop) < 1e-9:
                        blind.append(f"{m}: unchanged")
                    elif abs(drop) < half:
                        blind.append(f"{m}: within CI")
                verdict = f"**camera-blind** ({', '.join(blind)})" if blind else "uses it"
                lines.append(f"| {task} | " + " | ".join(cells) + f" | {verdict} |")
            lines.append("")
    return lines
