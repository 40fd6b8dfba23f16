"""timm-style sweep: every policy preset that can be built here scripts and exports, and the
scripted and exported modules match eager (the paper preset uses the CNN encoder without timm)."""

from __future__ import annotations

import pytest
import torch

from s2e.export import export_program, script_policy
from s2e.model.policy import PRESETS
from s2e.scripts.bench_deploy import build

SLOW_PRESETS = {"paper"}  # 11 frames at 256x256: tracing and running it takes tens of seconds here


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PRESETS else p for p in sorted(PRESETS)])
def test_preset_scripts_and_exports_with_matching_outputs(preset: str) -> None:
    deployable, _ = build(preset)
    k, h, w = deployable.context_frames, deployable.image_height, deployable.image_width
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, k, 3, h, w), dtype=torch.uint8, generator=generator)
    goal = torch.tensor([[6.0, 1.0], [float("nan"), float("nan")]])
    scripted = script_policy(deployable)
    program = export_program(deployable).module()
    with torch.no_grad():
        eager = deployable(frames, goal)
        for other in (scripted(frames, goal), program(frames, goal), program(frames[:1], goal[:1])):
            for got, want in zip(other, eager):
                torch.testing.assert_close(got, want[: got.shape[0]], rtol=1e-4, atol=1e-4)
        streamed = scripted.step(frames[:, -1], goal)
        window = deployable(frames[:, [-1] * k], goal)
    for got, want in zip(streamed, window):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(eager[3]).all()
