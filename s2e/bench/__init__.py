"""NavBench: the closed-loop benchmark (success rate, route completion, collisions, SPL, time to goal).

``suite`` (fixed episodes as JSON), ``agents`` (policies and baselines behind one interface),
``runner`` (batched rollouts in ``NavEnv``), ``metrics`` (definitions and bootstrap CIs),
``report`` (markdown / CSV / JSON and side-by-side comparison), ``plots`` (top-down PNGs, videos)
and ``module`` (the Lightning module and data module behind ``python -m s2e test``).
"""
