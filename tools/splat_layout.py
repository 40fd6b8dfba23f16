"""Build a splat scene's layout file from its Gaussians (or a mesh) and draw it from above to check.

Entry point only: the code is s2e/scripts/splat_layout.py, and ``s2e-splat-layout`` is the same command.
"""

import sys

from s2e.scripts.splat_layout import main

if __name__ == "__main__":
    sys.exit(main())
