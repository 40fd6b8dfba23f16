"""Pure-PyTorch EWA splatting: the CPU reference for gsplat, used by tests, previews and CPU runs.

It follows the math and thresholds of gsplat's rasterizer (the 3DGS paper): means are projected
with a pinhole; each 3D covariance becomes a 2D one through the projection's Jacobian
(J W Sigma W^T J^T, with the view-frustum clamp and a 0.3 px^2 low-pass added); Gaussians are sorted
by camera depth and alpha-composited front to back, alpha = min(0.99, opacity * exp(-q/2)), ignoring
alpha < 1/255 and stopping once transmittance would fall below 1e-4. Depth is the expected camera
z (alpha-weighted, normalised by accumulated alpha). Work is split into screen tiles, each
composited only with the Gaussians whose 3.33-sigma footprint touches it, in chunks along depth.
Correct rather than fast: it loops over cameras and tiles in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from s2e.splat.camera import camera_positions
from s2e.splat.gaussians import Gaussians

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
EPS_2D = 0.3
_EXTENT_SIGMAS = 3.33


@dataclass
class Projected:
    """Gaussians of one camera in screen space, sorted near to far (visible ones only)."""

    mean2d: Tensor  # [M, 2] pixel coordinates (pixel centres at +0.5)
    conic: Tensor  # [M, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depth: Tensor  # [M] camera z
    radius: Tensor  # [M, 2] pixel half extents of the footprint
    opacity: Tensor  # [M]
    color: Tensor  # [M, 3]


def project(g: Gaussians, viewmat: Tensor, intrinsics: Tensor, color: Tensor, width: int, height: int, near: float = 0.05) -> Projected:
    """EWA projection of Gaussians into one camera; drops those nearer than ``near`` (or behind it) or off screen."""
    rot, t = viewmat[:3, :3], viewmat[:3, 3]
    p = g.means @ rot.T + t
    z = p[:, 2]
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    keep = z > near
    p, z, color = p[keep], z[keep], color[keep]
    cov = rot @ g.covariances()[keep] @ rot.T
    lim_x, lim_y = 1.3 * (0.5 * width / fx), 1.3 * (0.5 * height / fy)
    tx = z * (p[:, 0] / z).clamp(-lim_x, lim_x)
    ty = z * (p[:, 1] / z).clamp(-lim_y, lim_y)
    jac = torch.zeros(len(z), 2, 3, dtype=p.dtype, device=p.device)
    jac[:, 0, 0], jac[:, 0, 2] = fx / z, -fx * tx / z**2
    jac[:, 1, 1], jac[:, 1, 2] = fy / z, -fy * ty / z**2
    cov2d = jac @ cov @ jac.transpose(1, 2)
    a, b, c = cov2d[:, 0, 0] + EPS_2D, cov2d[:, 0, 1], cov2d[:, 1, 1] + EPS_2D
    det = a * c - b * b
    mean2d = torch.stack([fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy], -1)
    radius = _EXTENT_SIGMAS * torch.stack([a, c], -1).sqrt()
    on_screen = ((mean2d + radius > 0) & (mean2d - radius < torch.tensor([width, height], device=p.device))).all(-1) & (det > 0)
    order = torch.argsort(z[on_screen], stable=True)
    sel = on_screen.nonzero()[:, 0][order]
    det = det[sel]
    conic = torch.stack([c[sel] / det, -b[sel] / det, a[sel] / det], -1)
    return Projected(mean2d[sel], conic, z[sel], radius[sel], g.opacities[keep][sel], color[sel])


def _log_alpha_coefficients(proj: Projected, idx: Tensor, origin: Tensor) -> Tensor:
    """[G, 6] coefficients c with log(opacity) - q/2 = c . (x^2, y^2, xy, x, y, 1) at tile-local pixel (x, y).

    Expanding the quadratic form turns the per-pixel falloff of G Gaussians at P pixels into one
    [G, 6] @ [6, P] product; tile-local coordinates keep the expansion's terms small in float32.
    """
    m = proj.mean2d[idx] - origin
    a, b, c = proj.conic[idx].unbind(-1)
    mx, my = m.unbind(-1)
    const = torch.log(proj.opacity[idx]) - 0.5 * (a * mx * mx + c * my * my + 2 * b * mx * my)
    return torch.stack([-0.5 * a, -0.5 * c, -b, a * mx + b * my, c * my + b * mx, const], -1)


def _composite_tile(proj: Projected, idx: Tensor, coef: Tensor, monomials: Tensor, background: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of the Gaussians ``idx`` (near to far) at the P pixels of ``monomials`` [6, P].

    A pixel stops at the first Gaussian that would take its transmittance below ``T_MIN`` (that
    one is not drawn); what transmittance it had left shows the background.
    """
    n_px, dtype, dev = monomials.shape[1], monomials.dtype, monomials.device
    trans = torch.ones(n_px, dtype=dtype, device=dev)
    done = torch.zeros(n_px, dtype=torch.bool, device=dev)
    rgb = torch.zeros(n_px, 3, dtype=dtype, device=dev)
    depth = torch.zeros(n_px, dtype=dtype, device=dev)
    start, size = 0, min(chunk, 128)  # most pixels saturate within a few near Gaussians: grow the chunk
    while start < len(idx):
        sel, rows = idx[start : start + size], slice(start, start + size)
        start, size = start + size, min(2 * size, chunk)
        alpha = torch.exp(coef[rows] @ monomials).clamp_max_(ALPHA_MAX)
        alpha.masked_fill_((alpha < ALPHA_MIN) | done[None], 0.0)
        inclusive = torch.cumprod(1 - alpha, 0).mul_(trans[None])
        valid = inclusive > T_MIN  # a prefix along depth: transmittance only falls
        weight = alpha.mul_(torch.cat([trans[None], inclusive[:-1]], 0)).mul_(valid)
        rgb += weight.T @ proj.color[sel]
        depth += weight.T @ proj.depth[sel]
        last = valid.sum(0) - 1
        trans = torch.where(last >= 0, inclusive.gather(0, last.clamp_min(0)[None])[0], trans)
        done |= ~valid[-1]
        if bool(done.all()):
            break
    return rgb + trans[:, None] * background, depth, 1 - trans


