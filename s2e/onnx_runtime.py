"""An ONNX export run with onnxruntime alone: no torch is imported on this path.

:class:`OnnxStreamingPolicy` is ``DeployablePolicy.step`` for the stateless ONNX graphs of
:mod:`s2e.onnx_export`: ``policy_encoder.onnx`` encodes the newest frame, a numpy ring keeps the
last ``cache_length`` frame features (the first frame's feature standing in for older ones until
the ring is full, as in ``step``), and ``policy_decoder.onnx`` decodes every ``stride``-th of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from s2e.export_meta import ONNX_DECODER_FILE, ONNX_ENCODER_FILE

EXTRA_HINT = "pip install 's2e[onnx]' (or: pip install onnx onnxscript onnxruntime)"


def require_onnxruntime() -> Any:
    """The onnxruntime module, or an ImportError that says what to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"running an ONNX export needs onnxruntime, which is not installed: {EXTRA_HINT}") from err
    return onnxruntime


def make_session(path: Union[str, Path], threads: Optional[int] = None) -> Any:
    """A CPU ``InferenceSession``; ``threads`` caps its intra-op threads (robots share their CPU) and
    runs operators one at a time, so the process uses at most that many cores."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStreamingPolicy:
    """Streaming steps of an export folder's ONNX encoder and decoder (see the module docstring).

    Args:
        folder: the export folder (verified by the caller).
        stride, cache_length: policy.json's ``streaming`` entries (``DeployablePolicy``'s).
        threads: intra-op threads of each session.
    """

    def __init__(self, folder: Union[str, Path], stride: int, cache_length: int, threads: Optional[int] = None) -> None:
        folder = Path(folder)
        self.encoder = make_session(folder / ONNX_ENCODER_FILE, threads)
        self.decoder = make_session(folder / ONNX_DECODER_FILE, threads)
        self.stride = int(stride)
        self.cache_length = int(cache_length)
        self.cache: Optional[np.ndarray] = None  # [B, cache_length, D]
        self.cached_frames = 0

    def step(self, frame: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, ...]:
        """frame uint8 [B, 3, H, W], goal float32 [B, 2] -> (best [B, T, 2], modes, probs, command)."""
        (feature,) = self.encoder.run(None, {"frame": frame})
        if self.cache is None or self.cache.shape[0] != feature.shape[0] or self.cached_frames == 0:
            self.cache = np.repeat(feature[:, None], self.cache_length, axis=1)
            self.cached_frames = 1
        else:
            self.cache = np.concatenate([self.cache[:, 1:], feature[:, None]], axis=1)
            self.cached_frames += 1
        return tuple(self.decoder.run(None, {"frame_features": np.ascontiguousarray(self.cache[:, :: self.stride]), "goal": goal}))

    def window_full(self) -> bool:
        return self.cached_frames >= self.cache_length

    def reset(self) -> None:
        self.cache, self.cached_frames = None, 0
