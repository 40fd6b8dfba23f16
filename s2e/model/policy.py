"""``S2EPolicy``: k context frames + goal -> anchor mixture over future waypoints (stage-1 model).

The forward pass is split in two so a streaming runtime can cache per-frame work:
:meth:`S2EPolicy.encode_frames` (each frame on its own, independent of the others) and
:meth:`S2EPolicy.decode_from_features` (fusion, anchor cross-attention, heads). Images enter as
uint8 and are normalized inside, so an export needs no preprocessing contract beyond "RGB uint8".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from s2e.config_parsing import dataclass_from_dict
from s2e.distributions import LOG_STD_MAX, LOG_STD_MIN, RHO_MAX, AnchorMixture
from s2e.model.decoder import AnchorCrossAttention, AnchorQueries
from s2e.model.encoders import IMAGE_MEAN, IMAGE_STD, ConvFrameEncoder, GoalEncoder, TimmFrameEncoder
from s2e.model.fusion import ContextFusion
from s2e.model.heads import AnchorHeads


@dataclass
class PolicyConfig:
    """Architecture of the policy (plain types only: it is stored in checkpoints).

    ``context_frames`` / ``num_waypoints`` come from the TimingSpec and ``num_anchors`` from the
    anchors file; the presets fill them with the defaults and the training module overrides them.
    """

    image_size: tuple[int, int] = (64, 64)
    context_frames: int = 5
    num_waypoints: int = 10
    num_anchors: int = 20
    d_model: int = 128
    encoder: str = "cnn"  # "cnn" or "timm"
    cnn_channels: tuple[int, ...] = (16, 32, 64, 128)
    cnn_pool: str = "grid"  # "grid" keeps image layout; "mean" is the global pool of older checkpoints
    cnn_grid: tuple[int, int] = (4, 4)
    timm_model: str = "vit_small_patch16_224"
    timm_weights: Optional[str] = None
    fusion_depth: int = 2
    fusion_heads: int = 4
    decoder_depth: int = 1
    ff_mult: int = 4
    dropout: float = 0.0
    max_goal_distance: float = 200.0
    goal_log_distance: bool = True  # False: the goal encoder of older checkpoints (distance / max only)
    log_std_min: float = LOG_STD_MIN
    log_std_max: float = LOG_STD_MAX
    rho_max: float = RHO_MAX

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        self.cnn_grid = (int(self.cnn_grid[0]), int(self.cnn_grid[1]))
        if self.cnn_pool not in ("grid", "mean"):
            raise ValueError(f"PolicyConfig.cnn_pool must be 'grid' or 'mean', got {self.cnn_pool!r}")
        if self.encoder not in ("cnn", "timm"):
            raise ValueError(f"PolicyConfig.encoder must be 'cnn' or 'timm', got {self.encoder!r}")
        if self.d_model % self.fusion_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by fusion_heads={self.fusion_heads}")
        if not self.log_std_min < self.log_std_max or not 0.0 < self.rho_max < 1.0:
            raise ValueError("need log_std_min < log_std_max and 0 < rho_max < 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["cnn_channels"] = list(self.cnn_channels)
        data["cnn_grid"] = list(self.cnn_grid)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicyConfig":
        """A stored config; one written before ``cnn_pool`` existed had the global mean pool."""
        return dataclass_from_dict(cls, {"cnn_pool": "mean", "goal_log_distance": False, **data})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PolicyConfig":
        """``small`` (CPU default: 5 frames at 64x64, compact CNN with a 4x4 grid token) or ``paper`` (11 frames at 256x256,
        ViT-S through timm, 6 fusion layers, 64 anchors), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown policy preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # small: sized for CPU pretraining; of the image and channel sizes compared (docs/experiments.md),
    # the one that reached standard-suite goals after the same short pretraining.
    "small": dict(
        image_size=(64, 64),
        context_frames=5,
        num_anchors=20,
        d_model=128,
        encoder="cnn",
        cnn_channels=(16, 32, 64, 128),
        cnn_pool="grid",
        cnn_grid=(4, 4),
        goal_log_distance=True,
        fusion_depth=2,
        fusion_heads=4,
    ),
    "paper": dict(
        image_size=(256, 256),
        context_frames=11,
        num_anchors=64,
        d_model=384,
        encoder="timm",
        goal_log_distance=True,
        timm_model="vit_small_patch16_224",
        fusion_depth=6,
        fusion_heads=6,
        decoder_depth=2,
    ),
}


