"""Feature drift between two policies' frame encoders (the paper's Delta_feat).

    Delta_feat = || E_o[F_b(o)] - E_o[F_a(o)] ||_2

over a set of frames o (real video, so it measures what fine-tuning in simulation did to how the
policy sees the real world). RAM post-training leaves the encoder frozen, so its drift is exactly
zero; full fine-tuning moves it. Besides Delta_feat the summary gives it relative to the norm of
the reference mean feature, and the per-frame distances ||F_b(o) - F_a(o)|| and cosine
similarities, which show whether the drift is a uniform shift or a reshuffle of the feature space.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn


def check_comparable(policy_a: nn.Module, policy_b: nn.Module) -> None:
    """Two encoders are comparable only with the same input size and feature width."""
    a, b = policy_a.config, policy_b.config
    if tuple(a.image_size) != tuple(b.image_size) or a.d_model != b.d_model:
        raise ValueError(
            f"the checkpoints' frame encoders are not comparable: image_size {tuple(a.image_size)} vs {tuple(b.image_size)}, d_model {a.d_model} vs {b.d_model}"
        )


@torch.no_grad()
def encoder_features(policy: nn.Module, frames: Tensor) -> Tensor:
    """uint8 frames [N, 3, H, W] -> per-frame encoder features [N, D] (float64 for the statistics)."""
    return policy.encode_frames(frames[:, None])[:, 0].double()


def feature_drift(policy_a: nn.Module, policy_b: nn.Module, frame_batches: Iterable[Tensor], max_frames: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Drift of ``policy_b``'s encoder from ``policy_a``'s over up to ``max_frames`` frames.

    Returns the summary and the raw per-frame arrays (features of both, distances) for plots.
    """
    check_comparable(policy_a, policy_b)
    policy_a.eval()
    policy_b.eval()
    feats_a, feats_b, count = [], [], 0
    for frames in frame_batches:
        frames = frames[: max_frames - count]
        feats_a.append(encoder_features(policy_a, frames))
        feats_b.append(encoder_features(policy_b, frames))
        count += len(frames)
        if count >= max_frames:
            break
    if count == 0:
        raise ValueError("no frames to measure feature drift on")
    fa, fb = torch.cat(feats_a), torch.cat(feats_b)
    delta = float((fb.mean(0) - fa.mean(0)).norm())
    distances = (fb - fa).norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    summary = {
        "frames": count,
        "delta_feat": delta,
        "relative_delta_feat": delta / max(float(fa.mean(0).norm()), 1e-12),
        "per_frame_distance_mean": float(distances.mean()),
        "per_frame_distance_p95": float(torch.quantile(distances, 0.95)),
        "cosine_similarity_mean": float(cosine.mean()),
    }
    return summary, {"features_a": fa.numpy(), "features_b": fb.numpy(), "distances": distances.numpy()}


def plot_drift(arrays: dict[str, np.ndarray], summary: dict[str, Any], labels: tuple[str, str], path) -> None:
    """Per-frame distance histogram beside both feature sets in the reference's 2-D PCA plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fa, fb = arrays["features_a"], arrays["features_b"]
    centre = fa.mean(0)
    _, _, vt = np.linalg.svd(fa - centre, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(fa.shape[1])[:, :2]
    pa, pb = (fa - centre) @ axes, (fb - centre) @ axes
    fig, (ax_hist, ax_pca) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax_hist.hist(arrays["distances"], bins=30, color="#1f78b4")
    ax_hist.set_xlabel("||F_b(o) - F_a(o)|| per frame")
    ax_hist.set_ylabel("frames")
    ax_hist.set_title(f"Delta_feat = {summary['delta_feat']:.4g} (relative {summary['relative_delta_feat']:.3g})", fontsize=9)
    ax_pca.scatter(pa[:, 0], pa[:, 1], s=6, alpha=0.5, label=labels[0])
    ax_pca.scatter(pb[:, 0], pb[:, 1], s=6, alpha=0.5, label=labels[1])
    ax_pca.plot(*pa.mean(0), "k+", ms=12)
    ax_pca.plot(*pb.mean(0), "rx", ms=10)
    ax_pca.set_title("encoder features, PCA plane of A", fontsize=9)
    ax_pca.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
