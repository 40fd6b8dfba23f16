"""Put several NavBench reports side by side, like the paper's tables (one row per policy).

    python tools/navbench_compare.py lightning_logs/navbench/version_0 lightning_logs/navbench/version_1 \
        --metrics success_rate route_completion collisions --out artifacts/navbench_compare.md

Each argument is a report.json or the folder holding one. Reports must come from the same suite
(same fingerprint) unless --allow-different-suites. Methods are labelled with their frames mode
(``tiny [grey frames]``); when one policy (same checkpoint / export) was run with real frames and
with a camera ablation (``--model.init_args.frames grey|shuffled``), a "Camera ablation" section
follows: per task SR real vs grey vs shuffled, the drop, and rows flagged camera-blind where the
ablation moved SR by less than the real run's CI half-width. Last, "Paired differences": every
other report of the same suite minus the baseline (the first report, or ``--baseline N``), per
task on the same episodes, with paired bootstrap CIs and the episodes gained and lost; that, not
overlapping CIs, is the test of "is B better than A". Prints the markdown, then, last, one JSON
object {method: {domain: {task: {metric: mean}}}}.

    python -m s2e test --config experiments/navbench.yaml --ckpt_path CKPT --model.init_args.frames grey
    python tools/navbench_compare.py REAL_RUN GREY_RUN SHUFFLED_RUN
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s2e.bench.metrics import METRICS
from s2e.bench.report import compare_reports, load_report, method_label


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files or folders holding one")
    parser.add_argument("--metrics", nargs="+", default=["success_rate", "route_completion", "collisions", "stuck"], choices=list(METRICS))
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--labels", nargs="+", help="row names, one per report (default: the agent names)")
    parser.add_argument(
        "--baseline", type=int, default=1, help="position (1 = the first report) of the run the others are paired against; 0: no paired differences"
    )
    parser.add_argument("--allow-different-suites", action="store_true", help="compare reports of different suites anyway")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Print (and write) the comparison table; prints and returns the means per method."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.baseline <= len(args.reports):
        parser.error(f"--baseline {args.baseline}: there are {len(args.reports)} reports (1..{len(args.reports)}, or 0 for none)")
    if args.labels is not None and len(args.labels) != len(args.reports):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.reports)} reports")
    try:
        reports = [load_report(path) for path in args.reports]
        labels = args.labels or [method_label(r) for r in reports]
        table = compare_reports(reports, args.metrics, args.allow_different_suites, baseline=args.baseline - 1 if args.baseline else None, labels=labels)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    summary = {
        label: {
            d: {t: {m: s[m]["mean"] for m in args.metrics} for t, s in [*r["results"][d]["tasks"].items(), ("overall", r["results"][d]["overall"])]}
            for d in r["domains"]
        }
        for r, label in zip(reports, labels)
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
