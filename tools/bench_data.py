"""Throughput of the training data pipeline against the pure-decode ceiling, measured in one run.

Entry point only: the code is s2e/scripts/bench_data.py, and ``s2e-bench-data`` is the same command.
"""

import sys

from s2e.scripts.bench_data import main

if __name__ == "__main__":
    sys.exit(main())
