"""Feature drift (the paper's Delta_feat) between two checkpoints' frame encoders on shard frames.

Entry point only: the code is s2e/scripts/feature_drift.py, and ``s2e-feature-drift`` is the same command.
"""

import sys

from s2e.scripts.feature_drift import main

if __name__ == "__main__":
    sys.exit(main())
