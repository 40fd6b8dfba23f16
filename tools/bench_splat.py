"""Splat renderer throughput: the CPU reference renderer, and gsplat when CUDA is present.

Entry point only: the code is s2e/scripts/bench_splat.py, and ``s2e-bench-splat`` is the same command.
"""

import sys

from s2e.scripts.bench_splat import main

if __name__ == "__main__":
    sys.exit(main())
