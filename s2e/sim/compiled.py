"""``torch.compile`` for the simulator's dense stages, with a process-wide cache and a safe fallback.

The raycaster's per-column and per-pixel stages and the crowd's social-force step are plain tensor
code over many small or broadcast operands: compiled, each becomes a few fused, vectorized loops
instead of hundreds of separate ops. Compiling costs seconds once per process and shape, needs a
toolchain (a C++ compiler on CPU, Triton on CUDA) and may fail on an unusual platform, so every
stage runs through ``run_stage``, which compiles on request, shares compilations, and falls back
to the eager function (same results up to float rounding) for good once anything goes wrong.
"""

from __future__ import annotations

import warnings
from dataclasses import fields, is_dataclass
from typing import Callable

import torch
from torch import Tensor

_COMPILED: dict[tuple[str, bool], Callable] = {}
_compile_error: str | None = None  # set once compilation failed in this process: render eagerly from then on
#: A fixed-shape stage is compiled for this many distinct input shapes (TorchDynamo's own default
#: recompile limit); calls of other shapes run eagerly.
_STATIC_SHAPES = 8
_static_shapes: dict[str, set] = {}


def _shapes(value):
    """What a fixed-shape compilation is specialised on: tensor shapes and dtypes, and the values of
    everything else (numbers, configs), through tuples and dataclasses."""
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    if is_dataclass(value):
        return type(value).__name__, tuple(_shapes(getattr(value, f.name)) for f in fields(value))
    return value


def run_stage(fn: Callable, fixed_shapes: bool, compiled: bool, *args, single_thread: bool = False):
    """``fn(*args)``, through ``torch.compile`` if ``compiled``, falling back to eager on any failure.

    Why a process-wide cache: compiling takes seconds (C++ code generation and a compiler run; the
    result is also cached on disk by inductor), so every renderer and environment of the process
    shares one compilation per stage and shape. ``fixed_shapes`` stages (objects, facades, pixels,
    crowd: their shapes are set by the batch and image size, which a run keeps) are compiled for
    their exact shapes and settings, whose loops index without division by symbolic sizes (the
    pixel stage ran 1.4x faster than compiled shape-generically); past ``_STATIC_SHAPES`` of them a
    stage runs eagerly rather than compile again. Other stages (the DDA rounds, whose ray count
    shrinks) are compiled once for all shapes. ``single_thread`` compiles loops without OpenMP
    parallelism: for stages over tiny tensors (the crowd: [B, P] and [B, P, P]), where every
    parallel loop's thread hand-off costs more than its work (2.7x faster than 2 threads here).
    """
    global _compile_error
    if compiled and _compile_error is None:
        seen = _static_shapes.setdefault(fn.__name__, set())
        key = _shapes(args)
        if not fixed_shapes or key in seen or len(seen) < _STATIC_SHAPES:
            try:
                if (fn.__name__, fixed_shapes) not in _COMPILED:
                    options = {"cpp.threads": 1} if single_thread else None
                    _COMPILED[fn.__name__, fixed_shapes] = torch.compile(fn, dynamic=not fixed_shapes, options=options)
                if fixed_shapes:
                    seen.add(key)
                return _COMPILED[fn.__name__, fixed_shapes](*args)
            except Exception as error:  # noqa: BLE001 - any toolchain failure: fall back, never fail a render
                _compile_error = f"{type(error).__name__}: {error}"
                warnings.warn(f"s2e.sim: torch.compile failed, simulating and rendering eagerly from now on ({_compile_error})",
                              RuntimeWarning)
    return fn(*args)
