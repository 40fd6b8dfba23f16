"""Write NavBench episode suites (JSON) deterministically from a seed.

    python tools/make_suite.py                       # rewrites the built-in quick and standard suites
    python tools/make_suite.py --preset standard --seed 7 --scenes 20 --out data/suites/std20.json

The built-in suites in ``s2e/bench/suites`` are exactly what ``--preset quick`` / ``--preset
standard`` write with their default seeds; rerunning this tool reproduces them byte for byte
(unless the scene generator or the scene-seed streams changed, which then shows up as a git diff).
Scene seeds come from the "benchmark" stream of ``s2e.sim.seeds``, disjoint from the "train"
stream of training envs, so whatever ``--seed`` is given, no episode shares a scene with training.
The last printed line is one JSON object per written suite.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from s2e.bench.suite import SUITES_DIR, make_suite
from s2e.sim.generator import SceneConfig
from s2e.sim.tasks import TASKS

#: name -> (make_suite keyword arguments). quick: short routes and a short time limit, CI-sized.
#: large: the standard suite's settings with four times its scenes (96 episodes per task), for
#: differences the standard suite's 24 episodes per task cannot resolve (a CI half-width of ~0.1).
PRESETS = {
    "quick": dict(seed=101, scenes_per_task=2, episodes_per_scene=1, scene=replace(SceneConfig(), route_length=(8.0, 12.0)), time_limit_slack=5.0),
    "standard": dict(seed=0, scenes_per_task=12, episodes_per_scene=2),
    "large": dict(seed=1, scenes_per_task=48, episodes_per_scene=2),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", help="default: every preset")
    parser.add_argument("--seed", type=int, help="override the preset's seed")
    parser.add_argument("--scenes", type=int, help="scenes per task (override)")
    parser.add_argument("--episodes-per-scene", type=int, choices=[1, 2], help="override (2: the route both ways)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--robot", default="wheeled", choices=["wheeled", "quadruped"])
    parser.add_argument("--domain", default="sim", help="the suite's appearance domain")
    parser.add_argument("--out", type=Path, help="output file (only with a single --preset); default s2e/bench/suites/<preset>.json")
    return parser


def run(argv: list[str] | None = None) -> list[dict]:
    """Write the suites; prints and returns one summary per suite."""
    parser = build_parser()
    args = parser.parse_args(argv)
    presets = args.preset or sorted(PRESETS)
    if args.out is not None and len(presets) != 1:
        parser.error("--out needs exactly one --preset")
    written = []
    for name in presets:
        kwargs = dict(PRESETS[name])
        overrides = {"seed": args.seed, "scenes_per_task": args.scenes, "episodes_per_scene": args.episodes_per_scene}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        suite = make_suite(name, tasks=args.tasks, robot=args.robot, domain=args.domain, **kwargs)
        path = suite.save(args.out or SUITES_DIR / f"{name}.json")
        lengths = [e.route_length for e in suite.episodes]
        info = {
            "suite": name,
            "path": str(path),
            "episodes": len(suite.episodes),
            "tasks": suite.tasks,
            "bytes": path.stat().st_size,
            "route_m": [round(min(lengths), 1), round(max(lengths), 1)],
            "fingerprint": suite.fingerprint()[:12],
        }
        print(f"{name}: {info['episodes']} episodes, routes {info['route_m'][0]}-{info['route_m'][1]} m, {info['bytes']} bytes -> {path}")
        written.append(info)
    print(json.dumps(written))
    return written


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
