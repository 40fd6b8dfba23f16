"""Measure the privileged expert's success rate, route completion and collisions per task.

Entry point only: the code is s2e/scripts/expert_eval.py, and ``s2e-expert-eval`` is the same command.
"""

import sys

from s2e.scripts.expert_eval import main

if __name__ == "__main__":
    sys.exit(main())
