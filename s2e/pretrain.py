"""``PretrainModule``: AGDM pretraining of :class:`s2e.model.S2EPolicy` (stage 1 of the paper).

The anchors file fixes the model's TimingSpec and its number of modes; both, the anchors themselves
(policy buffers) and the policy config are stored in every checkpoint as plain types
(:mod:`s2e.checkpoint`), so :func:`s2e.checkpoint.load_policy_from_checkpoint` rebuilds the policy
from the checkpoint alone. ``setup`` refuses a DataModule cut with another TimingSpec or image size.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from s2e.anchors import Anchors
from s2e.checkpoint import CHECKPOINT_KEY, check_resumable, load_policy_from_checkpoint, policy_entry
from s2e.distributions import Assignment, agdm_loss
from s2e.model.policy import PolicyConfig, S2EPolicy, best_trajectory_metres, modes_metres


class PretrainModule(pl.LightningModule):
    """AGDM pretraining.

    Args:
        anchors_path: the anchors ``.npz`` (tools/compute_anchors.py); sets timing and num_anchors.
        preset: policy preset (``small`` | ``paper``); ``policy`` overrides single fields of it.
        num_anchors: if given, must equal the anchors file's count (a config that expects another
            anchor set fails loudly instead of training a different model).
        assignment: AGDM mode assignment, ``nearest_anchor`` or ``best_mode``.
        scale_weight: weight of the velocity-scale L2 term.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up, then cosine decay to
            ``min_lr_ratio * lr`` at the trainer's last step.
        top_k: modes counted in minADE/minFDE.
        image_every_n_steps: training steps between TensorBoard mode images (0 disables them).
        departure_weight, departure_m: each window's loss counts ``1 + departure_weight *
            min(d / departure_m, 1)``, where d (metres) is how far its demonstrated future strays
            sideways from the straight line to its goal (:func:`departure_weights`; 0 turns it off,
            goal-free windows count 1). Why: the demonstrator leaves the goal line to avoid
            something on a few % of steps, so avoidance is a sliver of the plain loss. Measured
            once (1,632 episodes, weight 4, 1 m): `obstacle` unchanged (README, "The learned
            policy"), hence off by default.
        init_from: a pretraining checkpoint whose policy weights this run starts from, with a fresh
            optimizer and learning-rate schedule (``--ckpt_path`` instead resumes the old run, whose
            schedule has already decayed): fine-tuning on new data, e.g. a DAgger round. Its policy
            config, timing and anchors must equal this run's.
    """

    def __init__(
        self,
        anchors_path: str,
        preset: str = "small",
        policy: Optional[dict[str, Any]] = None,
        num_anchors: Optional[int] = None,
        assignment: Assignment = "nearest_anchor",
        scale_weight: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        top_k: int = 5,
        image_every_n_steps: int = 500,
        init_from: Optional[str] = None,
        departure_weight: float = 0.0,
        departure_m: float = 1.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(departure_weight) and departure_weight >= 0 and math.isfinite(departure_m) and departure_m > 0):
            raise ValueError(f"departure_weight must be >= 0 and departure_m > 0 (finite), got {departure_weight} and {departure_m}")
        anchors = Anchors.load(anchors_path)
        if num_anchors is not None and num_anchors != anchors.num_anchors:
            raise ValueError(
                f"the model expects num_anchors={num_anchors} but {anchors_path} holds {anchors.num_anchors} anchors; "
                "refit the anchors with tools/compute_anchors.py --num-anchors or fix model.num_anchors"
            )
        self.timing = anchors.timing
        config = PolicyConfig.preset(
            preset,
            **{
                **(policy or {}),
                "num_anchors": anchors.num_anchors,
                "context_frames": anchors.timing.context_frames,
                "num_waypoints": anchors.timing.num_waypoints,
            },
        )
        self.policy = S2EPolicy(config, torch.from_numpy(anchors.points), torch.from_numpy(anchors.trajectories))
        self.register_buffer("anchor_counts", torch.from_numpy(anchors.counts))
        if init_from is not None:
            self._start_from(init_from)
        self.save_hyperparameters()

    def _start_from(self, path: str) -> None:
        """Copy the policy weights of checkpoint ``path`` after checking it is the same model."""
        start, timing, anchors = load_policy_from_checkpoint(path)
        if timing != self.timing:
            raise ValueError(f"init_from {path}: its TimingSpec {timing} differs from this run's anchors ({self.timing})")
        if start.config != self.policy.config:
            raise ValueError(f"init_from {path}: its policy config differs from this run's:\n  {start.config}\n  {self.policy.config}")
        if not np.allclose(anchors.points, self.policy.anchor_points.numpy()):
            raise ValueError(f"init_from {path}: its anchors differ from this run's anchors file; fine-tune with the file the checkpoint was trained with")
        self.policy.load_state_dict(start.state_dict())

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        data_timing = getattr(datamodule, "timing", None)
        if data_timing is not None:
            self.timing.check_compatible(data_timing, this="model (anchors)", that="data")
        image_size = getattr(datamodule, "image_size", None)
        if image_size is not None and tuple(image_size) != self.policy.config.image_size:
            raise ValueError(
                f"the data decodes frames at {tuple(image_size)} but the model is configured for "
                f"{self.policy.config.image_size}; set model.policy.image_size or data.image_size"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what rebuilds the policy (its config and TimingSpec) as plain types beside the weights.

        Kept out of the hyper-parameters on purpose: LightningCLI feeds those back into ``__init__``.
        """
        checkpoint[CHECKPOINT_KEY] = policy_entry(self.policy, self.timing)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume or fine-tune from a checkpoint trained under another TimingSpec."""
        check_resumable(checkpoint, self.timing, run="model (anchors)")

    # ------------------------------------------------------------------ steps
    def forward(self, frames: Tensor, goal: Tensor, goal_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        return self.policy(frames, goal, goal_mask)

    def compute_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Forward + AGDM loss + metrics of one batch, no logging: (loss, outputs, loss parts and metrics).

        Split from the Lightning hooks so tools/bench_train.py can run exactly this work in a plain loop.
        """
        out = self.policy(batch["frames"], batch["goal"], batch.get("goal_mask"))
        mixture = self.policy.mixture(out)
        losses = agdm_loss(
            mixture,
            out["scale"],
            batch["waypoints"],
            batch["scale"],
            self.policy.anchor_points,
            assignment=self.hparams.assignment,
            scale_weight=self.hparams.scale_weight,
            weights=self._window_weights(batch),
        )
        metrics = {k: v for k, v in losses.items() if k != "assigned"}
        metrics.update(trajectory_metrics(out, batch["waypoints"], batch["scale"], losses["assigned"], self.hparams.top_k))
        with torch.no_grad():
            metrics["nll"] = -mixture.log_prob(batch["waypoints"]).mean()
        return losses["loss"], out, metrics

    def _window_weights(self, batch: dict[str, Any]) -> Optional[Tensor]:
        """Per-window loss weights [B] (None: the plain mean), see ``departure_weight``."""
        if not self.hparams.departure_weight:
            return None
        waypoints_m = batch["waypoints"] * batch["scale"][:, None, None]
        departure = departure_weights(waypoints_m, batch["goal"], self.hparams.departure_m)
        return 1.0 + self.hparams.departure_weight * departure

    def _shared_step(self, batch: dict[str, Any], split: str) -> tuple[Tensor, dict[str, Tensor]]:
        loss, out, metrics = self.compute_step(batch)
        sync = split != "train"  # training metrics stay per-rank: no all-reduce on every step
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, batch_size=batch["frames"].shape[0], sync_dist=sync)
        return loss, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, out = self._shared_step(batch, "train")
        every = self.hparams.image_every_n_steps
        if every and self.global_step % every == 0:
            self._log_modes_image(batch, out)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self.policy(batch["frames"], batch["goal"], batch.get("goal_mask"))
        return {"key": batch.get("key"), "t": batch.get("t"), "waypoints_m": best_trajectory_metres(out), "scores": out["scores"].softmax(-1)}

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            (no_decay if param.ndim < 2 or "embedding" in name or "null_token" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ TensorBoard
    @rank_zero_only
    def _log_modes_image(self, batch: dict[str, Any], out: dict[str, Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        figure = modes_figure(
            batch["frames"][0, -1].detach().cpu().numpy(),
            modes_metres(out)[0].detach().float().cpu().numpy(),
            out["scores"][0].detach().float().softmax(-1).cpu().numpy(),
            (batch["waypoints"][0] * batch["scale"][0]).detach().float().cpu().numpy(),
        )
        experiment.add_figure("train/modes", figure, global_step=self.global_step)


def departure_weights(waypoints_m: Tensor, goal: Tensor, departure_m: float) -> Tensor:
    """[B] in [0, 1]: the largest sideways distance of a future [B, T, 2] (metres, robot frame) from
    the straight line to its goal (``goal``: the (distance, cos, sin) encoding), over ``departure_m``,
    capped at 1. A goal-free window (goal all zeros) has no line and gets 0."""
    direction = goal[:, 1:3]  # (cos, sin) of the goal's bearing; zeros when the goal is dropped
    sideways = (waypoints_m[..., 1] * direction[:, None, 0] - waypoints_m[..., 0] * direction[:, None, 1]).abs()
    return (sideways.amax(dim=1) / departure_m).clamp(max=1.0)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def trajectory_metrics(out: dict[str, Tensor], target: Tensor, target_scale: Tensor, assigned: Tensor, top_k: int) -> dict[str, Tensor]:
    """Best-mode ADE/FDE and minADE/minFDE over the top-k scored modes (metres), anchor top-1 accuracy."""
    with torch.no_grad():
        truth = target * target_scale[:, None, None]
        errors = (modes_metres(out) - truth[:, None]).norm(dim=-1)  # [B, M, T]
        rows = torch.arange(errors.shape[0], device=errors.device)
        best = out["scores"].argmax(-1)
        k = min(top_k, errors.shape[1])
        top = out["scores"].topk(k, dim=-1).indices  # [B, k]
        top_errors = errors[rows[:, None], top]  # [B, k, T]
        return {
            "ade": errors[rows, best].mean(),
            "fde": errors[rows, best, -1].mean(),
            "min_ade": top_errors.mean(-1).min(-1).values.mean(),
            "min_fde": top_errors[..., -1].min(-1).values.mean(),
            "anchor_acc": (best == assigned).float().mean(),
        }


def modes_figure(frame_chw: np.ndarray, modes_m: np.ndarray, weights: np.ndarray, truth_m: np.ndarray):
    """Matplotlib figure: the newest context frame beside a top-down plot (robot frame, +x up, +y
    left) of every predicted mode with opacity by its score and the ground truth in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_img, ax_top) = plt.subplots(1, 2, figsize=(8, 4))
    ax_img.imshow(frame_chw.transpose(1, 2, 0))
    ax_img.set_axis_off()
    ax_img.set_title("context frame (now)")
    alpha = 0.1 + 0.9 * weights / max(float(weights.max()), 1e-9)
    for mode, a in zip(modes_m, alpha):
        ax_top.plot(-mode[:, 1], mode[:, 0], "-", color="tab:blue", alpha=float(a), linewidth=1.5)
    ax_top.plot(-truth_m[:, 1], truth_m[:, 0], "k.-", linewidth=2, label="ground truth")
    ax_top.plot([0], [0], "r^", markersize=8)
    ax_top.set_aspect("equal", adjustable="datalim")
    ax_top.set_xlabel("-y (m, right)")
    ax_top.set_ylabel("x (m, forward)")
    ax_top.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
