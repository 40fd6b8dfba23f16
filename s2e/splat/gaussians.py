"""A set of 3D Gaussians as tensors, in the parametrisation 3DGS trains and stores.

Values stay in the stored form (log-scales, opacity logits, w-first quaternions that need not be
normalised, spherical-harmonic colour coefficients) so a loaded capture round-trips unchanged;
properties give the activated values renderers need. Colour is evaluated here, once per camera,
so the reference renderer and gsplat receive identical per-Gaussian colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def sh_coefficients(degree: int) -> int:
    """Coefficients per colour channel of a spherical-harmonics expansion of ``degree``."""
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient that evaluates to colour ``rgb`` (in [0, 1]) from every direction."""
    return (rgb - 0.5) / SH_C0


def quat_to_matrix(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of w-first quaternions [..., 4] (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*quats.shape[:-1], 3, 3)


def matrix_to_quat(matrix: Tensor) -> Tensor:
    """A w-first unit quaternion [4] of one rotation matrix [3, 3] (Shepperd's method)."""
    m = matrix.double()
    trace = m.trace()
    if trace > 0:
        s = torch.sqrt(trace + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = torch.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        q = [torch.zeros(()), torch.zeros(()), torch.zeros(()), torch.zeros(())]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in q]).to(matrix.dtype)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of w-first quaternions (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def _eval_sh(sh: Tensor, dirs: Tensor | None) -> Tensor:
    """Colour [..., N, 3] of SH coefficients [N, K, 3] seen along unit directions [..., N, 3] (INRIA basis);
    degree 0 needs no directions."""
    out = SH_C0 * sh[:, 0]
    k = sh.shape[1]
    if k > 1:
        x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
        out = out - _SH_C1 * y * sh[:, 1] + _SH_C1 * z * sh[:, 2] - _SH_C1 * x * sh[:, 3]
        if k > 4:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (
                out
                + _SH_C2[0] * xy * sh[:, 4]
                + _SH_C2[1] * yz * sh[:, 5]
                + _SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6]
                + _SH_C2[3] * xz * sh[:, 7]
                + _SH_C2[4] * (xx - yy) * sh[:, 8]
            )
            if k > 9:
                out = (
                    out
                    + _SH_C3[0] * y * (3 * xx - yy) * sh[:, 9]
                    + _SH_C3[1] * xy * z * sh[:, 10]
                    + _SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                    + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                    + _SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                    + _SH_C3[5] * z * (xx - yy) * sh[:, 14]
                    + _SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15]
                )
    return (out + 0.5).clamp_min(0.0)


@dataclass
class Gaussians:
    """N Gaussians in stored form.

    Attributes:
        means: float [N, 3] centres.
        quats: float [N, 4] rotations, w first, not necessarily normalised.
        log_scales: float [N, 3] natural-log standard deviations along the rotated axes.
        opacity_logits: float [N] opacities before the sigmoid.
        sh: float [N, K, 3] colour coefficients, K = (degree + 1)^2, coefficient-major.
        sh_frame: float [3, 3] rotation from the world frame to the frame the SH coefficients were fitted
            in: moving a capture rotates its view directions, not its coefficients.
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor
    sh_frame: Tensor = field(default_factory=lambda: torch.eye(3))

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in expected.items():
            if n < 0 or tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} must have shape {shape if n >= 0 else '[N, 3]'}, got {tuple(getattr(self, name).shape)}")
        if (
            self.sh.dim() != 3
            or self.sh.shape[0] != n
            or self.sh.shape[2] != 3
            or self.sh.shape[1] not in [sh_coefficients(d) for d in range(MAX_SH_DEGREE + 1)]
        ):
            raise ValueError(f"Gaussians.sh must have shape [{n}, K, 3] with K in 1, 4, 9, 16, got {tuple(self.sh.shape)}")
        if tuple(self.sh_frame.shape) != (3, 3):
            raise ValueError(f"Gaussians.sh_frame must be a 3x3 rotation, got shape {tuple(self.sh_frame.shape)}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[1]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    def covariances(self) -> Tensor:
        """World-space covariances [N, 3, 3] = R diag(s^2) R^T."""
        rot = quat_to_matrix(self.quats)
        return (rot * self.scales[:, None, :] ** 2) @ rot.transpose(-1, -2)

    def colors(self, camera_positions: Tensor) -> Tensor:
        """RGB [C, N, 3] seen from each of C camera positions [C, 3] (view-dependent for SH degree > 0)."""
        if self.sh.shape[1] == 1:
            return _eval_sh(self.sh, None).expand(camera_positions.shape[0], -1, -1)
        dirs = torch.nn.functional.normalize(self.means[None] - camera_positions[:, None], dim=-1)
        return _eval_sh(self.sh, dirs @ self.sh_frame.to(dirs).T)

    def to(self, device: torch.device | str) -> "Gaussians":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def transformed(self, world_from_splat: Tensor) -> "Gaussians":
        """The Gaussians moved by a 4x4 similarity (rotation, uniform scale, translation)."""
        m = torch.as_tensor(world_from_splat, dtype=self.means.dtype, device=self.device)
        linear, shift = m[:3, :3], m[:3, 3]
        scale = float(torch.linalg.det(linear).abs() ** (1 / 3))
        rot = linear / max(scale, 1e-12)
        if scale < 1e-9 or not torch.allclose(rot @ rot.T, torch.eye(3, dtype=rot.dtype, device=rot.device), atol=1e-4):
            raise ValueError("world_from_splat must be a similarity: a rotation times one uniform scale, plus a translation")
        if torch.linalg.det(rot) < 0:
            raise ValueError("world_from_splat must not mirror the scene (its determinant is negative)")
        return replace(
            self,
            means=self.means @ linear.T + shift,
            quats=quat_multiply(matrix_to_quat(rot)[None], self.quats),
            log_scales=self.log_scales + math.log(scale),
            sh_frame=self.sh_frame.to(rot) @ rot.T,
        )

    @staticmethod
    def cat(parts: Sequence["Gaussians"]) -> "Gaussians":
        """One set holding all parts; lower SH degrees are zero-padded to the highest one."""
        if not parts:
            raise ValueError("Gaussians.cat needs at least one part")
        k = max(p.sh.shape[1] for p in parts)
        frames = [p.sh_frame for p in parts if p.sh.shape[1] > 1]
        if any(not torch.allclose(f, frames[0]) for f in frames[1:]):
            raise ValueError("cannot join view-dependent Gaussians whose SH coefficients live in different frames")
        sh = [torch.nn.functional.pad(p.sh, (0, 0, 0, k - p.sh.shape[1])) for p in parts]
        return Gaussians(
            means=torch.cat([p.means for p in parts]),
            quats=torch.cat([p.quats for p in parts]),
            log_scales=torch.cat([p.log_scales for p in parts]),
            opacity_logits=torch.cat([p.opacity_logits for p in parts]),
            sh=torch.cat(sh),
            sh_frame=frames[0] if frames else parts[0].sh_frame,
        )

    def subset(self, index: Tensor) -> "Gaussians":
        """The Gaussians at ``index`` (a bool mask or indices)."""
        return replace(
            self,
            means=self.means[index],
            quats=self.quats[index],
            log_scales=self.log_scales[index],
            opacity_logits=self.opacity_logits[index],
            sh=self.sh[index],
        )
