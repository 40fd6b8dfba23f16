"""Simulator throughput: full NavEnv steps/s and rendered frames/s, against a crude raycaster baseline.

Entry point only: the code is s2e/scripts/bench_sim.py, and ``s2e-bench-sim`` is the same command.
"""

import sys

from s2e.scripts.bench_sim import main

if __name__ == "__main__":
    sys.exit(main())
