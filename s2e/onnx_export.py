"""ONNX graphs of a :class:`s2e.export.DeployablePolicy` (``python -m s2e export --formats onnx``).

Three self-contained graphs (weights inside, batch dimension dynamic), for runtimes that have no
torch (onnxruntime, TensorRT, OpenVINO, ...):

* ``policy.onnx``: the full window, ``frames`` uint8 [B, k, 3, H, W] + ``goal`` [B, 2] -> the four
  outputs of :data:`s2e.export.OUTPUTS`, as ``DeployablePolicy.forward``;
* ``policy_encoder.onnx``: ``frame`` uint8 [B, 3, H, W] -> ``frame_feature`` [B, D], the newest frame
  of a streaming step;
* ``policy_decoder.onnx``: ``frame_features`` [B, k, D] (oldest first, frame_dt apart) + ``goal`` ->
  the four outputs.

ONNX graphs hold no state, so the streaming step's feature cache lives in the caller
(:class:`s2e.onnx_runtime.OnnxStreamingPolicy`); the encoder and decoder are the very functions
``DeployablePolicy.step`` composes, so encoder + decoder on cached features equals the full window.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch
from torch import Tensor, nn

from s2e.export import OUTPUTS, DeployablePolicy, quiet_export_warnings
from s2e.export_meta import ONNX_DECODER_FILE, ONNX_ENCODER_FILE, ONNX_FILE
from s2e.onnx_runtime import EXTRA_HINT

OPSET = 18
#: Upstream loggers that report exporter internals (skipped torchvision ops, constant folding) as warnings.
_CHATTY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def missing_export_modules() -> list[str]:
    """The modules ONNX export needs that are not installed (``[]`` when it can run)."""
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


def require_onnx_export() -> None:
    """Raise ImportError naming what to install when ONNX export cannot run."""
    missing = missing_export_modules()
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}, which are not installed: {EXTRA_HINT}")


class FrameEncoderGraph(nn.Module):
    """The newest frame of a streaming step: uint8 [B, 3, H, W] -> its feature [B, D]."""

    def __init__(self, deployable: DeployablePolicy) -> None:
        super().__init__()
        self.deployable = deployable

    def forward(self, frame: Tensor) -> Tensor:
        self.deployable._check_frames(frame, 4)
        return self.deployable.policy.encode_frames(frame[:, None])[:, 0]


class DecoderGraph(nn.Module):
    """Cached per-frame features [B, k, D] + goal [B, 2] -> the outputs of ``DeployablePolicy``."""

    def __init__(self, deployable: DeployablePolicy) -> None:
        super().__init__()
        self.deployable = deployable

    def forward(self, frame_features: Tensor, goal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.deployable._decode(frame_features, goal)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Upstream warnings about exporter internals (not about this model) stay out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with quiet_export_warnings(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_graph(module: nn.Module, args: tuple[Tensor, ...], inputs: tuple[str, ...], outputs: tuple[str, ...], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_shapes={name: {0: batch} for name in inputs},
            external_data=False,
            verbose=False,
        )


def graph_signature(path: Union[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file as written: name, numpy dtype, shape (a str for a dynamic dim)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}

    return {"inputs": [describe(v) for v in graph.input], "outputs": [describe(v) for v in graph.output]}


def export_onnx(deployable: DeployablePolicy, out_dir: Union[str, Path], example_batch: int = 2) -> dict[str, Any]:
    """Write the three graphs of the module docstring into ``out_dir``; returns the ``onnx`` section of
    policy.json (opset, and per file its inputs and outputs as written). The example batch is 2
    because export specializes a size-1 example dimension to the constant 1."""
    require_onnx_export()
    out = Path(out_dir)
    deployable = deployable.eval()
    k, h, w = deployable.context_frames, deployable.image_height, deployable.image_width
    frames = torch.zeros(example_batch, k, 3, h, w, dtype=torch.uint8)
    goal = torch.zeros(example_batch, 2)
    with torch.no_grad():
        features = deployable.policy.encode_frames(frames)
    graphs = (
        (ONNX_FILE, deployable, (frames, goal), ("frames", "goal")),
        (ONNX_ENCODER_FILE, FrameEncoderGraph(deployable).eval(), (frames[:, -1],), ("frame",)),
        (ONNX_DECODER_FILE, DecoderGraph(deployable).eval(), (features, goal), ("frame_features", "goal")),
    )
    files: dict[str, Any] = {}
    for name, module, args, inputs in graphs:
        outputs = ("frame_feature",) if name == ONNX_ENCODER_FILE else OUTPUTS
        _export_graph(module, args, inputs, outputs, out / name)
        files[name] = graph_signature(out / name)
    return {
        "opset": OPSET,
        "graphs": files,
        "streaming": "per control step: policy_encoder.onnx on the newest frame, keep the last cache_length features "
        "(the first one standing in for missing older ones), policy_decoder.onnx on every stride-th of them",
    }
