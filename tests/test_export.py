"""``python -m s2e export`` on a real trained checkpoint: files, parity in a torch-only process and
on ONNX Runtime, streaming == full window, the integrity check of policy.json, input errors."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_pretrain import IMAGE, _module, _trainer, demo_datamodule, fit_demo_anchors, write_demo_shards

from s2e.checkpoint import load_policy_from_checkpoint
from s2e.cli import main as cli_main
from s2e.control import ControllerLimits, command_from_limits
from s2e.export import DeployablePolicy, read_export_metadata, script_policy
from s2e.export_meta import FORMAT_FILES, metadata_digest
from s2e.geometry import goal_encoding
from s2e.model.policy import best_trajectory_metres

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed (pip install 's2e[onnx]')")

#: Run in a fresh interpreter in isolated mode (-I: no PYTHONPATH, no cwd on sys.path), as on a
#: robot that has torch but not this package.
TORCH_ONLY_SCRIPT = r"""
import sys, torch
folder, inputs, result = sys.argv[1:4]
data = torch.load(inputs, weights_only=True)
ts = torch.jit.load(folder + "/policy.ts")
pt2 = torch.export.load(folder + "/policy.pt2").module()
with torch.no_grad():
    out = {"ts": list(ts(data["frames"], data["goal"])), "pt2": list(pt2(data["frames"], data["goal"]))}
    out["ts_step"] = [list(ts.step(frame, data["goal"])) for frame in data["stream"]]
