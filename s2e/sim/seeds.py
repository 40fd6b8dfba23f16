"""Scene seeds with a purpose: training, validation and benchmark scenes never coincide.

A procedural scene is a pure function of its scene seed (``s2e.sim.generator``), so two consumers
that draw scene seeds the same way see the same streets. Training envs (``ProceduralScenes``,
seeded ``NavEnv``) and NavBench suites (``make_suite``) both used to draw
``rng.integers(0, 2**31 - 1)`` from ``np.random.default_rng(seed)``, so e.g. ``NavEnv(seed=0)``
trained on the scenes of the standard suite (seed 0): the benchmark measured memorisation.

Here every scene seed belongs to exactly one purpose, by construction and checkable from the seed
alone: the seed range ``[0, SEED_LIMIT)`` is cut into one block of ``NUM_DRAWS`` seeds per purpose,
``scene_seed = index(purpose) * NUM_DRAWS + draw``, and ``purpose_of(seed) = PURPOSES[seed //
NUM_DRAWS]``. Streams of different purposes are disjoint whatever generators they are drawn from,
so no choice of training seed can reach a benchmark scene. Scene seeds stay below ``2**31 - 1`` as
before (they fit an int32 and ``default_rng``).

Why blocks and not residues (``draw * NUM_PURPOSES + index``): a bounded draw scales the
generator's output to its range, so ``NUM_PURPOSES * rng.integers(0, NUM_DRAWS) + index`` lands
within 3 of the ``rng.integers(0, 2**31 - 1)`` the same generator gave before these streams
existed, and equals it for up to a third of draws: residue-coded suites kept 6 of the 12 scenes of
the old standard suite, scenes that checkpoints and demo data made before the split trained on.
Block seeds are far from those draws (``tests/test_seeds.py`` checks that pre-split training
seeds never reach a suite).

``PURPOSES`` is append-only: reordering or removing a purpose changes which seeds belong to which
purpose, and with it every committed suite (``tools/make_suite.py`` would show a diff).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Purpose = Literal["train", "validation", "benchmark"]
#: The purposes, in the order of their seed blocks (append-only, see the module docstring).
PURPOSES: tuple[Purpose, ...] = ("train", "validation", "benchmark")
NUM_PURPOSES = len(PURPOSES)
#: Seeds per purpose: the old ``2**31 - 1`` bound shared between the purposes.
NUM_DRAWS = (2**31 - 1) // NUM_PURPOSES
#: Scene seeds lie in ``[0, SEED_LIMIT)``; purpose ``i`` owns ``[i * NUM_DRAWS, (i + 1) * NUM_DRAWS)``.
SEED_LIMIT = NUM_DRAWS * NUM_PURPOSES


def purpose_index(purpose: str) -> int:
    """The block of seeds ``purpose`` owns (its position in ``PURPOSES``); unknown purposes are a ValueError naming the known ones."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown scene-seed purpose {purpose!r}; known purposes: {list(PURPOSES)}")
    return PURPOSES.index(purpose)  # type: ignore[arg-type]


def scene_seed(purpose: str, draw: int) -> int:
    """The ``draw``-th scene seed of ``purpose`` (``0 <= draw < NUM_DRAWS``)."""
    if not 0 <= int(draw) < NUM_DRAWS:
        raise ValueError(f"draw must be in [0, {NUM_DRAWS}), got {draw}")
    return purpose_index(purpose) * NUM_DRAWS + int(draw)


def draw_scene_seeds(purpose: str, rng: np.random.Generator, count: int) -> list[int]:
    """``count`` scene seeds of ``purpose`` drawn uniformly from ``rng`` (one ``integers`` call)."""
    start = purpose_index(purpose) * NUM_DRAWS
    return [start + int(d) for d in rng.integers(0, NUM_DRAWS, size=count)]


def purpose_of(seed: int) -> Purpose:
    """The purpose a scene seed belongs to; seeds outside ``[0, SEED_LIMIT)`` (or not integers) are a ValueError."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"a scene seed is an integer, got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"scene seed {seed} is outside [0, {SEED_LIMIT})")
    return PURPOSES[int(seed) // NUM_DRAWS]
