"""Write a small synthetic splat street (an INRIA .ply) with known walls, for demos and checks.

Entry point only: the code is s2e/scripts/make_splat_scene.py, and ``s2e-make-splat-scene`` is the same command.
"""

import sys

from s2e.scripts.make_splat_scene import main

if __name__ == "__main__":
    sys.exit(main())