def rasterize(
    gaussians: Gaussians | Sequence[Gaussians],
    viewmats: Tensor,
    intrinsics: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near: float = 0.05,
    tile: int = 16,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render C cameras: RGB [C, H, W, 3] in [0, 1], expected depth [C, H, W] (0 where empty), alpha [C, H, W].

    ``gaussians`` is one set seen by every camera or a sequence of C sets (one per camera, e.g. a
    scene plus that environment's own obstacles). ``background`` [3] or [C, 3] shows where
    transmittance remains (black by default).
    """
    cams = viewmats.shape[0]
    if viewmats.shape != (cams, 4, 4) or intrinsics.shape != (cams, 3, 3):
        raise ValueError(f"viewmats must be [C, 4, 4] and intrinsics [C, 3, 3], got {tuple(viewmats.shape)} and {tuple(intrinsics.shape)}")
    sets = [gaussians] * cams if isinstance(gaussians, Gaussians) else list(gaussians)
    if len(sets) != cams:
        raise ValueError(f"got {len(sets)} Gaussian sets for {cams} cameras")
    dev, dtype = viewmats.device, viewmats.dtype
    bg = torch.zeros(3, dtype=dtype, device=dev) if background is None else torch.as_tensor(background, dtype=dtype, device=dev)
    bg = bg.expand(cams, 3)
    out_rgb = torch.empty(cams, height, width, 3, dtype=dtype, device=dev)
    out_depth = torch.empty(cams, height, width, dtype=dtype, device=dev)
    out_alpha = torch.empty(cams, height, width, dtype=dtype, device=dev)
    colors = None
    for cam in range(cams):
        g = sets[cam]
        if colors is None or sets[cam] is not sets[cam - 1] or g.sh_degree > 0:
            colors = g.colors(camera_positions(viewmats[cam : cam + 1]))[0]
        proj = project(g, viewmats[cam], intrinsics[cam], colors, width, height, near)
        lo, hi = proj.mean2d - proj.radius, proj.mean2d + proj.radius
        for y0 in range(0, height, tile):
            y1 = min(y0 + tile, height)
            in_rows = (hi[:, 1] >= y0) & (lo[:, 1] <= y1)
            for x0 in range(0, width, tile):
                x1 = min(x0 + tile, width)
                idx = (in_rows & (hi[:, 0] >= x0) & (lo[:, 0] <= x1)).nonzero()[:, 0]
                ys, xs = torch.meshgrid(
                    torch.arange(y1 - y0, device=dev, dtype=dtype) + 0.5, torch.arange(x1 - x0, device=dev, dtype=dtype) + 0.5, indexing="ij"
                )
                xs, ys = xs.reshape(-1), ys.reshape(-1)
                monomials = torch.stack([xs * xs, ys * ys, xs * ys, xs, ys, torch.ones_like(xs)])
                coef = _log_alpha_coefficients(proj, idx, torch.tensor([x0, y0], dtype=dtype, device=dev))
                rgb, depth, alpha = _composite_tile(proj, idx, coef, monomials, bg[cam], chunk)
                shape = (y1 - y0, x1 - x0)
                out_rgb[cam, y0:y1, x0:x1] = rgb.reshape(*shape, 3)
                out_depth[cam, y0:y1, x0:x1] = (depth / alpha.clamp_min(1e-10)).reshape(shape)
                out_alpha[cam, y0:y1, x0:x1] = alpha.reshape(shape)
    return out_rgb, out_depth, out_alpha
