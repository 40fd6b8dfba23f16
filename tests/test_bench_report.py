"""NavBench reports (json / csv / md) and the side-by-side comparison tool."""

from __future__ import annotations

import csv
import json
import pathlib
from dataclasses import replace

import pytest

from s2e.bench.metrics import EpisodeResult
from s2e.bench.report import build_report, compare_reports, load_report, write_report
from s2e.bench.suite import load_suite
from s2e.scripts import navbench_compare


def _results(successes: dict[str, list[bool]], domain: str = "sim") -> list[EpisodeResult]:
    return [
        EpisodeResult(f"{task}/{i}", task, domain, ok, 1.0 if ok else 0.4, 0 if ok else 2, 10.0, 9.0, 10.0)
        for task, flags in successes.items()
        for i, ok in enumerate(flags)
    ]


def test_report_files_agree_with_the_episodes(tmp_path: pathlib.Path) -> None:
    suite = load_suite("quick")
    results = _results({"empty": [True, True], "obstacle": [True, False]}) + _results({"empty": [False, False]}, "recorded")
    report = build_report("mine", suite, results, resamples=300, level=0.9, seed=0)
    paths = write_report(report, tmp_path)
    loaded = load_report(tmp_path)
    assert loaded == json.loads(json.dumps(report)) and loaded["domains"] == ["sim", "recorded"]
    assert loaded["results"]["sim"]["tasks"]["obstacle"]["success_rate"]["mean"] == 0.5
    assert loaded["results"]["sim"]["overall"]["collisions"]["mean"] == 0.5
    assert loaded["results"]["recorded"]["overall"]["success_rate"]["mean"] == 0.0
    assert loaded["suite"]["fingerprint"] == suite.fingerprint()
    rows = list(csv.DictReader(open(paths["csv"])))
    sr = {(r["domain"], r["task"]): float(r["mean"]) for r in rows if r["metric"] == "success_rate"}
    assert sr == {("sim", "empty"): 1.0, ("sim", "obstacle"): 0.5, ("sim", "overall"): 0.75, ("recorded", "empty"): 0.0, ("recorded", "overall"): 0.0}
    md = paths["md"].read_text()
    assert "90 % bootstrap CI" in md and "## domain `recorded` (2 episodes)" in md
    assert "| obstacle | 0.50 [" in md


def test_compare_puts_agents_side_by_side_and_refuses_different_suites(tmp_path: pathlib.Path, capsys) -> None:
    suite = load_suite("quick")
    for name, flags in (("expert", [True, True]), ("weak", [False, True])):
        write_report(build_report(name, suite, _results({"empty": flags, "both": [False, False]}), 100, 0.95, 0), tmp_path / name)
    summary = navbench_compare.run([str(tmp_path / "expert"), str(tmp_path / "weak" / "report.json"), "--out", str(tmp_path / "cmp.md")])
    assert summary["weak"]["sim"]["empty"]["success_rate"] == 0.5 and summary["expert"]["sim"]["overall"]["success_rate"] == 0.5
    table = (tmp_path / "cmp.md").read_text()
    assert "| method | empty | both | overall |" in table
    assert "| expert | 1.00 | 0.00 | 0.50 |" in table and "| weak | 0.50 | 0.00 | 0.25 |" in table
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))

    other = replace(suite, name="other", episodes=suite.episodes[:2])
    different = build_report("else", other, _results({"empty": [True]}), 100, 0.95, 0)
    with pytest.raises(ValueError, match="the reports ran different suites"):
        compare_reports([load_report(tmp_path / "expert"), different])
    assert "| else |" in compare_reports([load_report(tmp_path / "expert"), different], allow_different_suites=True)
    with pytest.raises(SystemExit):
        navbench_compare.run([str(tmp_path / "missing")])
    assert "report not found" in capsys.readouterr().err
