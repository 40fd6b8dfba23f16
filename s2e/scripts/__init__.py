"""The command-line tools: one module per tool, so their code is importable and tested like the library.

Each module holds a tool's functions, ``build_parser()`` and ``main(argv=None)``; a tool that prints a
summary also has ``run(argv=None)``, which returns it to callers and tests (``main`` returns only an
exit status, because console scripts call ``sys.exit(main())``). ``tools/<name>.py`` and the console
script ``s2e-<name>`` (``pyproject.toml``) only call ``main``. Nothing here imports torch at package
level: ``run_policy --backend onnx`` must run without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The checkout (the project is installed editable): tools read ``experiments/`` and write their
#: default outputs under ``artifacts/`` here, whatever the working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


def frame_size(text: str) -> tuple[int, int]:
    """argparse type of a WIDTHxHEIGHT frame size."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x72 (width x height), got {text!r}") from None
    return w, h


def strategy_fit_args(strategy: str) -> list[str]:
    """``s2e fit`` arguments that select a post-training ``strategy`` of the shipped experiment. The
    shipped KL penalty to the pretrained policy reads the RAM's frozen half, so every other strategy
    runs without it (``PostTrainModule`` refuses the penalty it cannot compute)."""
    args = ["--model.init_args.strategy", strategy]
    return args if strategy == "ram" else [*args, "--model.init_args.ppo.reference_kl", "0"]
