"""s2e: navigation foundation models trained the S2E way.

Stage 1 pretrains a multi-modal waypoint policy on sharded navigation video (AGDM); stage 2
post-trains it with PPO in simulation through a small Residual Attention Module; the benchmark
measures it closed-loop and the exporter ships it to robots as TorchScript.
"""

import os

# Idle OpenMP workers sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose
# otherwise. Why: a simulator step or a training step on CPU is thousands of small tensor ops, and
# with spinning workers each op waits for descheduled siblings; a 64-env NavEnv step measured 7.6x
# slower with the default policy on a 2-core machine (388 vs 51 ms). libgomp reads the variable
# when torch loads it, so this only takes effect when ``s2e`` is imported before ``torch`` (as by
# ``python -m s2e``, the tools and ``make``, which also exports it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
