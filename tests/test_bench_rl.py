"""tools/bench_rl.py: its time split accounts for the run's wall time without counting anything twice
(a render inside an episode reset belongs to the reset, not to the env step), on a real tiny fit.
The tool runs as users run it, in its own process: it sets the thread count, seeds and patches the
functions it times, none of which may leak into the other tests."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

from s2e.scripts import bench_rl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_call_inside_the_unless_part_counts_once() -> None:
    watch = bench_rl.Stopwatch()
    inner = watch.wrap("render", lambda: None, unless="reset")
    outer = watch.wrap("reset", lambda: inner())
    outer()
    inner()
    assert watch.calls == {"render": 1, "reset": 1}


def test_the_split_covers_the_wall_time_with_no_negative_part() -> None:
    argv = ["--envs", "4", "--steps", "8", "--batches", "2", "--compile", "off", "--threads", "1", "--model", "ppo.minibatch_size=16"]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_rl.py"), *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # the last line is one JSON object
    assert result["action_repeat"] == 2 and result["frames"] == 4 * 8 * 2 * 2  # envs x steps x batches x repeat
    parts = result["seconds_by_part"]
    assert set(parts) == set(bench_rl.PARTS)
    assert all(seconds >= 0 for seconds in parts.values()), parts
    assert math.isclose(sum(parts.values()), result["seconds"], abs_tol=0.05)
    assert 1 <= result["ppo_updates_per_batch"] <= 2 * math.ceil(4 * 8 / 16)  # epochs x minibatches, fewer if target_kl stops
    assert result["resets_per_batch"] >= 0
