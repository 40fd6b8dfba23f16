"""Put several NavBench reports side by side, like the paper's tables (one row per policy).

    python tools/navbench_compare.py lightning_logs/navbench/version_0 lightning_logs/navbench/version_1 \
        --metrics success_rate route_completion collisions --out artifacts/navbench_compare.md

Each argument is a report.json or the folder holding one. Reports must come from the same suite
(same fingerprint) unless --allow-different-suites. Prints the markdown tables, then, last, one
JSON object {agent: {domain: {task: {metric: mean}}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2e.bench.metrics import METRICS  # noqa: E402
from s2e.bench.report import compare_reports, load_report  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files or folders holding one")
    parser.add_argument("--metrics", nargs="+", default=["success_rate", "route_completion", "collisions"], choices=list(METRICS))
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--allow-different-suites", action="store_true", help="compare reports of different suites anyway")
    args = parser.parse_args(argv)
    try:
        reports = [load_report(path) for path in args.reports]
        table = compare_reports(reports, args.metrics, args.allow_different_suites)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    summary = {
        r["agent"]: {d: {t: {m: s[m]["mean"] for m in args.metrics} for t, s in [*r["results"][d]["tasks"].items(), ("overall", r["results"][d]["overall"])]}
                     for d in r["domains"]}
        for r in reports
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
