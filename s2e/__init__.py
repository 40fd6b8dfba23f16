"""s2e: navigation foundation models trained the S2E way.

Stage 1 pretrains a multi-modal waypoint policy on sharded navigation video (AGDM); stage 2
post-trains it with PPO in simulation through a small Residual Attention Module; the benchmark
measures it closed-loop and the exporter ships it to robots as TorchScript.
"""

__version__ = "0.1.0"
