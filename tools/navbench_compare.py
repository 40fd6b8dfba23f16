"""Put several NavBench reports side by side, like the paper's tables (one row per policy).

Entry point only: the code is s2e/scripts/navbench_compare.py, and ``s2e-navbench-compare`` is the same command.
"""

import sys

from s2e.scripts.navbench_compare import main

if __name__ == "__main__":
    sys.exit(main())
