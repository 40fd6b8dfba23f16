"""The paper's fine-tuning ablation (S2E, arXiv 2507.22028, Stage 2; see the README) as one reproducible command.

Entry point only: the code is s2e/scripts/reproduce_s2e.py, and ``s2e-reproduce-s2e`` is the same command.
"""

import sys

from s2e.scripts.reproduce_s2e import main

if __name__ == "__main__":
    sys.exit(main())
