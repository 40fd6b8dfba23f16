"""Paired differences between NavBench runs of one suite (s2e.bench.paired, navbench_compare --baseline)."""

from __future__ import annotations

import pathlib
from dataclasses import replace

import pytest

from s2e.bench.metrics import EpisodeResult
from s2e.bench.paired import paired_difference
from s2e.bench.report import build_report, compare_reports, write_report
from s2e.bench.suite import load_suite
from s2e.scripts import navbench_compare

SUITE = load_suite("quick")


def _report(agent: str, successes: list[bool], task: str = "obstacle", domain: str = "sim", suite=SUITE) -> dict:
    results = [EpisodeResult(f"{task}/{i}", task, domain, ok, 1.0 if ok else 0.5, 0 if ok else 1, 10.0, 9.0, 10.0) for i, ok in enumerate(successes)]
    return build_report(agent, suite, results, resamples=1000, level=0.95, seed=0)


def test_a_consistent_gain_is_significant_paired_although_the_marginal_intervals_overlap() -> None:
    """40 episodes: the method solves the baseline's 16 and 8 more. Marginal CIs (0.40 vs 0.60) overlap;
    on the same episodes the gain is 8 episodes gained, none lost, an interval excluding zero."""
    base_flags = [i < 16 for i in range(40)]
    new_flags = [i < 24 for i in range(40)]
    base, new = _report("base", base_flags), _report("new", new_flags)
    marginal_base, marginal_new = (r["results"]["sim"]["tasks"]["obstacle"]["success_rate"] for r in (base, new))
    assert marginal_new["ci_low"] < marginal_base["ci_high"]  # the weak test says nothing

    row = paired_difference(base, new, "sim")["obstacle"]
    assert row["n"] == 40 and row["gained"] == 8 and row["lost"] == 0
    assert row["success"]["mean"] == pytest.approx(0.2) and row["success"]["ci_low"] > 0
    assert row["route_completion"]["mean"] == pytest.approx(0.1)
    table = compare_reports([base, new], ["success_rate"], labels=["base", "new"])
    assert "## new vs base, domain `sim`" in table
    assert "| obstacle | 40 | +0.20 [" in table and "] * |" in table


def test_the_same_rate_on_different_episodes_is_no_gain_and_not_significant() -> None:
    base = _report("base", [i % 2 == 0 for i in range(20)])
    swapped = _report("swapped", [i % 2 == 1 for i in range(20)])
    row = paired_difference(base, swapped, "sim")["obstacle"]
    assert row["success"]["mean"] == 0 and row["gained"] == 10 and row["lost"] == 10
    assert row["success"]["ci_low"] < 0 < row["success"]["ci_high"]
    assert " * |" not in compare_reports([base, swapped], ["success_rate"]).split("Paired differences")[1]


def test_only_shared_episodes_of_one_suite_are_paired() -> None:
    base, subset = _report("base", [True] * 10), _report("subset", [False] * 4)
    rows = paired_difference(base, subset, "sim")
    assert rows["obstacle"]["n"] == rows["overall"]["n"] == 4 and rows["obstacle"]["lost"] == 4
    assert paired_difference(base, subset, "recorded") == {}

    other_suite = replace(SUITE, name="other", episodes=SUITE.episodes[:2])
    elsewhere = _report("elsewhere", [False] * 10, suite=other_suite)
    table = compare_reports([base, elsewhere], ["success_rate"], allow_different_suites=True)
    assert "| elsewhere |" in table and "Paired differences" not in table  # same ids, other episodes: never paired


def test_navbench_compare_labels_and_baseline(tmp_path: pathlib.Path, capsys) -> None:
    for name, flags in (("a", [True, False, False, False]), ("b", [True, True, True, False])):
        write_report(_report("last", flags), tmp_path / name)
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    summary = navbench_compare.run([*runs, "--labels", "pretrained", "post-trained", "--metrics", "success_rate"])
    assert set(summary) == {"pretrained", "post-trained"}
    out = capsys.readouterr().out
    assert "## post-trained vs pretrained, domain `sim`" in out and "| obstacle | 4 | +0.50 [" in out

    navbench_compare.run([*runs, "--baseline", "2", "--metrics", "success_rate"])
    assert "| obstacle | 4 | -0.50 [" in capsys.readouterr().out
    navbench_compare.run([*runs, "--baseline", "0", "--metrics", "success_rate"])
    assert "Paired differences" not in capsys.readouterr().out
    for bad in (["--baseline", "3"], ["--labels", "only-one"]):
        with pytest.raises(SystemExit):
            navbench_compare.run([*runs, *bad])
