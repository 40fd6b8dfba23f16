"""The paper's fine-tuning ablation (S2E, arXiv 2507.22028, Stage 2; see the README) as one reproducible command.

    python tools/reproduce_s2e.py --pretrained artifacts/demo/pretrain.ckpt --out artifacts/reproduce --minutes 30

From one pretrained checkpoint, every post-training strategy (``ram``, ``full``, ``decoder``,
``sft``, and ``none``: the ``ram`` run with both learning rates at 0, a control that collects and
runs the PPO loop but changes nothing) is trained through the real CLI
(``python -m s2e fit --config experiments/posttrain.yaml``) for the SAME wall-clock budget
(``--minutes``, Lightning's ``trainer.max_time``), one after the other; ``full``, ``decoder`` and
``sft`` without the shipped KL penalty to the pretrained policy, which only ``ram`` can compute. Then the pretrained policy
and every run's last checkpoint drive the held-out NavBench suite (``--suite``, default the
standard one: 4 tasks x 24 episodes; ``--bench-episodes`` keeps the first N per task) in the RL
training domain ``sim`` and in the pretraining domain ``recorded``
(``python -m s2e test --config experiments/navbench.yaml``).

What it measures: per method, domain and task, SR (success rate), RC (route completion) and CT
(collisions per episode) with seeded bootstrap 95 % CIs (``s2e/bench/metrics.py``): does the
strategy improve on the pretrained policy in ``sim`` and keep (or lose) what it knew in
``recorded`` (forgetting / appearance shift)? ``none`` separates the effect of the updates from
noise; its numbers should equal the pretrained policy's, as RAM starts as the identity.

Writes under ``--out``: ``<method>/last.ckpt`` (the run's last checkpoint), ``<method>/fit.log``,
``<method>/navbench/report.{json,md,csv}``, ``compare.md`` (``tools/navbench_compare.py``, means),
``results.md`` (the printed tables, with CIs, then every strategy's paired difference from the
pretrained policy on the same episodes: ``s2e/bench/paired.py``), ``curves.png`` (training curves from TensorBoard vs
env frames: episode return / success / route completion of the training rollouts, KL, clip
fraction, entropy, explained variance, SFT loss) and ``summary.json``; the last printed line is one
JSON object. A rerun skips every finished step (a checkpoint, or a report of the same suite newer
than its checkpoint, exists); delete ``<method>/`` to retrain. A failed step (its command and exit
code) is reported in ``summary.json`` and the run goes on with the other methods; the exit code is
then 1. Every argument after ``--fit-args`` goes to every fit, e.g.
``--fit-args --data.init_args.num_envs 16 --trainer.callbacks.init_args.every_n_epochs 0`` (no videos).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from s2e.bench.metrics import METRICS, format_metric
from s2e.bench.paired import paired_section
from s2e.bench.report import OVERALL, load_report
from s2e.bench.suite import load_suite
from s2e.rl.strategy import STRATEGIES
from s2e.scripts import REPO_ROOT, strategy_fit_args

CONTROL = "none"  # the no-update control: `ram` with lr = value_lr = 0
PRETRAINED = "pretrained"
DOMAINS = ("sim", "recorded")
TABLE_METRICS = ("success_rate", "route_completion", "collisions")  # SR / RC / CT
#: Curve panels: title and the substrings that pick a logged scalar tag (the first tag matching wins).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("episode return (training rollouts)", ("episode/return",)),
    ("success (training rollouts)", ("episode/success",)),
    ("route completion (training rollouts)", ("episode/route_completion",)),
    ("approx. KL", ("kl_approx", "/kl")),
    ("KL to the pretrained policy (anchor choice)", ("reference_kl",)),
    ("clip fraction", ("clip_fraction",)),
    ("entropy", ("ppo/entropy", "entropy")),
    ("explained variance", ("explained_variance",)),
    ("SFT loss", ("sft/loss",)),
)
BATCH_TAG = "reward/step"  # logged once per rollout batch: counts the batches of a run


@dataclass
class Method:
    """One row of the ablation: what exists for it and what went wrong."""

    name: str
    checkpoint: Optional[Path] = None
    report: Optional[Path] = None
    fit_seconds: Optional[float] = None
    failures: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------- commands
def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a (fractional) number of minutes, whole seconds."""
    seconds = round(minutes * 60)
    if seconds < 1:
        raise ValueError(f"--minutes {minutes} is under one second")
    days, rest = divmod(seconds, 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def fit_command(name: str, args: argparse.Namespace) -> list[str]:
    root = str(args.out / name)
    strategy = (
        strategy_fit_args("ram") + ["--model.init_args.ppo.lr", "0", "--model.init_args.ppo.value_lr", "0"] if name == CONTROL else strategy_fit_args(name)
    )
    task = ["--model.init_args.task", args.task] if args.task else []
    return [
        sys.executable,
        "-m",
        "s2e",
        "fit",
        "--config",
        str(REPO_ROOT / "experiments" / "posttrain.yaml"),
        "--model.init_args.pretrained",
        str(args.pretrained),
        *strategy,
        *task,
        "--trainer.max_time",
        max_time(args.minutes),
        "--trainer.max_epochs",
        "-1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        root,
        "--trainer.logger.init_args.save_dir",
        root,
        *args.fit_args,
    ]


def bench_command(name: str, checkpoint: Path, args: argparse.Namespace) -> list[str]:
    episodes = ["--data.init_args.max_episodes_per_task", str(args.bench_episodes)] if args.bench_episodes else []
    return [
        sys.executable,
        "-m",
        "s2e",
        "test",
        "--config",
        str(REPO_ROOT / "experiments" / "navbench.yaml"),
        "--ckpt_path",
        str(checkpoint),
        "--data.init_args.suite",
        args.suite,
        "--data.init_args.domains",
        f"[{', '.join(DOMAINS)}]",
        "--data.init_args.num_envs",
        "48",
        *episodes,
        "--model.init_args.name",
        name,
        "--model.init_args.out_dir",
        str(args.out / name / "navbench"),
        "--model.init_args.videos",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(args.out / name / "navbench"),  # where the CLI saves its config.yaml
    ]


def run_step(step: str, command: list[str], log: Path) -> Optional[dict[str, Any]]:
    """Run ``command`` (output to ``log``); None on success, else the failure as summary.json records it."""
    print(f"[{step}] {shlex.join(command)}\n[{step}] log: {log}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code == 0:
        print(f"[{step}] ok in {time.monotonic() - started:.0f} s", flush=True)
        return None
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    print(f"[{step}] FAILED with exit code {code}; command: {shlex.join(command)}\n{tail}", file=sys.stderr, flush=True)
    return {"step": step, "command": shlex.join(command), "exit_code": code, "log": str(log)}


# ---------------------------------------------------------------------------- steps
def newest_run(root: Path) -> Optional[Path]:
    """The Lightning version folder of the newest ``checkpoints/last.ckpt`` under ``root``."""
    found = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None


def train(method: Method, args: argparse.Namespace) -> None:
    target = args.out / method.name / "last.ckpt"
    if target.is_file():
        print(f"[fit {method.name}] done already ({target})", flush=True)
        method.checkpoint = target
        return
    command, started = fit_command(method.name, args), time.monotonic()
    failure = run_step(f"fit {method.name}", command, args.out / method.name / "fit.log")
    run = newest_run(args.out / method.name) if failure is None else None
    if failure is None and run is None:
        failure = {
            "step": f"fit {method.name}",
            "command": shlex.join(command),
            "exit_code": 0,
            "error": f"the fit finished but wrote no checkpoints/last.ckpt under {args.out / method.name}",
        }
    if failure is not None:
        method.failures.append(failure)
        return
    shutil.copy(run / "checkpoints" / "last.ckpt", target)
    method.checkpoint, method.fit_seconds = target, time.monotonic() - started


def report_is_current(report: Path, checkpoint: Path, fingerprint: str) -> bool:
    """A report of this suite selection in both domains, written after its checkpoint."""
    if not report.is_file() or report.stat().st_mtime < checkpoint.stat().st_mtime:
        return False
    done = load_report(report)
    return done["suite"]["fingerprint"] == fingerprint and set(DOMAINS) <= set(done["domains"])


def evaluate(method: Method, args: argparse.Namespace) -> None:
    if method.checkpoint is None:
        return
    report = args.out / method.name / "navbench" / "report.json"
    if report_is_current(report, method.checkpoint, args.fingerprint):
        print(f"[NavBench {method.name}] done already ({report})", flush=True)
    else:
        failure = run_step(f"NavBench {method.name}", bench_command(method.name, method.checkpoint, args), args.out / method.name / "navbench.log")
        if failure is not None:
            method.failures.append(failure)
            return
    method.report = report


def compare(methods: list[Method], args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """tools/navbench_compare.py over every report (means only; the printed tables add the CIs)."""
    reports = [str(m.report.parent) for m in methods if m.report is not None]
    if not reports:
        return None
    command = [sys.executable, str(REPO_ROOT / "tools" / "navbench_compare.py"), *reports, "--out", str(args.out / "compare.md")]
    return run_step("compare", command, args.out / "compare.log")


# ---------------------------------------------------------------------------- results
def ci_results(report: dict[str, Any]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{domain: {task (and overall): {SR / RC / CT: {mean, ci_low, ci_high, n}}}} of a report."""
    return {
        domain: {
            task: {METRICS[m]: entry[m] for m in TABLE_METRICS}
            for task, entry in [*report["results"][domain]["tasks"].items(), (OVERALL, report["results"][domain]["overall"])]
        }
        for domain in report["domains"]
    }


def ci_tables(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per domain and metric, a row per method, a column per task, cells ``mean [lo, hi]``."""
    lines = ["# Fine-tuning ablation on NavBench: mean [95 % bootstrap CI]", ""]
    for domain in DOMAINS:
        rows = {name: r[domain] for name, r in results.items() if domain in r}
        tasks = list(dict.fromkeys(t for r in rows.values() for t in r))
        for metric in (METRICS[m] for m in TABLE_METRICS):
            lines += [f"## {metric}, domain `{domain}`", "", "| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(format_metric(r[t][metric]) if t in r else "-" for t in tasks) + " |" for name, r in rows.items()]
            lines.append("")
    return "\n".join(lines)


def run_facts(root: Path) -> dict[str, Any]:
    """What a training run's own files say: its task, time budget, rollout batches and env frames."""
    run = newest_run(root)
    if run is None:
        return {}
    hparams, config = load_yaml(run / "hparams.yaml"), load_yaml(run / "config.yaml")
    scalars = read_scalars(run)
    batches = len(next((v for tag, v in scalars.items() if tag.endswith(BATCH_TAG)), []))
    frames = frames_per_batch(hparams)
    budget = (config.get("trainer") or {}).get("max_time")
    return {
        "run_dir": str(run),
        "task": hparams.get("task"),
        "max_time": budget,
        "budget_minutes": budget_minutes(budget),
        "rollout_batches": batches,
        "env_frames": batches * frames if frames else None,
    }


def budget_minutes(max_time: Any) -> Optional[float]:
    """Minutes of a ``DD:HH:MM:SS`` trainer.max_time (None for anything else)."""
    if not isinstance(max_time, str) or max_time.count(":") != 3:
        return None
    days, hours, minutes, seconds = map(int, max_time.split(":"))
    return ((days * 24 + hours) * 60 + minutes) + seconds / 60


def load_yaml(path: Path) -> dict[str, Any]:
    """A run's hparams.yaml / config.yaml ({} when absent)."""
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def frames_per_batch(hparams: dict[str, Any]) -> Optional[int]:
    """Env frames (control periods) in one rollout batch: workers x num_envs x steps_per_batch x
    action_repeat (SimulatorRollouts' steps are decisions, each holding its command action_repeat periods)."""
    if "num_envs" not in hparams or "steps_per_batch" not in hparams:
        return None
    workers = hparams.get("collector_workers", 1) if hparams.get("collector") == "multisync" else 1
    return int(workers * hparams["num_envs"] * hparams["steps_per_batch"] * hparams.get("action_repeat", 1))


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard event files: [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run), size_guidance={SCALARS: 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def panel_tag(tags: Iterable[str], keys: Sequence[str]) -> Optional[str]:
    """The logged tag a panel plots: the first key a tag ends with, else the first key a tag contains.
    Ends-with first, so ``episode/success`` picks the overall rate, never a task mix's
    ``episode/success/<task>``, whichever was logged first."""
    tags = list(tags)
    for match in (str.endswith, str.__contains__):
        found = next((t for key in keys for t in tags if match(t, key)), None)
        if found is not None:
            return found
    return None


def plot_curves(roots: dict[str, Path], path: Path, smooth: int = 10) -> dict[str, list[str]]:
    """One PNG, a panel per :data:`PANELS` entry, a line per method (raw faint, ``smooth``-point trailing mean solid)
    against env frames (or rollout batches when the run's hparams do not say); returns the tags used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, (len(PANELS) + 1) // 2, figsize=(5 * ((len(PANELS) + 1) // 2), 8), squeeze=False)
    used: dict[str, list[str]] = {}
    for index, (name, root) in enumerate(roots.items()):
        run = newest_run(root)
        if run is None:
            continue
        scalars, colour = read_scalars(run), f"C{index}"
        hparams = load_yaml(run / "hparams.yaml")
        per_batch = frames_per_batch(hparams) or 1
        label = f"{name} (expert rollouts)" if hparams.get("strategy") == "sft" else name
        for ax, (title, keys) in zip(axes.flat, PANELS):
            tag = panel_tag(scalars, keys)
            if tag is None or not scalars[tag]:
                continue
            used.setdefault(name, []).append(tag)
            steps, values = map(np.asarray, zip(*scalars[tag]))
            x = (steps + 1) * per_batch
            window = np.minimum(np.arange(1, len(values) + 1), smooth)  # trailing mean, shorter at the start
            ax.plot(x, values, color=colour, alpha=0.25, marker="." if len(values) < 20 else None)
            ax.plot(x, np.convolve(values, np.ones(smooth))[: len(values)] / window, color=colour, label=label)
    for ax, (title, _) in zip(axes.flat, PANELS):
        ax.set_title(title)
        ax.set_xlabel("env frames")
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return used


def method_summary(method: Method, args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status": "failed" if method.failures else "ok",
        "checkpoint": str(method.checkpoint) if method.checkpoint else None,
        "report": {k: str(method.report.with_suffix(s)) for k, s in (("json", ".json"), ("md", ".md"), ("csv", ".csv"))} if method.report else None,
        "failures": method.failures,
    }
    if method.name != PRETRAINED:
        entry.update({"fit_seconds": method.fit_seconds, **run_facts(args.out / method.name)})
    if method.report is not None:
        entry["results"] = ci_results(load_report(method.report))
    return entry


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, required=True, help="the pretrained checkpoint every strategy starts from")
    parser.add_argument("--out", type=Path, default=Path("artifacts/reproduce"))
    parser.add_argument("--strategies", nargs="+", default=[*STRATEGIES, CONTROL], choices=[*STRATEGIES, CONTROL])
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget of every strategy (fractions allowed)")
    parser.add_argument("--task", help="training task (default: experiments/posttrain.yaml's)")
    parser.add_argument("--suite", default="standard", help="NavBench suite: standard, large (4x the episodes), quick or a suite JSON")
    parser.add_argument("--bench-episodes", type=int, help="NavBench episodes per task (default: all, 24 in the standard suite)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="everything after it goes to every fit")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The arguments, checked before anything runs: a missing checkpoint or a bad suite fails in seconds, not after a fit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.pretrained.is_file():
        parser.error(f"pretrained checkpoint not found: {args.pretrained}")
    if round(args.minutes * 60) < 1:
        parser.error(f"--minutes {args.minutes} is under one second")
    if args.bench_episodes is not None and args.bench_episodes < 1:
        parser.error("--bench-episodes must be >= 1")
    try:  # the suite selection every report must have run
        args.fingerprint = load_suite(args.suite).select(None, args.bench_episodes).fingerprint()
    except (OSError, ValueError) as err:
        parser.error(f"--suite {args.suite}: {err}")
    args.pretrained, args.out = args.pretrained.resolve(), args.out.resolve()
    args.strategies = list(dict.fromkeys(args.strategies))
    return args


def run(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Train and evaluate every method (skipping what is done), write the outputs and return summary.json's content."""
    args = parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [Method(PRETRAINED, checkpoint=args.pretrained), *(Method(s) for s in args.strategies)]
    evaluate(methods[0], args)
    for method in methods[1:]:
        train(method, args)
        evaluate(method, args)
    compare_failure = compare(methods, args)
    curves = args.out / "curves.png"
    tags = plot_curves({s: args.out / s for s in args.strategies}, curves)
    summary = {
        "argv": sys.argv[1:] if argv is None else argv,
        "pretrained": str(args.pretrained),
        "minutes": args.minutes,
        "task": args.task,
        "suite": args.suite,
        "bench_episodes_per_task": args.bench_episodes,
        "domains": list(DOMAINS),
        "compare": str(args.out / "compare.md"),
        "results_md": str(args.out / "results.md"),
        "curves": str(curves),
        "curve_tags": tags,
        "failures": [f for m in methods for f in m.failures] + ([compare_failure] if compare_failure else []),
        "methods": {m.name: method_summary(m, args) for m in methods},
    }
    tables = ci_tables({name: m["results"] for name, m in summary["methods"].items() if "results" in m})
    reported = [m for m in methods if m.report is not None]
    if reported and reported[0].name == PRETRAINED:  # every strategy minus the policy it started from, on the same episodes
        tables += "\n" + "\n".join(paired_section([load_report(m.report) for m in reported], [m.name for m in reported]))
    (args.out / "results.md").write_text(tables + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{tables}\ncurves: {curves}\nsummary: {args.out / 'summary.json'} ({time.monotonic() - started:.0f} s)")
    overall = {
        name: {d: {k: v[OVERALL][k]["mean"] for k in ("SR", "RC", "CT")} for d, v in m.get("results", {}).items()} for name, m in summary["methods"].items()
    }
    print(
        json.dumps(
            {"summary": str(args.out / "summary.json"), "curves": str(curves), "overall": overall, "failed": sorted({f["step"] for f in summary["failures"]})}
        )
    )
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    """The command line: :func:`run`; exit status 1 when a step failed (the others still ran), else 0."""
    return 1 if run(argv)["failures"] else 0
