"""Summarise episode shards: episodes, hours, frames, valid fraction, skips, speed and turn-rate.

Entry point only: the code is s2e/scripts/dataset_stats.py, and ``s2e-dataset-stats`` is the same command.
"""

import sys

from s2e.scripts.dataset_stats import main

if __name__ == "__main__":
    sys.exit(main())
