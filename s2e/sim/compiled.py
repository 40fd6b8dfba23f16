"""``torch.compile`` for the simulator's dense stages: a :class:`CompilePolicy` decides, runs and reports.

The raycaster's per-column and per-pixel stages and the crowd's social-force step are plain tensor
code over many small or broadcast operands: compiled, each becomes a few fused, vectorized loops
instead of hundreds of separate ops. Compiling costs seconds once per process and shape, needs a
toolchain (a C++ compiler on CPU, Triton on CUDA) and may fail on an unusual platform, so every
stage runs through :meth:`CompilePolicy.run`, which compiles on request, shares compilations, and
falls back to the eager function (same results up to float rounding) for good once that stage's
compilation failed. A failure is that stage's alone: the other stages keep compiling.

The policy object owns all of it: the compiled functions and their shapes, each stage's calls
(compiled or eager) and failure, and the ``compiled=None`` rule of ``Raycaster`` (when compiling
pays, from the eager seconds spent so far). Renderers and environments share :data:`PROCESS_POLICY`
unless given their own, because a compilation is worth sharing by every renderer of the process;
benchmarks print :meth:`CompilePolicy.report`, what really ran, not what was asked for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

#: ``compiled=None`` compiles only calls of at least this many pixels (smaller ones gain little) and
#: only once this process has spent ``COMPILE_AFTER_EAGER_S`` rendering such calls eagerly: compiling
#: costs tens of seconds once per process (docs/experiments.md), so it is bought like skis by a
#: renter (pay rent until it adds up to the price, then buy), which never costs more than twice the
#: better choice made in hindsight. Tests, demos and one-minute benchmarks stay eager; training and
#: long evaluations compile after ~30 s.
COMPILE_MIN_PIXELS = 100_000
COMPILE_AFTER_EAGER_S = 30.0
#: A fixed-shape stage is compiled for this many distinct input shapes (TorchDynamo's own default
#: recompile limit); calls of other shapes run eagerly.
STATIC_SHAPES = 8


def _shapes(value: Any) -> Any:
    """What a fixed-shape compilation is specialised on: tensor shapes and dtypes, and the values of
    everything else (numbers, configs), through tuples and dataclasses."""
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    if is_dataclass(value):
        return type(value).__name__, tuple(_shapes(getattr(value, f.name)) for f in fields(value))
    return value


def stage_name(fn: Callable) -> str:
    """``module.function`` (the last part of the module path), as reports name a stage."""
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


@dataclass
class StageState:
    """One stage (function) under a policy: its compilation, the shapes it was compiled for, its calls."""

    compiled_fn: Optional[Callable] = None
    shapes: set = field(default_factory=set)
    compiled_calls: int = 0
    eager_calls: int = 0
    error: Optional[str] = None  # why it runs eagerly for good: its compilation failed


class CompilePolicy:
    """When the simulator's stages run through ``torch.compile``, and what actually ran.

    Args:
        min_pixels, after_eager_s: the ``Raycaster(compiled=None)`` rule (:meth:`wants`).
        static_shapes: shapes a fixed-shape stage is compiled for before further shapes run eagerly.
        backend: ``torch.compile``'s backend (``"inductor"`` generates the fused loops).
    """

    def __init__(
        self,
        min_pixels: int = COMPILE_MIN_PIXELS,
        after_eager_s: float = COMPILE_AFTER_EAGER_S,
        static_shapes: int = STATIC_SHAPES,
        backend: str | Callable = "inductor",
    ) -> None:
        self.min_pixels = int(min_pixels)
        self.after_eager_s = float(after_eager_s)
        self.static_shapes = int(static_shapes)
        self.backend = backend
        self.eager_large_s = 0.0  # eager seconds of compiled=None calls of at least min_pixels pixels
        self.stages: dict[Callable, StageState] = {}

    # ------------------------------------------------------------------ the compiled=None rule
    def wants(self, pixels: int) -> bool:
        """Whether a ``compiled=None`` call of ``pixels`` pixels compiles: a large one, once large
        calls have cost ``after_eager_s`` eager seconds (the module docstring's ski rental)."""
        return pixels >= self.min_pixels and self.eager_large_s >= self.after_eager_s

    def add_eager_seconds(self, pixels: int, seconds: float) -> None:
        """Count an eager ``compiled=None`` call towards the price of compiling (large calls only)."""
        if pixels >= self.min_pixels:
            self.eager_large_s += seconds

    # ------------------------------------------------------------------ running stages
    def run(self, fn: Callable, fixed_shapes: bool, compiled: bool, *args: Any, single_thread: bool = False) -> Any:
        """``fn(*args)``, through ``torch.compile`` if ``compiled``, eagerly if that stage's compilation failed.

        ``fixed_shapes`` stages (objects, facades, pixels, crowd: their shapes are set by the batch
        and image size, which a run keeps) are compiled for their exact shapes and settings, whose
        loops index without division by symbolic sizes (faster than shape-generic code,
        docs/experiments.md); past ``static_shapes`` of them a stage runs eagerly rather than
        compile again. Other stages (the DDA rounds, whose ray count shrinks) are compiled once for
        all shapes. ``single_thread`` compiles loops without OpenMP parallelism: for stages over tiny
        tensors (the crowd: [B, P] and [B, P, P]), where every parallel loop's thread hand-off costs
        more than its work.
        """
        state = self.stages.setdefault(fn, StageState())
        key = _shapes(args) if compiled and fixed_shapes else None
        fits = not fixed_shapes or key in state.shapes or len(state.shapes) < self.static_shapes
        if compiled and state.error is None and fits:
            try:
                if state.compiled_fn is None:
                    inductor = self.backend == "inductor"
                    options = {"cpp.threads": 1} if single_thread and inductor else None
                    state.compiled_fn = torch.compile(fn, dynamic=not fixed_shapes, backend=self.backend, options=options)
                out = state.compiled_fn(*args)
            except Exception as error:  # noqa: BLE001 - any toolchain failure: fall back, never fail a render
                state.error = " ".join(f"{type(error).__name__}: {error}".split())  # one line, for reports
                warnings.warn(f"s2e.sim: torch.compile of {stage_name(fn)} failed, running it eagerly from now on ({state.error})", RuntimeWarning)
            else:
                if fixed_shapes:
                    state.shapes.add(key)
                state.compiled_calls += 1
                return out
        state.eager_calls += 1
        return fn(*args)

    # ------------------------------------------------------------------ reporting
    def report(self, since: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """What ran: ``{"state": ..., "stages": {name: {"compiled_calls", "eager_calls", "error"}}}``.

        ``state`` is ``"compiled"`` (every call of every stage), ``"eager"`` (none), ``"partly
        compiled"`` or ``"unused"`` (no calls); a stage whose compilation failed keeps its ``error``.
        ``since``: an earlier report, to count only the calls made after it.
        """
        before = since["stages"] if since else {}
        stages = {}
        for fn, state in self.stages.items():
            name = stage_name(fn)
            old = before.get(name, {"compiled_calls": 0, "eager_calls": 0})
            calls = {"compiled_calls": state.compiled_calls - old["compiled_calls"], "eager_calls": state.eager_calls - old["eager_calls"]}
            if calls["compiled_calls"] or calls["eager_calls"] or state.error:
                stages[name] = {**calls, "error": state.error}
        compiled = sum(s["compiled_calls"] for s in stages.values())
        eager = sum(s["eager_calls"] for s in stages.values())
        state = "unused" if not compiled + eager else "compiled" if not eager else "eager" if not compiled else "partly compiled"
        return {"state": state, "stages": stages}

    @staticmethod
    def describe(report: dict[str, Any]) -> str:
        """One line of a :meth:`report`: the state, then every failed stage and its reason."""
        failed = [f"{name} failed to compile ({s['error']})" for name, s in report["stages"].items() if s["error"]]
        return "; ".join([report["state"], *failed])


#: The policy renderers and environments share unless given their own (see the module docstring).
PROCESS_POLICY = CompilePolicy()
