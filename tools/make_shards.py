"""Turn recordings into episode shards: videos + pose files, GNM folders, ROS bags or a LeRobot dataset.

Entry point only: the code is s2e/scripts/make_shards.py, and ``s2e-make-shards`` is the same command.
"""

import sys

from s2e.scripts.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
