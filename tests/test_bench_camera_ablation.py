"""NavBench camera ablation (``frames: grey | shuffled``): what reaches the agent, what must not
change (env, metrics, traces), the single-episode-batch error, the report, and the comparison's
camera-ablation section."""

from __future__ import annotations

import csv
import pathlib

import lightning.pytorch as pl
import pytest
import torch

from s2e.bench.agents import StraightToGoalAgent
from s2e.bench.metrics import EpisodeResult
from s2e.bench.module import NavBenchDataModule, NavBenchModule
from s2e.bench.report import build_report, compare_reports, load_report, write_report
from s2e.bench.runner import GREY, make_env, run_batch
from s2e.bench.suite import load_suite
from s2e.scripts import navbench_compare

IMAGE = (16, 16)


class SeeingStraight(StraightToGoalAgent):
    """The straight-to-goal baseline (blind to frames, so every mode drives the same), keeping
    every frames tensor it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def act(self, obs, env):
        self.seen.append(obs["frames"].clone())
        return super().act(obs, env)


def _bench(out: pathlib.Path, frames: str, agent: SeeingStraight, num_envs: int = 4, **select) -> dict:
    module = NavBenchModule(agent="straight", out_dir=str(out), image_size=IMAGE, frames=frames, videos=0, plots=0, bootstrap_resamples=100)
    module.agent = agent
    data = NavBenchDataModule("quick", num_envs=num_envs, **{"max_episodes_per_task": 1, **select})
    pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False).test(module, datamodule=data, verbose=False)
    return module.report


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, SeeingStraight, pathlib.Path]]:
    """The quick suite (one episode per task, one batch of 4) with real, grey and shuffled frames."""
    out = {}
    for frames in ("real", "grey", "shuffled"):
        agent, folder = SeeingStraight(), tmp_path_factory.mktemp(frames)
        out[frames] = (_bench(folder, frames, agent), agent, folder)
    return out


def test_grey_frames_reach_the_agent_as_mid_grey_and_change_nothing_else(runs) -> None:
    real, real_agent, _ = runs["real"]
    grey, grey_agent, folder = runs["grey"]
    assert len(grey_agent.seen) == len(real_agent.seen) > 10
    assert all(bool((f == GREY).all()) for f in grey_agent.seen)
    assert not any(bool((f == GREY).all()) for f in real_agent.seen)  # the true camera is not grey
    assert grey["episodes"] == real["episodes"] and grey["results"] == real["results"]  # same env, same metrics
    assert grey["run"]["frames"] == "grey" and real["run"]["frames"] == "real"
    assert grey["agent"] == "straight [grey frames]" and real["agent"] == "straight"
    assert load_report(folder)["run"]["frames"] == "grey"
    md = (folder / "report.md").read_text().splitlines()
    assert (
        md[0] == "# NavBench: straight [grey frames]"
        and "Frames: **grey**: camera ablation, the agent saw uniform mid-grey (128) frames (videos show its camera)." in md
    )
    rows = list(csv.DictReader(open(folder / "report.csv")))
    assert rows and {r["frames"] for r in rows} == {"grey"} and {r["agent"] for r in rows} == {"straight [grey frames]"}


def test_shuffled_frames_are_another_episodes_real_frames(runs) -> None:
    real, real_agent, _ = runs["real"]
    shuffled, shuffled_agent, _ = runs["shuffled"]
    assert len(shuffled_agent.seen) == len(real_agent.seen)
    n = real_agent.seen[0].shape[0]
    assert n == 4
    for seen, true in zip(shuffled_agent.seen, real_agent.seen):
        for i in range(n):
            assert torch.equal(seen[i], true[(i - 1) % n])  # episode i sees episode i-1's camera at the same step
    assert any(not torch.equal(seen[i], true[i]) for seen, true in zip(shuffled_agent.seen, real_agent.seen) for i in range(n))
    assert shuffled["episodes"] == real["episodes"] and shuffled["run"]["frames"] == "shuffled"
    assert shuffled["agent"] == "straight [shuffled frames]"


def test_compare_flags_a_frame_blind_baseline_as_camera_blind_on_every_row(runs) -> None:
    table = compare_reports([runs[m][0] for m in ("real", "grey", "shuffled")])
    assert "| straight [grey frames] |" in table and "| straight [shuffled frames] |" in table
    section = table[table.index("# Camera ablation") : table.index("# Paired differences")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert len(rows) == 5  # 4 tasks + overall
    assert all(row.endswith("| **camera-blind** (grey: unchanged, shuffled: unchanged) |") for row in rows)


def test_traces_and_videos_show_the_true_camera_under_an_ablation() -> None:
    suite = load_suite("quick").select(["obstacle", "both"], 1)
    traces = {}
    for frames in ("real", "grey", "shuffled"):
        env = make_env(suite, suite.episodes, "sim", IMAGE)
        _, traces[frames] = run_batch(env, StraightToGoalAgent(), suite.episodes, "sim", trace=[0, 1], frames=frames)
    for frames in ("grey", "shuffled"):
        for i in (0, 1):
            ablated, real = traces[frames][i].frames, traces["real"][i].frames
            assert len(ablated) == len(real) > 1 and all((a == b).all() for a, b in zip(ablated, real))
    assert not (traces["real"][0].frames[0] == GREY).all()


def test_shuffled_frames_need_two_episodes_in_every_batch(tmp_path: pathlib.Path) -> None:
    agent = SeeingStraight()
    with pytest.raises(ValueError, match=r"a batch holds a single episode; set --data.init_args.num_envs 2 or more"):
        _bench(tmp_path, "shuffled", agent, num_envs=1)
    with pytest.raises(ValueError, match=r"4 episodes at num_envs=3 leave a last batch of 1: set --data.init_args.num_envs 2"):
        _bench(tmp_path, "shuffled", agent, num_envs=3)
    with pytest.raises(ValueError, match=r"the selected suite has 1 episode\(s\): select 2 or more"):
        _bench(tmp_path, "shuffled", agent, num_envs=4, tasks=["empty"])
    assert agent.seen == [] and not (tmp_path / "report.json").exists()  # refused before any episode ran
    with pytest.raises(ValueError, match=r"unknown frames mode 'blurred'; known modes: \['real', 'grey', 'shuffled'\]"):
        NavBenchModule(frames="blurred")
    suite = load_suite("quick").select(["empty"], 1)
    with pytest.raises(ValueError, match="give run_batch 2 or more episodes"):
        run_batch(make_env(suite, suite.episodes, "sim", (8, 8)), StraightToGoalAgent(), suite.episodes, "sim", frames="shuffled")


def _report(name: str, frames: str, successes: dict[str, list[bool]], source: str = "ckpt/pol.ckpt") -> dict:
    results = [
        EpisodeResult(f"{task}/{i}", task, "sim", ok, 1.0 if ok else 0.3, 0, 10.0, 9.0, 10.0) for task, flags in successes.items() for i, ok in enumerate(flags)
    ]
    report = build_report(name, load_suite("quick"), results, resamples=100, level=0.95, seed=0)
    report["run"] = {"num_envs": 4, "image_size": [32, 32], "lookahead_time": 0.6, "source": source, "frames": frames}
    return report


def test_compare_reports_a_camera_ablation_section_with_the_drops(tmp_path: pathlib.Path, capsys) -> None:
    reports = {
        "real": _report("pol", "real", {"empty": [True] * 4, "both": [True, True, False, False]}),
        "grey": _report("pol [grey frames]", "grey", {"empty": [False] * 4, "both": [True, True, False, False]}),
        "shuffled": _report("pol-shuf", "shuffled", {"empty": [True, False, False, False], "both": [True, True, True, False]}),
        "other": _report("other", "real", {"empty": [True] * 4, "both": [False] * 4}, source="ckpt/other.ckpt"),
    }
    for key, report in reports.items():
        write_report(report, tmp_path / key)
    summary = navbench_compare.run([str(tmp_path / k) for k in reports] + ["--out", str(tmp_path / "cmp.md")])
    assert set(summary) == {"pol", "pol [grey frames]", "pol-shuf [shuffled frames]", "other"}
    assert summary["pol-shuf [shuffled frames]"]["sim"]["empty"]["success_rate"] == 0.25
    table = (tmp_path / "cmp.md").read_text()
    assert "| pol [grey frames] | 0.00 | 0.50 | 0.25 |" in table  # labels carry the mode, never twice
    assert "| pol-shuf [shuffled frames] | 0.25 | 0.75 | 0.50 |" in table
    section = table[table.index("# Camera ablation") : table.index("# Paired differences")]
    assert section.count("## ") == 1 and "## pol (`ckpt/pol.ckpt`), domain `sim`" in section  # "other" has no ablated run
    assert "| task | real | ± | grey | drop | shuffled | drop | camera |" in section
    # empty: SR 1 with a zero-width CI; both ablations cost SR. both: the real CI of [1, 1, 0, 0] is [0, 1] (±0.5).
    assert "| empty | 1.00 | 0.00 | 0.00 | +1.00 | 0.25 | +0.75 | uses it |" in section
    assert "| both | 0.50 | 0.50 | 0.50 | +0.00 | 0.75 | -0.25 | **camera-blind** (grey: unchanged, shuffled: within CI) |" in section
    overall = reports["real"]["results"]["sim"]["overall"]["success_rate"]
    half = (overall["ci_high"] - overall["ci_low"]) / 2
    blind = [f"{m}: within CI" for m, drop in (("grey", 0.5), ("shuffled", 0.25)) if drop < half]
    verdict = f"**camera-blind** ({', '.join(blind)})" if blind else "uses it"
    assert f"| overall | 0.75 | {half:.2f} | 0.25 | +0.50 | 0.50 | +0.25 | {verdict} |" in section

    # Only one mode of a policy, or ablated runs alone: no section.
    assert "Camera ablation" not in compare_reports([reports["real"], reports["other"]])
    assert "Camera ablation" not in compare_reports([reports["grey"], reports["shuffled"]])
    # A grey run alone beside its real run: only its columns.
    only_grey = compare_reports([reports["real"], reports["grey"]])
    assert "| task | real | ± | grey | drop | camera |" in only_grey and "| empty | 1.00 | 0.00 | 0.00 | +1.00 | uses it |" in only_grey
    capsys.readouterr()
