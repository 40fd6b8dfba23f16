"""Write a small synthetic splat street (an INRIA .ply) with known walls, for demos and checks.

    python tools/make_splat_scene.py --out data/splat/street.ply
    python tools/splat_layout.py --ply data/splat/street.ply --out data/splat/street.layout.json

The street runs along x with facades at y = +-width/2 and a wall closing its +x end (see
``s2e.splat.synthetic``). Generated, never committed; the last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s2e.splat.ply import save_ply
from s2e.splat.synthetic import synthetic_street


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/splat/street.ply"))
    parser.add_argument("--length", type=float, default=30.0, help="metres along x")
    parser.add_argument("--width", type=float, default=6.0, help="metres between the facades")
    parser.add_argument("--wall-height", type=float, default=3.0)
    parser.add_argument("--spacing", type=float, default=0.25, help="metres between neighbouring Gaussians")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Write the street .ply; prints and returns what was written."""
    args = build_parser().parse_args(argv)
    gaussians = synthetic_street(args.length, args.width, args.wall_height, args.spacing, args.seed)
    path = save_ply(args.out, gaussians)
    summary = {"ply": str(path), "gaussians": len(gaussians), "bytes": path.stat().st_size}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose summary is on stdout already (exit status 0)."""
    run(argv)
