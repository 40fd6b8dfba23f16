"""ONNX beyond the small pretrained export (tests/test_export.py): parity of a RAM-post-trained
checkpoint and of the paper preset on ONNX Runtime, and the ``onnx`` NavBench agent running ONNX
policies closed-loop through adapter specs (ours, the S2E authors' BC format), with clear errors for
a spec that does not fit its graph."""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
from dataclasses import replace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from onnx_helpers import TINY, assert_onnx_matches, random_policy, rendered_sequence, write_policy_checkpoint
from s2e.bench.module import NavBenchDataModule, NavBenchModule
from s2e.bench.onnx_agent import AdapterSpec, OnnxAgent
from s2e.bench.suite import make_suite
from s2e.checkpoint import load_policy_from_checkpoint
from s2e.control import ControllerLimits
from s2e.export import DeployablePolicy, export_policy
from s2e.sim.generator import SceneConfig

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")), reason="the onnx extra is not installed (pip install 's2e[onnx]')"
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = ROOT / "experiments" / "onnx_specs"
IMAGE = 32


@pytest.fixture(scope="module")
def ram_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """A RAM-post-trained checkpoint of the tiny small preset, written as PostTrainModule writes it,
    and its ONNX export made from the checkpoint alone."""
    root = tmp_path_factory.mktemp("ram")
    policy, timing, _ = random_policy("small", seed=1, ram=True, image_size=(IMAGE, IMAGE), **TINY)
    checkpoint = write_policy_checkpoint(root / "posttrain.ckpt", policy, timing)
    loaded, timing, anchors = load_policy_from_checkpoint(checkpoint)
    export_policy(loaded, timing, anchors, root / "export", formats=["onnx"])
    return checkpoint, root / "export"


