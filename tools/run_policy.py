"""Replay a video through an exported policy as the robot would run it, and draw the plan.

Entry point only: the code is s2e/scripts/run_policy.py, and ``s2e-run-policy`` is the same command.
"""

import sys

from s2e.scripts.run_policy import main

if __name__ == "__main__":
    sys.exit(main())
