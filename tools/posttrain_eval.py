"""Learning evidence for RL post-training: pretrained vs ``ram`` vs ``full`` (vs any strategy), end to end.

Entry point only: the code is s2e/scripts/posttrain_eval.py, and ``s2e-posttrain-eval`` is the same command.
"""

import sys

from s2e.scripts.posttrain_eval import main

if __name__ == "__main__":
    sys.exit(main())
