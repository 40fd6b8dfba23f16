"""Frame and goal encoders: images -> one token per frame, (distance, cos, sin) -> one goal token."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

# ImageNet statistics: the timm backbones were trained with them and the CNN does not mind.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class ConvFrameEncoder(nn.Module):
    """A compact strided CNN (the CPU default): each block halves the resolution; one d_model token per frame.

    ``pool`` decides how the last feature map becomes that token:

    * ``"grid"`` (default): a 1x1 convolution to ``grid_channels``, average pooling to a coarse
      ``grid`` of cells, and a linear layer over the flattened cells. Each cell has its own weights,
      so where something is in the image (an obstacle left or right of the path, a wall ahead)
      survives into the token: obstacle avoidance needs exactly that.
    * ``"mean"``: a global average pool (the encoder of checkpoints written before ``cnn_pool`` existed). It averages
      layout away: a bench on the left and on the right give the same token.

    Both work for any input size and export to TorchScript and torch.export.
    """

    def __init__(
        self, d_model: int, channels: Sequence[int] = (16, 32, 64, 128), pool: str = "grid", grid: Sequence[int] = (4, 4), grid_channels: int = 32
    ) -> None:
        super().__init__()
        if pool not in ("grid", "mean"):
            raise ValueError(f"ConvFrameEncoder pool must be 'grid' or 'mean', got {pool!r}")
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in channels:
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(min(8, out_ch), out_ch),
                nn.GELU(),
            ]
            in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.use_grid = pool == "grid"
        self.grid = (int(grid[0]), int(grid[1]))
        if self.use_grid:
            self.reduce = nn.Sequential(nn.Conv2d(in_ch, grid_channels, 1), nn.GELU())
            self.proj = nn.Linear(grid_channels * self.grid[0] * self.grid[1], d_model)
        else:
            self.reduce = nn.Identity()
            self.proj = nn.Linear(in_ch, d_model)

    def forward(self, images: Tensor) -> Tensor:
        """images: [N, 3, H, W] normalized float -> [N, d_model]."""
        features = self.blocks(images)
        if self.use_grid:
            cells = nn.functional.adaptive_avg_pool2d(self.reduce(features), self.grid)
            return self.proj(cells.flatten(1))
        return self.proj(features.mean(dim=(2, 3)))


class TimmFrameEncoder(nn.Module):
    """Any timm backbone (e.g. ``vit_small_patch16_224`` for the paper config) with weights read
    from a LOCAL file: nothing is downloaded, so a cluster without internet trains the same."""

    def __init__(self, d_model: int, model_name: str, weights_path: Optional[str], image_size: tuple[int, int]) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:  # timm is an optional extra
            raise ImportError(f"the timm frame encoder ({model_name!r}) needs timm: pip install s2e[timm]") from err
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=image_size)
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{path} lacks backbone weights {missing[:5]}... for {model_name}")
            del unexpected  # classifier heads of the source checkpoint are irrelevant here
        self.proj = nn.Linear(self.backbone.num_features, d_model)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.backbone(images))


class GoalEncoder(nn.Module):
    """(distance m, cos, sin) -> a d_model token; rows whose goal is masked get a learned null token.

    The distance is clipped to ``max_distance`` and divided by it (the paper uses 200 m), so goals far
    beyond anything in training do not push the MLP out of range. With ``log_distance`` the MLP also
    gets ``log1p(d) / log1p(max_distance)``: divided by 200, a goal 1 m away and one 3 m away differ
    by 0.01 in the input and a policy cannot tell "arriving" from "on the way"; on the log scale
    they are 0.13 and 0.26 apart from 0 while 200 m still maps to 1.
    """

    def __init__(self, d_model: int, max_distance: float = 200.0, log_distance: bool = True) -> None:
        super().__init__()
        self.max_distance = float(max_distance)
        self.log_distance = bool(log_distance)
        self.mlp = nn.Sequential(nn.Linear(4 if log_distance else 3, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.null_token = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.null_token, std=0.02)

    def features(self, goal: Tensor) -> Tensor:
        """[B, 3] (distance, cos, sin) -> the MLP's input [B, 3 or 4]."""
        clipped = goal[:, :1].clamp(0.0, self.max_distance)
        parts = [clipped / self.max_distance]
        if self.log_distance:
            parts.append(torch.log1p(clipped) / math.log1p(self.max_distance))
        parts.append(goal[:, 1:3])
        return torch.cat(parts, dim=-1)

    def forward(self, goal: Tensor, goal_mask: Optional[Tensor] = None) -> Tensor:
        """goal: [B, 3]; goal_mask: [B] bool, True where the goal is given -> [B, d_model]."""
        token = self.mlp(self.features(goal))
        if goal_mask is None:
            return token
        return torch.where(goal_mask[:, None], token, self.null_token.to(token.dtype).expand_as(token))
