"""INRIA .ply scenes load with the right values, in every SH degree and colour variant, and bad files say why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from s2e.splat.gaussians import Gaussians
from s2e.splat.ply import SplatFileError, load_ply, save_ply


def _random_splats(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=gen) * 5,
        "scales": torch.randn(n, 3, generator=gen) - 2,
        "quats": torch.randn(n, 4, generator=gen) * 3,
        "opacities": torch.randn(n, generator=gen),
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.randn(n, k - 1, 3, generator=gen),
    }


def _write_inria(path, columns: dict[str, np.ndarray], list_props: dict[str, tuple[np.ndarray, str]] | None = None) -> None:
    """A vertex element with the given float32 columns (and optional list properties), written by plyfile."""
    n = len(next(iter(columns.values())))
    dtype = [(name, "<f4") for name in columns] + [(name, "O") for name in (list_props or {})]
    data = np.empty(n, dtype=dtype)
    for name, values in columns.items():
        data[name] = values
    for name, (values, _) in (list_props or {}).items():
        data[name] = list(values)
    element = PlyElement.describe(data, "vertex", val_types={name: t for name, (_, t) in (list_props or {}).items()})
    PlyData([element]).write(str(path))


def _inria_columns(n: int, rest: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        *[f"f_rest_{i}" for i in range(rest)],
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    return {name: rng.normal(size=n).astype(np.float32) for name in names}


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_written_by_gsplat_exporter_loads_with_the_right_values(tmp_path, degree):
    gsplat = pytest.importorskip("gsplat")
    from gsplat.exporter import export_splats  # pure numpy/torch: runs without CUDA

    s = _random_splats(50, degree)
    path = tmp_path / "scene.ply"
    export_splats(s["means"], s["scales"], s["quats"], s["opacities"], s["sh0"], s["shN"], format="ply", save_to=str(path))
    g = load_ply(path)
    assert gsplat.__version__ and len(g) == 50 and g.sh_degree == degree
    torch.testing.assert_close(g.means, s["means"])
    torch.testing.assert_close(g.log_scales, s["scales"])
    torch.testing.assert_close(g.quats, s["quats"])  # stored as written: w first, not normalised
    torch.testing.assert_close(g.opacity_logits, s["opacities"])
    torch.testing.assert_close(g.sh[:, :1], s["sh0"])
    torch.testing.assert_close(g.sh[:, 1:], s["shN"])


def test_rest_coefficients_are_read_channel_major(tmp_path):
    columns = _inria_columns(4, rest=24)  # degree 2: 8 coefficients per channel
    for i in range(24):
        columns[f"f_rest_{i}"] = np.full(4, float(i), np.float32)
    _write_inria(tmp_path / "d2.ply", columns)
    g = load_ply(tmp_path / "d2.ply")
    assert g.sh_degree == 2
    for channel in range(3):
        for coeff in range(1, 9):
            assert g.sh[0, coeff, channel] == channel * 8 + coeff - 1
    torch.testing.assert_close(g.sh[:, 0, 1], torch.from_numpy(columns["f_dc_1"]))


def test_rgb_and_colors_variants_load_as_degree_zero_colour(tmp_path):
    base = {k: v for k, v in _inria_columns(3).items() if not k.startswith("f_dc")}
    rgb = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 250]], np.uint8)
    data = np.empty(3, dtype=[(k, "<f4") for k in base] + [("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, v in base.items():
        data[k] = v
    data["red"], data["green"], data["blue"] = rgb.T
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "rgb.ply"))
    _write_inria(tmp_path / "colors.ply", base, {"colors": (rgb, "uint8")})
    for name in ("rgb.ply", "colors.ply"):
        g = load_ply(tmp_path / name)
        assert g.sh_degree == 0
        torch.testing.assert_close(g.colors(torch.zeros(1, 3))[0], torch.from_numpy(rgb / 255.0).float(), atol=1e-5, rtol=0)


def test_save_then_load_round_trips(tmp_path):
    s = _random_splats(20, 2, seed=3)
    g = Gaussians(s["means"], s["quats"], s["scales"], s["opacities"], torch.cat([s["sh0"], s["shN"]], 1))
    back = load_ply(save_ply(tmp_path / "g.ply", g))
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name))


def _broken(tmp_path, kind: str):
    path = tmp_path / f"{kind}.ply"
    columns = _inria_columns(5, rest=9)
    if kind == "missing_rot":
        del columns["rot_3"]
    elif kind == "bad_rest_count":
        del columns["f_rest_8"]
    elif kind == "nan_position":
        columns["x"][2] = np.nan
    elif kind == "inf_scale":
        columns["scale_1"][4] = np.inf
    elif kind == "zero_quat":
        for i in range(4):
            columns[f"rot_{i}"][1] = 0.0
    elif kind == "no_colour":
        for i in range(3):
            del columns[f"f_dc_{i}"]
    elif kind == "not_a_ply":
        path.write_bytes(b"\x00garbage that is no ply header\n")
        return path
    elif kind == "no_vertices":
        columns = {k: v[:0] for k, v in columns.items()}
    _write_inria(path, columns)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing_rot", r"missing rotation property \['rot_3'\]"),
        ("bad_rest_count", r"8 f_rest_\* properties is not a valid SH degree"),
        ("nan_position", r"property 'x' has 1 non-finite values \(first: vertex 2 is NaN\)"),
        ("inf_scale", r"property 'scale_1' has 1 non-finite values \(first: vertex 4 is infinite\)"),
        ("zero_quat", r"1 rotations are zero quaternions \(first: vertex 1\)"),
        ("no_colour", r"missing colour properties \['red', 'green', 'blue'\]"),
        ("not_a_ply", r"not a readable PLY file"),
        ("no_vertices", r"holds no Gaussians"),
    ],
)
def test_malformed_ply_files_say_what_is_wrong(tmp_path, kind, message):
    with pytest.raises(SplatFileError, match=message):
        load_ply(_broken(tmp_path, kind))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SplatFileError, match="no such splat file"):
        load_ply(tmp_path / "nope.ply")
