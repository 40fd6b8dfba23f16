"""The reference splat renderer draws tiny scenes with the expected colours and depths at known pixels."""

from __future__ import annotations

import math

import pytest
import torch

from s2e.splat.camera import level_viewmats, pinhole_intrinsics
from s2e.splat.gaussians import Gaussians, rgb_to_sh0
from s2e.splat.reference import rasterize

W, H = 25, 17  # odd sizes: the optical axis passes through the centre of pixel (8, 12)


def _gaussians(means, rgb, scales, opacity=0.999, sh_rest=None) -> Gaussians:
    n = len(means)
    sh = rgb_to_sh0(torch.tensor(rgb, dtype=torch.float32))[:, None]
    if sh_rest is not None:
        sh = torch.cat([sh, torch.as_tensor(sh_rest, dtype=torch.float32)], 1)
    return Gaussians(
        means=torch.tensor(means, dtype=torch.float32),
        quats=torch.tensor([[1.0, 0, 0, 0]] * n),
        log_scales=torch.tensor(scales, dtype=torch.float32).log(),
        opacity_logits=torch.logit(torch.as_tensor(opacity, dtype=torch.float32).expand(n).clone()),
        sh=sh,
    )


def _cameras(yaws, height=1.0, hfov=90.0, xy=None):
    yaw = torch.tensor(yaws, dtype=torch.float32)
    xy = torch.zeros(len(yaws), 2) if xy is None else torch.tensor(xy, dtype=torch.float32)
    return level_viewmats(xy, yaw, torch.full_like(yaw, height)), pinhole_intrinsics(torch.full_like(yaw, hfov), W, H)


# Camera at the origin, 1 m up, looking along +x (focal 12.5 px): a red Gaussian 5 m ahead on the axis, a
# wide flat blue band 10 m ahead at camera height behind it, a green one 6 m ahead and 4 m to the left (+y).
SCENE = _gaussians(
    means=[[5.0, 0.0, 1.0], [10.0, 0.0, 1.0], [6.0, 4.0, 1.0]],
    rgb=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
    scales=[[0.05, 0.6, 0.6], [0.05, 20.0, 1.0], [0.05, 0.5, 0.5]],
    opacity=[0.999, 0.9, 0.999],
)
BACKGROUND = torch.tensor([0.2, 0.2, 0.2])


def test_nearer_opaque_gaussian_hides_the_farther_one_with_its_colour_and_depth():
    views, k = _cameras([0.0])
    rgb, depth, alpha = rasterize(SCENE, views, k, W, H, background=BACKGROUND)
    # Centre: red at its peak alpha (capped at 0.99), the blue (alpha 0.9) behind gets 0.9 of the remaining 1 %,
    # the background the last 0.1 %.
    torch.testing.assert_close(rgb[0, 8, 12], torch.tensor([0.99, 0.0, 0.009]) + 0.001 * BACKGROUND, atol=1e-3, rtol=0)
    assert abs(depth[0, 8, 12].item() - (0.99 * 5 + 0.009 * 10) / 0.999) < 1e-3
    # 4 m right of the axis at 10 m is column 12.5 + 12.5 * 0.4 = 17.5 (pixel 17), 3.3 red sigmas off: blue only.
    assert rgb[0, 8, 17, 2] > 0.85 and rgb[0, 8, 17, :2].max() < 0.05
    assert abs(depth[0, 8, 17].item() - 10.0) < 0.05
    # Green at bearing atan(4/6) to the left: column 12.5 - 12.5 * 4/6 = 4.2, in front of the blue band (which
    # shows through the ~4 % green leaves, pulling the expected depth slightly past 6 m).
    assert rgb[0, 8, 4, 1] > 0.9 and 6.0 < depth[0, 8, 4].item() < 6.25
    # Top-left corner looks above everything: background, no alpha.
    torch.testing.assert_close(rgb[0, 0, 0], BACKGROUND)
    assert alpha[0, 0, 0] == 0
    assert (alpha <= 1).all() and (alpha >= 0).all()


def test_cameras_are_batched_and_each_can_have_its_own_gaussians():
    views, k = _cameras([0.0, math.pi, 0.0])
    lone_green = SCENE.subset(torch.tensor([2]))
    rgb, depth, alpha = rasterize([SCENE, SCENE, lone_green], views, k, W, H, background=BACKGROUND)
    single, _, _ = rasterize(SCENE, views[:1], k[:1], W, H, background=BACKGROUND)
    torch.testing.assert_close(rgb[0], single[0])
    assert alpha[1].max() == 0  # looking backwards: nothing
    torch.testing.assert_close(rgb[2, 8, 12], BACKGROUND)  # red and blue are gone for the third camera
    assert rgb[2, 8, 4, 1] > 0.9


