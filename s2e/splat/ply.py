"""Read and write 3DGS captures in the INRIA ``.ply`` layout, with validation that names the problem.

Layout (one ``vertex`` element, float properties): ``x y z`` (optional ``nx ny nz``, ignored),
``f_dc_0..2`` and ``f_rest_*`` (SH degree 0..3: 0, 9, 24 or 45 rest coefficients, channel-major:
all red coefficients, then green, then blue), ``opacity`` (logit), ``scale_0..2`` (log),
``rot_0..3`` (w first, not necessarily normalised). Exporters that store plain colours write
``red green blue`` (uint8 0..255 or float 0..1) or a 3-entry list property ``colors`` instead of
``f_dc_*``; those load as degree-0 colour. Files are parsed by plyfile, never unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from s2e.splat.gaussians import MAX_SH_DEGREE, Gaussians, rgb_to_sh0, sh_coefficients

_REST_COUNTS = {3 * (sh_coefficients(d) - 1): d for d in range(MAX_SH_DEGREE + 1)}


class SplatFileError(ValueError):
    """A splat scene file (``.ply`` or layout) that cannot be used; the message says what is wrong."""


def _column(vertex, name: str, path: Path) -> np.ndarray:
    values = np.asarray(vertex[name])
    if values.dtype == object:
        raise SplatFileError(f"{path}: property {name!r} must be a scalar per vertex, found a list property")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(values[first]) else "infinite"
        raise SplatFileError(f"{path}: property {name!r} has {int(bad.sum())} non-finite values (first: vertex {first} is {kind})")
    return values


def _numbered(names: set[str], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}_(\d+)$")
    return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))


def _require(names: set[str], wanted: list[str], path: Path, what: str) -> None:
    missing = [w for w in wanted if w not in names]
    if missing:
        raise SplatFileError(f"{path}: missing {what} propert{'y' if len(missing) == 1 else 'ies'} {missing} (INRIA 3DGS layout)")


def _plain_colours(vertex, names: set[str], path: Path) -> np.ndarray:
    """RGB in [0, 1] [N, 3] from ``red/green/blue`` or a ``colors`` list property."""
    if "colors" in names:
        raw = np.asarray(vertex["colors"])
        rows = list(raw) if raw.dtype == object else None
        if rows is None or any(len(r) != 3 for r in rows):
            raise SplatFileError(f"{path}: property 'colors' must be a list property holding 3 values per vertex")
        rgb = np.stack(rows).astype(np.float64)
        integer = np.dtype(vertex.ply_property("colors").val_dtype).kind in "iu"
    else:
        _require(names, ["red", "green", "blue"], path, "colour")
        rgb = np.stack([_column(vertex, c, path) for c in ("red", "green", "blue")], -1)
        integer = np.issubdtype(np.asarray(vertex["red"]).dtype, np.integer)
    if not np.isfinite(rgb).all():
        raise SplatFileError(f"{path}: colour values must be finite")
    return rgb / 255.0 if integer else rgb


def load_ply(path: str | Path) -> Gaussians:
    """Gaussians of an INRIA-layout ``.ply``; raises ``SplatFileError`` naming what is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise SplatFileError(f"{path}: no such splat file")
    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # plyfile raises several types for a malformed header or body
        raise SplatFileError(f"{path}: not a readable PLY file ({type(err).__name__}: {err})") from None
    if "vertex" not in [e.name for e in ply.elements]:
        raise SplatFileError(f"{path}: no 'vertex' element; a 3DGS .ply stores one Gaussian per vertex")
    vertex = ply["vertex"]
    names = {p.name for p in vertex.properties}
    if vertex.count == 0:
        raise SplatFileError(f"{path}: the file holds no Gaussians (0 vertices)")
    _require(names, ["x", "y", "z"], path, "position")
    _require(names, ["opacity"], path, "opacity")
    _require(names, [f"scale_{i}" for i in range(3)], path, "scale")
    _require(names, [f"rot_{i}" for i in range(4)], path, "rotation")
    means = np.stack([_column(vertex, c, path) for c in "xyz"], -1)
    opacity = _column(vertex, "opacity", path)
    scales = np.stack([_column(vertex, f"scale_{i}", path) for i in range(3)], -1)
    quats = np.stack([_column(vertex, f"rot_{i}", path) for i in range(4)], -1)
    zero = np.linalg.norm(quats, axis=-1) < 1e-12
    if zero.any():
        raise SplatFileError(f"{path}: {int(zero.sum())} rotations are zero quaternions (first: vertex {int(np.flatnonzero(zero)[0])})")
    if any(n.startswith("f_dc_") for n in names):
        _require(names, [f"f_dc_{i}" for i in range(3)], path, "colour (SH degree 0)")
        dc = np.stack([_column(vertex, f"f_dc_{i}", path) for i in range(3)], -1)
    else:
        dc = rgb_to_sh0(torch.from_numpy(_plain_colours(vertex, names, path))).numpy()
    rest_ids = _numbered(names, "f_rest")
    if rest_ids != list(range(len(rest_ids))):
        raise SplatFileError(f"{path}: f_rest_* properties must be numbered 0..{len(rest_ids) - 1} without gaps, got {rest_ids}")
    if len(rest_ids) not in _REST_COUNTS:
        raise SplatFileError(
            f"{path}: {len(rest_ids)} f_rest_* properties is not a valid SH degree; degrees 0, 1, 2, 3 need {sorted(_REST_COUNTS)} rest coefficients"
        )
    k = sh_coefficients(_REST_COUNTS[len(rest_ids)])
    sh = np.zeros((len(means), k, 3))
    sh[:, 0] = dc
    if k > 1:
        rest = np.stack([_column(vertex, f"f_rest_{i}", path) for i in rest_ids], -1)
        sh[:, 1:] = rest.reshape(len(means), 3, k - 1).transpose(0, 2, 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(means=t(means), quats=t(quats), log_scales=t(scales), opacity_logits=t(opacity), sh=t(sh))


def save_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write Gaussians in the INRIA layout (binary little-endian float32), e.g. a synthetic scene.

    The SH coefficients are written as stored: a set moved by ``transformed`` keeps view-dependent
    colours fitted in its original frame, so only save sets whose ``sh_frame`` is the identity.
    """
    g = gaussians.to("cpu")
    if g.sh_degree > 0 and not torch.allclose(g.sh_frame, torch.eye(3)):
        raise ValueError("cannot save view-dependent Gaussians moved into another frame (sh_frame is not the identity)")
    n, k = len(g), g.sh.shape[1]
    columns = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    columns.update({f"f_dc_{i}": g.sh[:, 0, i] for i in range(3)})
    rest = g.sh[:, 1:].permute(0, 2, 1).reshape(n, -1)
    columns.update({f"f_rest_{i}": rest[:, i] for i in range(3 * (k - 1))})
    columns["opacity"] = g.opacity_logits
    columns.update({f"scale_{i}": g.log_scales[:, i] for i in range(3)})
    columns.update({f"rot_{i}": g.quats[:, i] for i in range(4)})
    data = np.empty(n, dtype=[(name, "<f4") for name in columns])
    for name, values in columns.items():
        data[name] = values.detach().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(path))
    return path
