"""tools/feature_drift.py: Delta_feat is zero for an untouched encoder (the RAM case), positive for
a changed one, read from real shards through the video datamodule."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from test_bench_cli import IMAGE, tiny_checkpoint

from conftest import curved_trajectory, encode_indexed_video
from datamodules.shard_writer import EpisodeShardWriter
from s2e.bench.drift import check_comparable
from s2e.model.policy import PolicyConfig, S2EPolicy
from s2e.scripts import feature_drift

FPS = 10


def _perturbed(source: pathlib.Path, prefix: str, out: pathlib.Path) -> pathlib.Path:
    """A copy of the checkpoint with the parameters under ``prefix`` shifted (a stand-in for fine-tuning)."""
    checkpoint = torch.load(source, weights_only=True)
    g = torch.Generator().manual_seed(0)
    changed = 0
    for key, value in checkpoint["state_dict"].items():
        if key.startswith(prefix) and value.is_floating_point():
            value.add_(0.05 * torch.randn(value.shape, generator=g))
            changed += 1
    assert changed
    torch.save(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("drift")
    with EpisodeShardWriter(root, prefix="real", max_count=2) as writer:
        for i in range(2):
            writer.write(f"ep{i}", encode_indexed_video(60, FPS, height=IMAGE, width=IMAGE), curved_trajectory(60, FPS, turn_rate=0.1 + 0.2 * i), {"fps": FPS})
    base = tiny_checkpoint(root)
    return {
        "shards": str(root / "real-000000.tar"),
        "base": base,
        "encoder": _perturbed(base, "policy.frame_encoder.", root / "encoder.ckpt"),
        "heads": _perturbed(base, "policy.heads.", root / "heads.ckpt"),
    }


def _drift(setup, b: str, out: pathlib.Path) -> dict:
    return feature_drift.run(
        ["--ckpt-a", str(setup["base"]), "--ckpt-b", str(setup[b]), "--shards", setup["shards"], "--max-frames", "24", "--batch-size", "8", "--out", str(out)]
    )


def test_drift_is_zero_when_only_the_decoder_changed_and_positive_when_the_encoder_did(setup, tmp_path: pathlib.Path, capsys) -> None:
    same = _drift(setup, "heads", tmp_path / "heads")
    assert same["frames"] == 24 and same["delta_feat"] == 0.0 and same["per_frame_distance_mean"] == 0.0
    assert same["cosine_similarity_mean"] == pytest.approx(1.0)
    moved = _drift(setup, "encoder", tmp_path / "encoder")
    assert moved["delta_feat"] > 0 and moved["per_frame_distance_mean"] >= moved["delta_feat"]  # the norm of a mean <= the mean norm
    assert moved["cosine_similarity_mean"] < 1.0
    assert json.loads((tmp_path / "encoder" / "drift.json").read_text()) == moved
    assert (tmp_path / "encoder" / "drift.png").stat().st_size > 5000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["delta_feat"] == moved["delta_feat"]


def test_incomparable_or_missing_checkpoints_are_clear_errors(setup, tmp_path: pathlib.Path, capsys) -> None:
    anchors = torch.zeros(3, 2), torch.zeros(3, 10, 2)
    small = S2EPolicy(PolicyConfig.preset("small", num_anchors=3, d_model=32, fusion_heads=2), *anchors)
    wide = S2EPolicy(PolicyConfig.preset("small", num_anchors=3, d_model=64, fusion_heads=2), *anchors)
    with pytest.raises(ValueError, match="frame encoders are not comparable: image_size .* d_model 32 vs 64"):
        check_comparable(small, wide)
    with pytest.raises(SystemExit):
        feature_drift.run(["--ckpt-a", str(tmp_path / "none.ckpt"), "--ckpt-b", str(setup["base"]), "--shards", setup["shards"], "--out", str(tmp_path)])
    assert "checkpoint not found" in capsys.readouterr().err
