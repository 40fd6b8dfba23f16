"""Where a full ``NavEnv`` step goes: crowd, physics, rewards, render, frame stacking, the rest.

Entry point only: the code is s2e/scripts/profile_env_step.py, and ``s2e-profile-env-step`` is the same command.
"""

import sys

from s2e.scripts.profile_env_step import main

if __name__ == "__main__":
    sys.exit(main())