def test_result_does_not_depend_on_the_order_gaussians_are_stored_in():
    views, k = _cameras([0.1])
    perm = torch.tensor([2, 0, 1])
    a = rasterize(SCENE, views, k, W, H)
    b = rasterize(SCENE.subset(perm), views, k, W, H)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_half_transparent_gaussian_blends_over_the_one_behind():
    scene = _gaussians([[5.0, 0.0, 1.0], [10.0, 0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [[0.05, 3.0, 3.0], [0.05, 6.0, 6.0]], opacity=0.5)
    views, k = _cameras([0.0])
    rgb, depth, alpha = rasterize(scene, views, k, W, H, background=torch.zeros(3))
    # At the centre pixel each Gaussian's alpha is its opacity 0.5: red 0.5, blue 0.5 * 0.5, depth (0.5*5 + 0.25*10) / 0.75.
    torch.testing.assert_close(rgb[0, 8, 12], torch.tensor([0.5, 0.0, 0.25]), atol=0.005, rtol=0)
    assert abs(alpha[0, 8, 12].item() - 0.75) < 0.005
    assert abs(depth[0, 8, 12].item() - (0.5 * 5 + 0.25 * 10) / 0.75) < 0.01


def test_moving_scene_and_camera_together_changes_nothing_even_with_view_dependent_colour():
    """``Gaussians.transformed`` moves means, rotations, scales and the SH frame consistently."""
    rest = torch.zeros(3, 3, 3)
    rest[:, 0] = torch.tensor([0.6, -0.4, 0.3])  # first-order SH: colour changes with the view direction
    scene = _gaussians(
        SCENE.means.tolist(), [[0.8, 0.2, 0.1], [0.1, 0.3, 0.9], [0.2, 0.8, 0.2]], [[0.05, 0.6, 0.3], [0.05, 4.0, 1.5], [0.3, 0.5, 0.2]], sh_rest=rest
    )
    scene.quats = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1, 0.2, 0.3], [1.0, 0, 0, 0], [0.7, -0.3, 0.1, 0.5]]), dim=-1)
    views, k = _cameras([0.05], xy=[[0.3, -0.2]])
    angle, scale, shift = 0.7, 2.0, torch.tensor([3.0, -1.0, 0.0])
    c, s = math.cos(angle), math.sin(angle)
    move = torch.eye(4)
    move[:3, :3] = scale * torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    move[:3, 3] = shift
    moved_views, _ = _cameras([0.05 + angle], height=2.0, xy=[(move[:2, :2] @ torch.tensor([0.3, -0.2]) + shift[:2]).tolist()])
    a = rasterize(scene, views, k, W, H)
    b = rasterize(scene.transformed(move), moved_views, k, W, H)
    torch.testing.assert_close(a[0], b[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(a[1] * scale, b[1], atol=1e-2, rtol=1e-3)


def test_non_similarity_world_transform_is_refused():
    shear = torch.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ValueError, match="similarity"):
        SCENE.transformed(shear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat comparison needs CUDA")
def test_reference_matches_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    from s2e.splat.gsplat_backend import rasterize_gsplat
    from s2e.splat.synthetic import synthetic_street

    street = synthetic_street(length=12.0, spacing=0.3)
    views, k = _cameras([0.0, 0.4, -0.3], xy=[[-4.0, 0.0], [-2.0, 1.0], [0.0, -1.0]])
    ref = rasterize(street, views, k, 64, 48)
    views_c, k_c = views.cuda(), k.cuda()
    gpu = rasterize_gsplat(street.to("cuda"), views_c, k_c, 64, 48)
    torch.testing.assert_close(gpu[0].cpu(), ref[0], atol=0.02, rtol=0)
    torch.testing.assert_close(gpu[2].cpu(), ref[2], atol=0.02, rtol=0)


def test_projection_matches_gsplats_own_pytorch_projection():
    """Means, 2D conics and depths agree with gsplat's PyTorch projection (runs on CPU, unlike its rasterizer)."""
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _fully_fused_projection

    from s2e.splat.reference import project

    gen = torch.Generator().manual_seed(0)
    n = 60
    means = torch.stack([4 + 6 * torch.rand(n, generator=gen), 3 * (torch.rand(n, generator=gen) - 0.5), 1 + 1.2 * (torch.rand(n, generator=gen) - 0.5)], -1)
    means[:5, 0] = -3.0  # behind the camera: both drop them
    g = Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=gen),
        log_scales=-1.5 + 0.5 * torch.randn(n, 3, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh=torch.zeros(n, 1, 3),
    )
    views, k = _cameras([0.1])
    ours = project(g, views[0], k[0], torch.zeros(n, 3), W, H)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g.means, g.covariances(), views, k, W, H, eps2d=0.3, near_plane=0.05)
    visible = (radii[0] > 0).all(-1)
    order = torch.argsort(depths[0][visible])
    assert int(visible.sum()) == len(ours.depth) == n - 5
    torch.testing.assert_close(ours.depth, depths[0][visible][order])
    torch.testing.assert_close(ours.mean2d, means2d[0][visible][order], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.conic, conics[0][visible][order], atol=1e-4, rtol=1e-4)
