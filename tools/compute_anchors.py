"""Fit AGDM anchors (K-Means over normalized future trajectories) on episode shards.

Entry point only: the code is s2e/scripts/compute_anchors.py, and ``s2e-compute-anchors`` is the same command.
"""

import sys

from s2e.scripts.compute_anchors import main

if __name__ == "__main__":
    sys.exit(main())
