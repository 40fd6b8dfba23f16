"""S2EPolicy: shapes, TorchScript, frame/decode split, goal null token, wrappable cross-attention, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s2e.model import AnchorCrossAttention, PolicyConfig, S2EPolicy, best_trajectory_metres

M, T, K, S = 6, 10, 5, 32


def _policy(**overrides) -> S2EPolicy:
    torch.manual_seed(0)
    config = PolicyConfig.preset("small", num_anchors=M, image_size=(S, S), d_model=32, cnn_channels=(8, 16, 16, 32), fusion_heads=2, **overrides)
    points = torch.randn(M, 2)
    trajectories = torch.linspace(0.1, 1.0, T)[None, :, None] * torch.cat([points, points], 0)[:M, None, :]
    return S2EPolicy(config, points, trajectories).eval()


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (batch, K, 3, S, S), dtype=torch.uint8, generator=g)
    goal = torch.tensor([[4.0, 0.6, 0.8], [12.0, 1.0, 0.0]])[:batch]
    return frames, goal, torch.tensor([True, False])[:batch]


def test_output_shapes_and_bounds() -> None:
    policy = _policy()
    out = policy(*_inputs())
    assert out["scores"].shape == (2, M) and out["scale"].shape == (2, M)
    assert out["mean"].shape == out["log_std"].shape == (2, M, T, 2) and out["rho"].shape == (2, M, T)
    assert out["context"].shape == (2, K + 1, 32) and out["anchor_features"].shape == (2, M, 32)
    assert (out["rho"].abs() < 1).all() and (out["scale"] >= 0.05).all()
    # at initialization every mode is its anchor trajectory (the heads predict offsets)
    torch.testing.assert_close(out["mean"], policy.anchor_trajectories.expand(2, -1, -1, -1))
    best = best_trajectory_metres(out)
    rows = torch.arange(2)
    index = out["scores"].argmax(-1)
    torch.testing.assert_close(best, out["mean"][rows, index] * out["scale"][rows, index][:, None, None])


def test_torchscript_matches_eager() -> None:
    policy = _policy()
    scripted = torch.jit.script(policy)
    frames, goal, mask = _inputs()
    with torch.no_grad():
        eager, script = policy(frames, goal, mask), scripted(frames, goal, mask)
        torch.testing.assert_close(script["scores"], eager["scores"])
        torch.testing.assert_close(script["log_std"], eager["log_std"])
        torch.testing.assert_close(scripted.encode_frames(frames), policy.encode_frames(frames))


def test_cached_per_frame_features_give_the_same_output() -> None:
    """A streaming runtime encodes each new frame once and reuses the others."""
    policy = _policy()
    frames, goal, mask = _inputs()
    with torch.no_grad():
        per_frame = torch.cat([policy.encode_frames(frames[:, i : i + 1]) for i in range(K)], dim=1)
        torch.testing.assert_close(policy.decode_from_features(per_frame, goal, mask)["scores"], policy(frames, goal, mask)["scores"])
        with pytest.raises(ValueError, match="expected 5 context frames, got 4"):
            policy.decode_from_features(per_frame[:, :4], goal, mask)


def test_masked_goal_uses_the_null_token_whatever_the_goal_says() -> None:
    policy = _policy()
    frames, goal, _ = _inputs()
    off = torch.tensor([False, False])
    with torch.no_grad():
        a = policy(frames, goal, off)["scores"]
        b = policy(frames, goal * 3.0, off)["scores"]
        c = policy(frames, goal * 3.0, torch.tensor([True, True]))["scores"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_image_normalization_is_inside_the_model() -> None:
    policy = _policy()
    frames, goal, mask = _inputs()
    with torch.no_grad():
        images = (frames.flatten(0, 1).float() - policy.image_mean) / policy.image_std
        torch.testing.assert_close(policy.encode_frames(frames).flatten(0, 1), policy.frame_encoder(images))


def test_cross_attention_block_can_be_wrapped_by_replacing_one_attribute() -> None:
    """The RAM of post-training wraps the block; the rest of the policy must route through it."""

    class Residual(nn.Module):
        def __init__(self, inner: AnchorCrossAttention) -> None:
            super().__init__()
            self.inner = inner
            self.delta = nn.Parameter(torch.zeros(32))

        def forward(self, queries, context, context_padding_mask=None):
            return self.inner(queries, context, context_padding_mask) + self.delta

    policy = _policy()
    frames, goal, mask = _inputs()
    with torch.no_grad():
        before = policy(frames, goal, mask)["scores"]
        policy.cross_attention = Residual(policy.cross_attention)
        torch.testing.assert_close(policy(frames, goal, mask)["scores"], before)
        policy.cross_attention.delta.fill_(1.0)
        assert not torch.allclose(policy(frames, goal, mask)["scores"], before)


def test_padding_mask_hides_context_tokens() -> None:
    block = AnchorCrossAttention(16, 2, depth=1).eval()
    queries, context = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    mask = torch.tensor([[False, False, True, True]])
    changed = context.clone()
    changed[:, 2:] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(block(queries, context, mask), block(queries, changed, mask))


def test_anchor_shape_mismatch_and_missing_timm_are_clear_errors() -> None:
    config = PolicyConfig.preset("small", num_anchors=M)
    with pytest.raises(ValueError, match="num_anchors=6 .* points \\(4, 2\\)"):
        S2EPolicy(config, torch.zeros(4, 2), torch.zeros(4, T, 2))
    with pytest.raises(ImportError, match="pip install s2e\\[timm\\]"):
        S2EPolicy(PolicyConfig.preset("paper"), torch.zeros(64, 2), torch.zeros(64, T, 2))
    with pytest.raises(ValueError, match="unknown policy preset 'huge'"):
        PolicyConfig.preset("huge")
    assert PolicyConfig.from_dict(PolicyConfig.preset("paper").to_dict()) == PolicyConfig.preset("paper")


def _blob_image(column: int) -> torch.Tensor:
    """A grey 64x96 image with a bright 16x16 square whose left edge is at ``column``."""
    image = torch.zeros(1, 3, 64, 96)
    image[..., 24:40, column : column + 16] = 2.0
    return image


def test_grid_pooling_keeps_where_things_are_and_mean_pooling_loses_it() -> None:
    """An obstacle on the left and the same obstacle on the right: the global mean pool gives one
    token for both (translation equivariance of the convolutions), the grid pool two different ones.
    The shift is a multiple of the encoder's total stride (16), so the convolutions see the same
    pattern at both places."""
    from s2e.model.encoders import ConvFrameEncoder

    torch.manual_seed(0)
    left, right = _blob_image(16), _blob_image(64)
    mean_pool = ConvFrameEncoder(32, (8, 8, 8, 8), pool="mean").eval()
    grid_pool = ConvFrameEncoder(32, (8, 8, 8, 8), pool="grid", grid=(2, 3)).eval()
    with torch.no_grad():
        mean_tokens = mean_pool(torch.cat([left, right]))
        grid_tokens = grid_pool(torch.cat([left, right]))
    spread = lambda t: float((t[0] - t[1]).norm() / t.norm(dim=1).mean())  # noqa: E731
    assert spread(mean_tokens) < 1e-4
    assert spread(grid_tokens) > 0.05


def test_stored_configs_without_a_pool_field_rebuild_the_old_mean_pool_encoder() -> None:
    stored = PolicyConfig.preset("small").to_dict()
    assert stored["cnn_pool"] == "grid"
    del stored["cnn_pool"]
    assert PolicyConfig.from_dict(stored).cnn_pool == "mean"
    with pytest.raises(ValueError, match="cnn_pool"):
        PolicyConfig.preset("small", cnn_pool="max")


def test_goal_encoder_tells_arriving_from_on_the_way() -> None:
    """Divided by 200 m alone, goals 1 m and 3 m away differ by 0.01 in the MLP's input; the log
    feature separates them by over 0.1 while 200 m still maps to 1. Old configs keep 3 inputs."""
    from s2e.model.encoders import GoalEncoder

    encoder = GoalEncoder(16, max_distance=200.0, log_distance=True)
    goals = torch.tensor([[1.0, 1.0, 0.0], [3.0, 1.0, 0.0], [200.0, 0.0, 1.0], [500.0, 0.0, 1.0]])
    features = encoder.features(goals)
    assert features.shape == (4, 4)
    assert float(features[1, 1] - features[0, 1]) > 0.1
    assert torch.allclose(features[2], features[3]) and abs(float(features[2, 1]) - 1.0) < 1e-6
    legacy = GoalEncoder(16, max_distance=200.0, log_distance=False)
    assert legacy.features(goals).shape == (4, 3) and legacy.mlp[0].in_features == 3
    stored = PolicyConfig.preset("small").to_dict()
    del stored["goal_log_distance"]
    assert PolicyConfig.from_dict(stored).goal_log_distance is False
