"""Training throughput of the S2E policy on CPU, and the Lightning overhead over a plain PyTorch loop.

Entry point only: the code is s2e/scripts/bench_train.py, and ``s2e-bench-train`` is the same command.
"""

import sys

from s2e.scripts.bench_train import main

if __name__ == "__main__":
    sys.exit(main())
