"""Write NavBench episode suites (JSON) deterministically from a seed.

Entry point only: the code is s2e/scripts/make_suite.py, and ``s2e-make-suite`` is the same command.
"""

import sys

from s2e.scripts.make_suite import main

if __name__ == "__main__":
    sys.exit(main())
