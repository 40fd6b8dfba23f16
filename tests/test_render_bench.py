"""The simulator benchmarks: tools/bench_sim.py (renderer, crude baseline, full NavEnv steps) and
tools/profile_env_step.py (where a step goes), each ending with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sim_prints_one_json_summary_per_configuration():
    out = (
        subprocess.run(
            [sys.executable, "tools/bench_sim.py", "--envs", "1", "2", "--sizes", "32x24", "--threads", "1", "--repeats", "1", "--min-seconds", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    summary = json.loads(out[-1])
    assert [(r["envs"], r["width"], r["height"]) for r in summary["results"]] == [(1, 32, 24), (2, 32, 24)]
    for row in summary["results"]:
        for key in ("render_fps", "baseline_fps", "env_steps_per_s", "render_frames_per_cpu_s"):
            assert row[key] > 0, key
        assert abs(row["ratio"] - row["render_fps"] / row["baseline_fps"]) < 1e-6 * row["ratio"]
        assert row["compile_state"] == "eager"  # auto: batches this small never pay for compiling
    assert summary["compile"] == "auto" and summary["compile_state"]["state"] == "eager"
    assert summary["compile_state"]["stages"]["render._object_spans"]["compiled_calls"] == 0
    assert len(out) == 3 and all(line.endswith("| ran eager") for line in out[:2])  # one line per configuration, then the JSON


def test_bench_sim_rejects_a_malformed_size():
    result = subprocess.run([sys.executable, "tools/bench_sim.py", "--sizes", "128by72"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "128x72" in result.stderr


def test_profile_env_step_splits_a_step_into_parts_that_add_up():
    result = subprocess.run(
        [sys.executable, "tools/profile_env_step.py", "--envs", "2", "--size", "32x24", "--steps", "4", "--warmup", "1", "--threads", "1", "--compile", "off"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    parts = summary["parts_mean_ms"]
    assert {"crowd", "physics", "render", "stacking", "torchrl"} <= set(parts)
    assert parts["render"] > 0 and parts["crowd"] > 0  # the `both` task renders and moves a crowd
    assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 1e-6 * max(1.0, parts["total"])
    assert summary["env_steps_per_s"] > 0
    assert summary["compile"] == "off" and summary["compile_state"]["state"] == "eager"
