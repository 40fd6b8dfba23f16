"""End-to-end PPO throughput on CPU: env frames/s of a real post-training fit and where the time goes.

Entry point only: the code is s2e/scripts/bench_rl.py, and ``s2e-bench-rl`` is the same command.
"""

import sys

from s2e.scripts.bench_rl import main

if __name__ == "__main__":
    sys.exit(main())