class S2EPolicy(nn.Module):
    """The S2E policy.

    Args:
        config: the architecture.
        anchor_points: [M, 2] intent points; anchor_trajectories: [M, T, 2] (normalized units).
            Both are buffers, so they travel in the state dict and every checkpoint and export.

    ``forward(frames uint8 [B, k, 3, H, W], goal [B, 3], goal_mask [B] bool or None)`` returns a dict:
    ``scores`` [B, M], ``mean`` / ``log_std`` [B, M, T, 2], ``rho`` [B, M, T], ``scale`` [B, M]
    (metres per step), plus ``context`` [B, k + 1, D] and ``anchor_features`` [B, M, D] for heads
    (e.g. a value head) that sit on detached features.
    """

    def __init__(self, config: PolicyConfig, anchor_points: Tensor, anchor_trajectories: Tensor) -> None:
        super().__init__()
        expected = (config.num_anchors, config.num_waypoints, 2)
        if tuple(anchor_points.shape) != (config.num_anchors, 2) or tuple(anchor_trajectories.shape) != expected:
            raise ValueError(
                f"anchors do not match the model: the model has num_anchors={config.num_anchors} and "
                f"num_waypoints={config.num_waypoints}, the anchors are points {tuple(anchor_points.shape)} / "
                f"trajectories {tuple(anchor_trajectories.shape)}"
            )
        self.config = config
        self.context_frames = config.context_frames
        self.register_buffer("anchor_points", anchor_points.detach().float().clone())
        self.register_buffer("anchor_trajectories", anchor_trajectories.detach().float().clone())
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        d = config.d_model
        if config.encoder == "cnn":
            self.frame_encoder: nn.Module = ConvFrameEncoder(d, config.cnn_channels, config.cnn_pool, config.cnn_grid)
        else:
            self.frame_encoder = TimmFrameEncoder(d, config.timm_model, config.timm_weights, config.image_size)
        self.goal_encoder = GoalEncoder(d, config.max_goal_distance, config.goal_log_distance)
        self.fusion = ContextFusion(d, config.context_frames, config.fusion_depth, config.fusion_heads, config.ff_mult, config.dropout)
        self.anchor_queries = AnchorQueries(config.num_anchors, d)
        self.cross_attention = AnchorCrossAttention(d, config.fusion_heads, config.decoder_depth, config.ff_mult, config.dropout)
        self.heads = AnchorHeads(d, config.num_waypoints, config.log_std_min, config.log_std_max, config.rho_max)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """uint8 frames [B, n, 3, H, W] (any n) -> per-frame features [B, n, D]; frames never interact here."""
        b, n = frames.shape[0], frames.shape[1]
        images = (frames.reshape(b * n, frames.shape[2], frames.shape[3], frames.shape[4]).float() - self.image_mean) / self.image_std
        return self.frame_encoder(images).view(b, n, -1)

    def decode_from_features(self, frame_features: Tensor, goal: Tensor, goal_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Per-frame features [B, k, D] (oldest first) + goal -> the outputs documented on the class."""
        if frame_features.shape[1] != self.context_frames:
            raise ValueError(f"expected {self.context_frames} context frames, got {frame_features.shape[1]}")
        context = self.fusion(frame_features, self.goal_encoder(goal, goal_mask))
        out = self.decode_from_context(context)
        out["context"] = context
        return out

    def decode_from_context(self, context: Tensor) -> Dict[str, Tensor]:
        """Fused context -> the head outputs and ``anchor_features``: the anchor cross-attention and
        the heads alone, which RL post-training reruns on stored contexts (``s2e.rl.actor``)."""
        queries = self.anchor_queries(self.anchor_points, context.shape[0])
        anchor_features = self.cross_attention(queries, context)
        out = self.heads(anchor_features, self.anchor_trajectories)
        out["anchor_features"] = anchor_features
        return out

    def forward(self, frames: Tensor, goal: Tensor, goal_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        return self.decode_from_features(self.encode_frames(frames), goal, goal_mask)

    @torch.jit.ignore
    def mixture(self, out: Dict[str, Tensor]) -> AnchorMixture:
        """The anchor mixture (normalized units) of a forward output."""
        return AnchorMixture(out["scores"], out["mean"], out["log_std"], out["rho"])


def best_trajectory_metres(out: Dict[str, Tensor]) -> Tensor:
    """[B, T, 2] the highest-scoring mode's mean, scaled to metres by its own predicted scale."""
    best = out["scores"].argmax(dim=-1)
    rows = torch.arange(best.shape[0], device=best.device)
    return out["mean"][rows, best] * out["scale"][rows, best][:, None, None]


def modes_metres(out: Dict[str, Tensor]) -> Tensor:
    """[B, M, T, 2] every mode's mean in metres."""
    return out["mean"] * out["scale"][..., None, None]
