"""tools/bench_sim.py runs the renderer, the crude baseline and full NavEnv steps and ends with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sim_prints_one_json_summary_per_configuration():
    out = subprocess.run(
        [sys.executable, "tools/bench_sim.py", "--envs", "1", "2", "--sizes", "32x24", "--threads", "1",
         "--repeats", "1", "--min-seconds", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip().splitlines()
    summary = json.loads(out[-1])
    assert [(r["envs"], r["width"], r["height"]) for r in summary["results"]] == [(1, 32, 24), (2, 32, 24)]
    for row in summary["results"]:
        for key in ("render_fps", "baseline_fps", "env_steps_per_s", "render_frames_per_cpu_s"):
            assert row[key] > 0, key
        assert abs(row["ratio"] - row["render_fps"] / row["baseline_fps"]) < 1e-6 * row["ratio"]
    assert len(out) == 3  # one line per configuration, then the JSON


def test_bench_sim_rejects_a_malformed_size():
    result = subprocess.run([sys.executable, "tools/bench_sim.py", "--sizes", "128by72"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "128x72" in result.stderr