@pytest.fixture(scope="module")
def short_suite(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Two short straight-street episodes (empty, obstacle) with a tight time limit."""
    scene = replace(SceneConfig(), layouts=("straight",), route_length=(6.0, 7.0))
    suite = make_suite(
        "onnx-short", seed=5, scenes_per_task=1, episodes_per_scene=1, tasks=["empty", "obstacle"], scene=scene, time_limit_factor=1.5, time_limit_slack=2.0
    )
    return suite.save(tmp_path_factory.mktemp("suite") / "short.json")


def _navbench(out: pathlib.Path, suite: pathlib.Path, **model) -> dict:
    module = NavBenchModule(out_dir=str(out), videos=0, plots=0, bootstrap_resamples=100, **model)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=NavBenchDataModule(str(suite), num_envs=2), verbose=False)
    return module.report


def _spec(source: pathlib.Path, folder: pathlib.Path, **changes) -> pathlib.Path:
    """A shipped spec with some fields changed (``frames__size`` sets ``frames.size``), saved in ``folder``."""
    data = yaml.safe_load(source.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = folder / source.name
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_ram_post_trained_checkpoint_exports_to_onnx_that_matches_pytorch(ram_export) -> None:
    checkpoint, folder = ram_export
    policy, timing, _ = load_policy_from_checkpoint(checkpoint)
    assert type(policy.cross_attention).__name__ == "ResidualAttentionModule"
    deployable = DeployablePolicy(policy, timing, ControllerLimits()).eval()
    noise = torch.randint(0, 256, (2, 11, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    assert_onnx_matches(folder, deployable, noise, torch.tensor([[3.0, -1.0], [float("nan"), float("nan")]]))
    assert_onnx_matches(folder, deployable, rendered_sequence(IMAGE, 11), torch.tensor([[7.0, 2.0], [1.0, 0.0]]))


@pytest.mark.slow
@pytest.mark.heavy
def test_the_paper_preset_exports_to_onnx_that_matches_pytorch(tmp_path: pathlib.Path) -> None:
    """The paper preset's structure (11 frames, d_model 384, 6 fusion layers, 2 decoder layers, 64
    anchors) at a small image size, with the CNN frame encoder when timm is missing (the ViT is timm's)."""
    encoder = {} if importlib.util.find_spec("timm") else {"encoder": "cnn"}
    policy, timing, anchors = random_policy("paper", seed=2, image_size=(IMAGE, IMAGE), **encoder)
    export_policy(policy, timing, anchors, tmp_path, formats=["onnx"])
    deployable = DeployablePolicy(policy, timing, ControllerLimits()).eval()
    noise = torch.randint(0, 256, (2, 22, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    assert_onnx_matches(tmp_path, deployable, noise, torch.tensor([[12.0, 3.0], [2.0, -2.0]]))
    assert_onnx_matches(tmp_path, deployable, rendered_sequence(IMAGE, 22), torch.tensor([[7.0, 2.0], [1.0, 0.0]]))


def test_our_spec_runs_our_onnx_export_closed_loop_like_the_pytorch_policy(ram_export, short_suite: pathlib.Path, tmp_path: pathlib.Path) -> None:
    checkpoint, folder = ram_export
    spec = _spec(SPECS / "s2e_export_small.yaml", tmp_path, frames__size=[IMAGE, IMAGE])  # the shipped spec at the tiny export's size
    onnx = _navbench(tmp_path / "onnx", short_suite, agent="onnx", spec=str(spec), policy_path=str(folder / "policy.onnx"))
    torch_run = _navbench(tmp_path / "torch", short_suite, policy_path=str(checkpoint))
    assert onnx["agent"] == "s2e-export-small"
    assert onnx["run"]["adapter"] == {
        "spec": str(spec),
        "spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest(),
        "model": str(folder / "policy.onnx"),
        "model_sha256": onnx["run"]["adapter"]["model_sha256"],
    }
    assert (tmp_path / "onnx" / "report.json").is_file()
    for a, b in zip(onnx["episodes"], torch_run["episodes"], strict=True):
        assert (a["episode_id"], a["success"], a["collisions"]) == (b["episode_id"], b["success"], b["collisions"])
        assert a["route_completion"] == pytest.approx(b["route_completion"], abs=1e-3)
        assert a["path_length"] == pytest.approx(b["path_length"], abs=1e-2)
    assert max(e["path_length"] for e in onnx["episodes"]) > 0.5  # it drove


class StraightBC(nn.Module):
    """A stand-in for the authors' BC model in their format: drives straight at the goal, as the
    ``straight`` baseline plans (wheeled robot, 1.5 m/s, waypoints 0.3 s apart), from the polar goal."""

    def forward(self, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        reach = torch.arange(1, 11, dtype=torch.float32) * 0.3 * 1.5
        along = torch.minimum(reach[None], goal[:, :1] * 200.0)
        return along[..., None] * goal[:, None, 1:3] + 0.0 * images.mean(dim=(1, 2, 3, 4))[:, None, None]


@pytest.fixture(scope="module")
def authors_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("authors") / "s2e_bc.onnx"
    images, goal = torch.zeros(2, 11, 3, 256, 256), torch.tensor([[0.05, 1.0, 0.0]] * 2)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        StraightBC(),
        (images, goal),
        str(path),
        dynamo=True,
        input_names=["images", "goal"],
        output_names=["waypoints"],
        dynamic_shapes={"images": {0: batch}, "goal": {0: batch}},
        external_data=False,
    )
    return path


def test_the_authors_bc_format_runs_closed_loop_through_its_documented_spec(
    authors_model: pathlib.Path, short_suite: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    spec = SPECS / "s2e_authors_bc.yaml"
    parsed = AdapterSpec.load(spec)
    assert (parsed.frames.count, parsed.frames.size, parsed.goal.encoding, parsed.output.layout) == (11, (256, 256), "polar", "waypoints")
    onnx = _navbench(tmp_path / "onnx", short_suite, agent="onnx", spec=str(spec), policy_path=str(authors_model))
    straight = _navbench(tmp_path / "straight", short_suite, agent="straight")
    assert onnx["agent"] == "s2e-authors-bc" and onnx["run"]["image_size"] == [256, 256]
    assert onnx["run"]["adapter"]["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    for a, b in zip(onnx["episodes"], straight["episodes"], strict=True):  # (clip(d)/D, cos, sin) decoded as the baseline sees the goal
        assert (a["success"], a["collisions"]) == (b["success"], b["collisions"])
        assert a["route_completion"] == pytest.approx(b["route_completion"], abs=1e-3)
    assert any(e["success"] for e in onnx["episodes"])


def test_frames_reach_the_graph_normalised_in_the_spec_layout(tmp_path: pathlib.Path) -> None:
    """float32 frames stacked in channels: (rgb / 255 - mean) / std, oldest first."""

    class Probe(nn.Module):  # the oldest frame's red mean and the newest frame's blue mean, as one waypoint
        def forward(self, stacked: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            return torch.stack([stacked[:, 0].mean((1, 2)), stacked[:, -1].mean((1, 2))], -1)[:, None] + 0.0 * goal[:, :1, None]

    path = tmp_path / "probe.onnx"
    torch.onnx.export(
        Probe().eval(),
        (torch.zeros(1, 9, 8, 8), torch.zeros(1, 2)),
        str(path),
        dynamo=True,
        input_names=["context", "goal"],
        output_names=["out"],
        external_data=False,
    )
    spec = AdapterSpec.from_dict(
        {
            "name": "probe",
            "frames": {
                "input": "context",
                "layout": "BCHW_STACKED",
                "size": [8, 8],
                "count": 3,
                "spacing_s": 0.2,
                "dtype": "float32",
                "mean": [0.5, 0.4, 0.3],
                "std": [0.2, 0.25, 0.5],
            },
            "goal": {"input": "goal"},
            "output": {"name": "out", "waypoint_spacing_s": 0.3},
        },
        tmp_path,
    )
    agent = OnnxAgent(spec, path)
    assert agent.chunk == 1  # a graph exported for batch 1 runs env by env
    context = torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8)
    context[:, 0, 0] = 255  # oldest frame: red 255
    context[1, 2, 2] = 51  # newest frame of env 1: blue 51
    out = agent._run(agent._inputs(context, torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0]])))
    np.testing.assert_allclose(out[:, 0], [[(1 - 0.5) / 0.2, (0 - 0.3) / 0.5], [(1 - 0.5) / 0.2, (0.2 - 0.3) / 0.5]], atol=1e-5)


def test_a_spec_that_does_not_fit_its_graph_is_a_clear_error(ram_export, authors_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    _, folder = ram_export
    ours, authors = SPECS / "s2e_export_small.yaml", SPECS / "s2e_authors_bc.yaml"
    model = folder / "policy.onnx"
    cases = [
        (ours, model, {}, r"input 'frames' has shape \['batch', 5, 3, 32, 32\], the spec needs \['B', 5, 3, 64, 64\]"),
        (ours, model, {"frames__size": [IMAGE, IMAGE], "frames__count": 4}, r"the spec needs \['B', 4, 3, 32, 32\]"),
        (ours, model, {"frames__size": [IMAGE, IMAGE], "frames__input": "images"}, r"has no input 'images'; its inputs are \['frames', 'goal'\]"),
        (ours, model, {"frames__size": [IMAGE, IMAGE], "frames__dtype": "float32"}, r"input 'frames' is tensor\(uint8\), the spec says tensor\(float\)"),
        (ours, model, {"frames__size": [IMAGE, IMAGE], "goal__encoding": "polar"}, r"input 'goal' has shape \['batch', 2\], the spec needs \['B', 3\]"),
        (ours, model, {"frames__size": [IMAGE, IMAGE], "output__name": "waypoints"}, r"has no output 'waypoints'; its outputs are \['best_trajectory_m'"),
        (
            ours,
            model,
            {"frames__size": [IMAGE, IMAGE], "output__layout": "command"},
            r"output 'best_trajectory_m' has shape \['batch', 10, 2\], the spec needs \['B', 2\]",
        ),
        (authors, authors_model, {"goal__input": "target"}, r"has no input 'target'; its inputs are \['goal', 'images'\]"),
    ]
    for i, (source, onnx, changes, message) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(ValueError, match=message):
            OnnxAgent(AdapterSpec.load(_spec(source, tmp_path / str(i), **changes)), onnx)
    with pytest.raises(ValueError, match=r"goal.encoding must be one of \['xy', 'polar'\], got 'bearing'"):
        AdapterSpec.load(_spec(ours, tmp_path, goal__encoding="bearing"))
    with pytest.raises(ValueError, match=r"unknown FramesSpec fields \['fps'\]"):
        AdapterSpec.load(_spec(ours, tmp_path, frames={**yaml.safe_load(ours.read_text())["frames"], "fps": 5}))
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxAgent.from_spec(ours, tmp_path / "missing.onnx")
