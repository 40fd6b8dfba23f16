"""Render expert demonstrations (or intervention data, with --learner) in the simulator into video shards.

Entry point only: the code is s2e/scripts/render_demo_data.py, and ``s2e-render-demo-data`` is the same command.
"""

import sys

from s2e.scripts.render_demo_data import main

if __name__ == "__main__":
    sys.exit(main())
