"""Preview one simulated expert episode: an egocentric frame, a top-down map and the episode video.

Entry point only: the code is s2e/scripts/sim_preview.py, and ``s2e-sim-preview`` is the same command.
"""

import sys

from s2e.scripts.sim_preview import main

if __name__ == "__main__":
    sys.exit(main())
