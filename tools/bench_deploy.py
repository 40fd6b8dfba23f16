"""Robot-side latency of the exported policy: batch 1 on CPU, full window vs streaming, eager vs
TorchScript vs ONNX Runtime.

Entry point only: the code is s2e/scripts/bench_deploy.py, and ``s2e-bench-deploy`` is the same command.
"""

import sys

from s2e.scripts.bench_deploy import main

if __name__ == "__main__":
    sys.exit(main())
