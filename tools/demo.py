"""`make demo`: the S2E pipeline end to end on the embedded simulator, on CPU.

Entry point only: the code is s2e/scripts/demo.py, and ``s2e-demo`` is the same command.
"""

import sys

from s2e.scripts.demo import main

if __name__ == "__main__":
    sys.exit(main())
