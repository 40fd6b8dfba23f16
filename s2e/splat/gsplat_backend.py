"""The CUDA splat renderer: gsplat's rasterizer behind the reference renderer's signature.

gsplat is an optional extra (``pip install -e ".[gsplat]"``; its CUDA kernels compile on first
use) and is imported only when this backend renders, so CPU installs never need it. Colours are
evaluated by ``Gaussians.colors`` exactly as for the reference renderer and passed pre-evaluated,
so the two backends differ only in rasterization. Per-camera sets (a scene plus each env's own
obstacles) are padded to one size with transparent Gaussians and rendered in one call through
gsplat's batch dimension.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from s2e.splat.camera import camera_positions
from s2e.splat.gaussians import Gaussians

_INSTALL = (
    'gsplat is not installed: pip install "gsplat>=1.4" (or pip install -e ".[gsplat]"); it needs a CUDA '
    'toolkit to compile its kernels on first use. On CPU use backend="reference".'
)


def import_gsplat():
    """The gsplat module, or an ImportError that says how to install it."""
    try:
        import gsplat
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return gsplat


def rasterize_gsplat(
    gaussians: Gaussians | Sequence[Gaussians],
    viewmats: Tensor,
    intrinsics: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``s2e.splat.reference.rasterize``: RGB [C, H, W, 3], expected depth [C, H, W], alpha [C, H, W]."""
    gsplat = import_gsplat()
    if viewmats.device.type != "cuda":
        raise RuntimeError(f"the gsplat backend renders on CUDA; cameras are on {viewmats.device}. Use backend='reference' on CPU.")
    cams, dev = viewmats.shape[0], viewmats.device
    positions = camera_positions(viewmats)
    bg = torch.zeros(3, device=dev) if background is None else torch.as_tensor(background, dtype=torch.float32, device=dev)
    if isinstance(gaussians, Gaussians):  # one set seen by every camera: no copies, colours per camera
        g = gaussians.to(dev)
        image, alpha, _ = gsplat.rasterization(
            g.means,
            torch.nn.functional.normalize(g.quats, dim=-1),
            g.scales,
            g.opacities,
            g.colors(positions),
            viewmats.float(),
            intrinsics.float(),
            width,
            height,
            near_plane=near,
            render_mode="RGB+ED",
            backgrounds=bg.expand(cams, 3),
            packed=False,
        )
        return image[..., :3], image[..., 3], alpha[..., 0]
    sets = list(gaussians)
    if len(sets) != cams:
        raise ValueError(f"got {len(sets)} Gaussian sets for {cams} cameras")
    n = max(len(g) for g in sets)  # pad every set to n with transparent Gaussians, one batch entry per camera
    means = torch.zeros(cams, n, 3, device=dev)
    quats = torch.zeros(cams, n, 4, device=dev)
    quats[..., 0] = 1.0
    scales = torch.full((cams, n, 3), 1e-6, device=dev)
    opacities = torch.zeros(cams, n, device=dev)
    colors = torch.zeros(cams, n, 3, device=dev)
    for cam, g in enumerate(sets):
        g = g.to(dev)
        m = len(g)
        means[cam, :m], quats[cam, :m] = g.means, torch.nn.functional.normalize(g.quats, dim=-1)
        scales[cam, :m], opacities[cam, :m] = g.scales, g.opacities
        colors[cam, :m] = g.colors(positions[cam : cam + 1])[0]
    image, alpha, _ = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats[:, None].float(),
        intrinsics[:, None].float(),
        width,
        height,
        near_plane=near,
        render_mode="RGB+ED",
        backgrounds=bg.expand(cams, 3)[:, None],
        packed=False,
    )
    return image[:, 0, ..., :3], image[:, 0, ..., 3], alpha[:, 0, ..., 0]