assert not any(name == "s2e" or name.startswith("s2e.") for name in sys.modules), "s2e was imported"
torch.save(out, result)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("export_demo")
    shards = write_demo_shards(root, num_episodes=3)
    anchors = fit_demo_anchors(shards, root / "anchors.npz", num_anchors=3)
    trainer = _trainer(root, max_steps=2, callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(_module(anchors), datamodule=demo_datamodule(shards))
    return root / "ckpt" / "last.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoint: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("export") / "policy"
    command = [sys.executable, "-W", "error::DeprecationWarning", "-m", "s2e", "export", "--config", str(ROOT / "experiments" / "export.yaml")]
    command += ["--ckpt_path", str(checkpoint), "--out", str(out), "--max_speed", "0.9"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deprecated" not in result.stderr.lower(), result.stderr  # upstream chatter is handled
    return out


def _deployable(checkpoint: pathlib.Path, limits: ControllerLimits) -> DeployablePolicy:
    policy, timing, _ = load_policy_from_checkpoint(checkpoint)
    return DeployablePolicy(policy, timing, limits).eval()


def test_the_export_drives_with_the_goal_encoding_best_mode_and_controller_of_the_benchmark(checkpoint: pathlib.Path) -> None:
    """The robot-side contract reuses the shared pieces: the policy on ``goal_encoding`` of the goal, its
    best mode (``best_trajectory_metres``) and the shared controller give the export's outputs."""
    policy, timing, _ = load_policy_from_checkpoint(checkpoint)
    limits = ControllerLimits(max_speed=0.9, max_yaw_rate=0.7)
    deployable = DeployablePolicy(policy, timing, limits).eval()
    frames = torch.randint(0, 256, (2, timing.context_frames, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    goal = torch.tensor([[4.0, 1.0], [-2.0, 3.0]])
    with torch.no_grad():
        best, _, _, command = deployable(frames, goal)
        expected = best_trajectory_metres(policy(frames, goal_encoding(goal)))
    torch.testing.assert_close(best, expected)
    torch.testing.assert_close(command, command_from_limits(expected, timing.waypoint_dt, limits))


def test_export_writes_hashed_files_and_metadata_from_the_checkpoint_alone(exported: pathlib.Path, tmp_path: pathlib.Path) -> None:
    meta = read_export_metadata(exported)
    formats = ["ts", "pt2", "onnx"] if HAS_ONNX else ["ts", "pt2"]  # ONNX by default when the extra is installed
    assert list(meta["formats"]) == formats and set(meta["sha256"]) == {f for fmt in formats for f in FORMAT_FILES[fmt]}
    assert {p.name for p in exported.iterdir()} == {"policy.json", *meta["sha256"]}
    assert meta["timing"]["context_frames"] == 5 and meta["image_size"] == [IMAGE, IMAGE]
    assert meta["controller"] == {"name": "pure_pursuit", "max_speed": 0.9, "max_yaw_rate": 1.5, "lookahead_time": 0.6}
    assert len(meta["anchors"]["trajectories"]) == meta["anchors"]["num_anchors"] == 3
    assert meta["streaming"]["stride"] == 2 and meta["streaming"]["cache_length"] == 9
    assert meta["versions"]["torch"] == torch.__version__
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "policy.pt2", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ValueError, match="policy.pt2 does not match the sha256"):
        read_export_metadata(copy)


def test_eager_torchscript_and_pt2_agree_in_a_torch_only_process(checkpoint: pathlib.Path, exported: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = exported
    deployable = _deployable(checkpoint, ControllerLimits(max_speed=0.9))
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 5, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)
    goal = torch.tensor([[4.0, 1.0], [2.0, -3.0], [float("nan"), float("nan")]])
    stream = [frames[:, i] for i in range(5)]
    torch.save({"frames": frames, "goal": goal, "stream": stream}, tmp_path / "inputs.pt")
    result = subprocess.run(
        [sys.executable, "-I", "-c", TORCH_ONLY_SCRIPT, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        eager = deployable(frames, goal)
        eager_stream = [deployable.step(frame, goal) for frame in stream]
    for name in ("ts", "pt2"):
        for got, want in zip(loaded[name], eager):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got_step, want_step in zip(loaded["ts_step"], eager_stream):
        for got, want in zip(got_step, want_step):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    best, modes, probs, command = eager
    assert best.shape == (3, 10, 2) and modes.shape == (3, 3, 10, 2) and command.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert torch.isfinite(command).all() and (command[:, 0] <= 0.9).all()


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "torchscript"])
def test_streaming_equals_the_full_window_over_a_sequence(checkpoint: pathlib.Path, scripted: bool) -> None:
    deployable = _deployable(checkpoint, ControllerLimits())
    module = script_policy(deployable) if scripted else deployable
    generator = torch.Generator().manual_seed(1)
    sequence = torch.randint(0, 256, (2, 14, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)  # one frame per control step
    goal = torch.tensor([[5.0, 0.5], [1.0, 2.0]])
    stride, cache = deployable.stride, deployable.cache_length
    with torch.no_grad():
        for t in range(sequence.shape[1]):
            streamed = module.step(sequence[:, t], goal)
            # the window the policy should see: k frames frame_dt apart ending now; before the cache is
            # full the first frame stands in for the older ones
            times = [max(0, t - j * stride) for j in reversed(range(deployable.context_frames))]
            full = module(sequence[:, times], goal)
            for got, want in zip(streamed, full):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            assert module.window_full() == (t + 1 >= cache)
        module.reset()
        assert not module.window_full()
        restarted = module.step(sequence[:, 7], goal)
        torch.testing.assert_close(restarted[0], module(sequence[:, [7] * 5], goal)[0], rtol=1e-4, atol=1e-5)


def test_a_nan_goal_means_no_goal(checkpoint: pathlib.Path) -> None:
    deployable = _deployable(checkpoint, ControllerLimits())
    frames = torch.randint(0, 256, (2, 5, 3, IMAGE, IMAGE), dtype=torch.uint8)
    with torch.no_grad():
        best = deployable(frames, torch.tensor([[float("nan"), 0.0], [3.0, 0.0]]))[0]
        reference = deployable.policy(frames, torch.tensor([[0.0, 1.0, 0.0], [3.0, 1.0, 0.0]]), torch.tensor([False, True]))
    torch.testing.assert_close(best[0], reference["mean"][0, reference["scores"][0].argmax()] * reference["scale"][0, reference["scores"][0].argmax()])


def test_wrong_inputs_are_clear_errors_in_eager_and_torchscript(checkpoint: pathlib.Path) -> None:
    deployable = _deployable(checkpoint, ControllerLimits())
    scripted = script_policy(deployable)
    frames = torch.zeros(1, 5, 3, IMAGE, IMAGE, dtype=torch.uint8)
    goal = torch.zeros(1, 2)
    for module, error in ((deployable, ValueError), (scripted, torch.jit.Error)):
        with pytest.raises(error, match="uint8"):
            module(frames.float(), goal)
        with pytest.raises(error, match=r"\[B, k, 3, 32, 32\]"):
            module(frames[..., :16], goal)
        with pytest.raises(error, match="expected 5 context frames"):
            module(frames[:, :3], goal)
        with pytest.raises(error, match=r"goal must be \[B, 2\]"):
            module(frames, torch.zeros(1, 3))
        with pytest.raises(error, match=r"\[B, 3, 32, 32\]"):
            module.step(frames, goal)


@needs_onnx
def test_onnx_graphs_have_named_io_dynamic_batch_and_match_pytorch(checkpoint: pathlib.Path, exported: pathlib.Path) -> None:
    from onnx_helpers import assert_onnx_matches, rendered_sequence

    meta = read_export_metadata(exported)
    graphs = meta["onnx"]["graphs"]
    assert meta["onnx"]["opset"] >= 17 and meta["versions"]["onnx"]
    assert [v["name"] for v in graphs["policy.onnx"]["inputs"]] == ["frames", "goal"]
    assert graphs["policy.onnx"]["inputs"][0] == {"name": "frames", "dtype": "uint8", "shape": ["batch", 5, 3, IMAGE, IMAGE]}
    assert [v["name"] for v in graphs["policy_encoder.onnx"]["inputs"]] == ["frame"]
    assert [v["name"] for v in graphs["policy_decoder.onnx"]["inputs"]] == ["frame_features", "goal"]
    for name in ("policy.onnx", "policy_decoder.onnx"):
        assert [v["name"] for v in graphs[name]["outputs"]] == ["best_trajectory_m", "modes_m", "mode_probs", "command"]
        assert graphs[name]["outputs"][1]["shape"] == ["batch", 3, 10, 2]
    deployable = _deployable(checkpoint, ControllerLimits(max_speed=0.9))
    generator = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (3, 12, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)
    assert_onnx_matches(exported, deployable, noise, torch.tensor([[4.0, 1.0], [2.0, -3.0], [float("nan"), float("nan")]]))
    assert_onnx_matches(exported, deployable, rendered_sequence(IMAGE, 12), torch.tensor([[9.0, 0.5], [0.0, 0.0]]))


def _rewrite(folder: pathlib.Path, edit, rehash: bool) -> None:
    path = folder / "policy.json"
    meta = json.loads(path.read_text())
    edit(meta)
    if rehash:
        meta["metadata_sha256"] = metadata_digest(meta)
    path.write_text(json.dumps(meta))


def test_policy_json_is_covered_by_the_integrity_check(exported: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Issue 16, item 6: edited timing was used silently and ``"sha256": {}`` let a swapped policy.ts load."""
    table = read_export_metadata(exported)["sha256"]

    def copy(name: str) -> pathlib.Path:
        shutil.copytree(exported, tmp_path / name)
        return tmp_path / name

    edited = copy("edited")
    _rewrite(edited, lambda m: m["timing"].update(control_dt=0.05), rehash=False)
    with pytest.raises(ValueError, match="does not match its metadata_sha256"):
        read_export_metadata(edited)
    swapped = copy("swapped")
    (swapped / "policy.ts").write_bytes((swapped / "policy.pt2").read_bytes())
    _rewrite(swapped, lambda m: m.update(sha256={}), rehash=False)
    with pytest.raises(ValueError, match="does not match its metadata_sha256"):
        read_export_metadata(swapped)
    _rewrite(swapped, lambda m: None, rehash=True)  # an emptied table with a matching metadata hash
    with pytest.raises(ValueError, match="has no file hash table"):
        read_export_metadata(swapped)
    _rewrite(swapped, lambda m: m.update(sha256={"policy.pt2": table["policy.pt2"]}), rehash=True)  # policy.ts left out
    with pytest.raises(ValueError, match=r"lists files without a sha256 \(\[.*'policy.ts'"):
        read_export_metadata(swapped)
    unhashed = copy("unhashed")
    _rewrite(unhashed, lambda m: m.pop("metadata_sha256"), rehash=False)
    with pytest.raises(ValueError, match="has no 'metadata_sha256'"):
        read_export_metadata(unhashed)
    assert read_export_metadata(exported)["timing"]["control_dt"] == 0.1  # the untouched export still loads


def test_a_file_that_is_no_checkpoint_is_named_without_suggesting_unsafe_loading(
    checkpoint: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 16, item 16: torch's 'Re-running with weights_only=False will likely succeed' reached the user."""
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "step": Fraction(1, 3)}, foreign)  # an object a weights-only load refuses
    expected = {truncated: "is not a PyTorch checkpoint", noise: "is not a PyTorch checkpoint", foreign: "holds objects other than tensors"}
    for path, message in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", "--ckpt_path", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and str(path) in err and message in err, err
        assert "PretrainModule or PostTrainModule" in err and "weights_only" not in err
    assert not (tmp_path / "o").exists()


def test_onnx_export_without_its_extra_says_what_to_install(
    checkpoint: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s2e.export import default_formats

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert default_formats() == ("ts", "pt2")
    with pytest.raises(SystemExit):
        cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(tmp_path / "o"), "--formats", "onnx"])
    err = capsys.readouterr().err
    assert "ONNX export needs onnxscript" in err and "pip install 's2e[onnx]'" in err
    assert not (tmp_path / "o").exists()


def test_missing_or_foreign_checkpoint_is_a_clear_cli_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        cli_main(["export", "--ckpt_path", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "o")])
    assert "is not an S2E policy checkpoint" in capsys.readouterr().err
    bad_limits = tmp_path / "limits.yaml"
    bad_limits.write_text("export:\n  max_sped: 2.0\n")
    with pytest.raises(SystemExit):
        cli_main(["export", "--config", str(bad_limits), "--ckpt_path", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "o")])
    assert "unknown ControllerLimits fields ['max_sped']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
