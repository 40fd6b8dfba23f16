"""Export a trained policy for robots: ``policy.ts`` (TorchScript), ``policy.pt2`` (torch.export),
the ONNX graphs of :mod:`s2e.onnx_export` and ``policy.json`` (formats and files, timing, image size,
anchors, controller limits, versions, ONNX input/output specs, hashes of the files and of itself;
see :mod:`s2e.export_meta`).

:class:`DeployablePolicy` is the whole robot-side contract in one module, so the exported files
run from plain ``torch`` (or libtorch) without this package: raw uint8 frames and a goal in, the
best trajectory in metres, every mode with its probability and the shared controller's (v, omega)
out. Its streaming entry point ``step`` keeps per-frame features in a registered buffer, so each
control step encodes only the newest frame.
"""

from __future__ import annotations

import importlib.metadata
import platform
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from s2e.anchors import Anchors
from s2e.control import ControllerLimits, waypoints_to_command
from s2e.export_meta import (  # noqa: F401  (read_export_metadata and JSON_FILE: re-exported for existing callers)
    FORMAT_FILES,
    FORMAT_VERSION,
    JSON_FILE,
    ONNX_DECODER_FILE,
    ONNX_ENCODER_FILE,
    ONNX_FILE,
    PT2_FILE,
    TS_FILE,
    read_export_metadata,
    write_export_metadata,
)
from s2e.frame_ring import ring_window, window_length
from s2e.geometry import goal_encoding
from s2e.model.policy import S2EPolicy, best_trajectory_metres, modes_metres
from s2e.timing import TimingSpec

#: Output names, in the order both entry points return them.
OUTPUTS = ("best_trajectory_m", "modes_m", "mode_probs", "command")


class DeployablePolicy(nn.Module):
    """The policy + the controller + the timing constants, with a robot-facing interface.

    Inputs: ``frames`` uint8 [B, k, 3, H, W] RGB (oldest first, ``frame_dt`` apart) and ``goal``
    [B, 2], the goal's (x, y) in metres in the robot frame (+x forward, +y left); a row with a
    non-finite goal (NaN) means "no goal" and uses the policy's null goal token.

    Outputs (a tuple, in :data:`OUTPUTS` order): best trajectory [B, T, 2] m, all modes [B, M, T, 2] m,
    mode probabilities [B, M], command [B, 2] = (v m/s, omega rad/s).

    ``step(frame [B, 3, H, W], goal)`` is the streaming form, called once per control period: it
    encodes only ``frame``, keeps the last ``(k - 1) * stride + 1`` per-frame features in a ring
    (:mod:`s2e.frame_ring`, ``stride`` = ``TimingSpec.frame_stride``) and decodes from every
    ``stride``-th of them, which equals ``forward`` on the same frames. Until the cache
    holds that many frames, the first frame's features stand in for the missing older ones (the
    runtime in :mod:`s2e.deploy` sends no motion command before the window is full). ``reset()``
    empties the cache (a new episode, or after stale frames); a change of batch size restarts it too.
    """

    def __init__(self, policy: S2EPolicy, timing: TimingSpec, limits: ControllerLimits) -> None:
        super().__init__()
        config = policy.config
        self.policy = policy.eval()
        self.context_frames = int(config.context_frames)
        self.image_height = int(config.image_size[0])
        self.image_width = int(config.image_size[1])
        self.waypoint_dt = float(timing.waypoint_dt)
        self.max_speed = float(limits.max_speed)
        self.max_yaw_rate = float(limits.max_yaw_rate)
        self.lookahead_time = float(limits.lookahead_time)
        self.stride = timing.frame_stride
        self.cache_length = window_length(self.context_frames, self.stride)
        self.register_buffer("feature_cache", torch.zeros(0, self.cache_length, config.d_model), persistent=False)
        self.register_buffer("cached_frames", torch.zeros((), dtype=torch.long), persistent=False)

    def _check_frames(self, frames: Tensor, expected_dim: int) -> None:
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        if frames.dim() != expected_dim or frames.shape[-3] != 3 or frames.shape[-2] != self.image_height or frames.shape[-1] != self.image_width:
            raise ValueError(f"frames must be [B{', k' if expected_dim == 5 else ''}, 3, {self.image_height}, {self.image_width}], got {list(frames.shape)}")

    def _goal_inputs(self, goal: Tensor, batch: int) -> Tuple[Tensor, Tensor]:
        if goal.dim() != 2 or goal.shape[0] != batch or goal.shape[1] != 2:
            raise ValueError(f"goal must be [B, 2] (x, y) metres in the robot frame with B={batch}, got {list(goal.shape)}")
        goal = goal.float()
        given = torch.isfinite(goal).all(dim=-1)
        return goal_encoding(torch.where(given[:, None], goal, torch.zeros_like(goal))), given

    def _decode(self, features: Tensor, goal: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        encoded, given = self._goal_inputs(goal, features.shape[0])
        out = self.policy.decode_from_features(features, encoded, given)
        modes = modes_metres(out)
        probs = torch.softmax(out["scores"], dim=-1)
        best = best_trajectory_metres(out)
        command = waypoints_to_command(best, self.waypoint_dt, self.max_speed, self.max_yaw_rate, self.lookahead_time)
        return best, modes, probs, command

    def forward(self, frames: Tensor, goal: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Full window: frames uint8 [B, k, 3, H, W], goal [B, 2] -> the outputs of the class docstring."""
        self._check_frames(frames, 5)
        if frames.shape[1] != self.context_frames:
            raise ValueError(f"expected {self.context_frames} context frames, got {frames.shape[1]}")
        return self._decode(self.policy.encode_frames(frames), goal)

    @torch.jit.export
    def step(self, frame: Tensor, goal: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Streaming: the newest frame uint8 [B, 3, H, W] (one call per control period) + goal."""
        self._check_frames(frame, 4)
        feature = self.policy.encode_frames(frame[:, None])  # [B, 1, D]
        if self.feature_cache.shape[0] != feature.shape[0] or int(self.cached_frames) == 0:  # a new episode
            self.feature_cache = feature.expand(feature.shape[0], self.cache_length, feature.shape[2]).clone()
            self.cached_frames = torch.zeros((), dtype=torch.long)
        newest = int(self.cached_frames) % self.cache_length
        self.feature_cache[:, newest] = feature[:, 0]
        self.cached_frames = self.cached_frames + 1
        return self._decode(ring_window(self.feature_cache, newest, self.context_frames, self.stride), goal)

    @torch.jit.export
    def window_full(self) -> bool:
        """True once ``step`` has seen enough frames that its output no longer uses stand-ins."""
        return int(self.cached_frames) >= self.cache_length

    @torch.jit.export
    def reset(self) -> None:
        self.feature_cache = torch.zeros(0, self.cache_length, self.feature_cache.shape[2])
        self.cached_frames = torch.zeros((), dtype=torch.long)


@contextmanager
def quiet_export_warnings() -> Iterator[None]:
    """Silence upstream deprecation chatter of the export APIs (``torch.jit.script`` is deprecated in
    favour of torch.export, which we also write; TorchScript stays because only it carries the
    stateful streaming method and loads from libtorch). Other warnings still reach the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|save|load|trace).* deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.(jit|export|_export)")
        # TorchScript's note on nn.MultiheadAttention/TransformerEncoderLayer internals, not our code
        warnings.filterwarnings("ignore", message=r".* was found in ScriptModule constants", category=UserWarning)
        yield


def script_policy(deployable: DeployablePolicy) -> torch.jit.ScriptModule:
    with quiet_export_warnings():
        return torch.jit.script(deployable)


def export_program(deployable: DeployablePolicy, example_batch: int = 2) -> "torch.export.ExportedProgram":
    """torch.export of the full-window forward, batch dimension dynamic (the example batch is 2
    because export specializes a size-1 example dimension to the constant 1)."""
    frames = torch.zeros(example_batch, deployable.context_frames, 3, deployable.image_height, deployable.image_width, dtype=torch.uint8)
    goal = torch.zeros(example_batch, 2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with quiet_export_warnings(), torch.no_grad():
        return torch.export.export(deployable, (frames, goal), dynamic_shapes={"frames": {0: batch}, "goal": {0: batch}})


def default_formats() -> tuple[str, ...]:
    """TorchScript and torch.export always; ONNX too when its exporter (the ``onnx`` extra) is installed."""
    from s2e.onnx_export import missing_export_modules

    return ("ts", "pt2") if missing_export_modules() else ("ts", "pt2", "onnx")


def export_policy(
    policy: S2EPolicy,
    timing: TimingSpec,
    anchors: Anchors,
    out_dir: Union[str, Path],
    limits: ControllerLimits = ControllerLimits(),
    source: Optional[str] = None,
    formats: Sequence[str] = ("ts", "pt2"),
) -> dict[str, Any]:
    """Write the files of ``formats`` (``ts``, ``pt2``, ``onnx``) and policy.json into ``out_dir``;
    returns the JSON written. A format that cannot be written (ONNX without its extra) is refused
    before any file is written. ``python -m s2e export`` passes :func:`default_formats` (ONNX too
    when the extra is installed); Python callers name what they need (ONNX adds seconds to an
    export, docs/experiments.md)."""
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMAT_FILES]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown}; choose one or more of {list(FORMAT_FILES)}")
    if "onnx" in formats:
        from s2e.onnx_export import export_onnx, require_onnx_export

        require_onnx_export()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deployable = DeployablePolicy(policy, timing, limits).eval()
    versions: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "s2e_export_format": FORMAT_VERSION}
    if "ts" in formats:
        script_policy(deployable).save(str(out / TS_FILE))
    if "pt2" in formats:
        torch.export.save(export_program(deployable), str(out / PT2_FILE))
    onnx_section = None
    if "onnx" in formats:
        onnx_section = export_onnx(deployable, out)
        versions.update({name: importlib.metadata.version(name) for name in ("onnx", "onnxscript")})
    config = policy.config
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source_checkpoint": source,
        "formats": {f: list(FORMAT_FILES[f]) for f in formats},
        "timing": timing.to_dict(),
        "image_size": list(config.image_size),
        "input": {
            "frames": "uint8 RGB [B, k, 3, H, W], oldest first, frame_dt apart",
            "goal": "float [B, 2] goal (x, y) metres in the robot frame (+x forward, +y left); NaN row = no goal",
        },
        "outputs": list(OUTPUTS),
        "streaming": {
            "entry_points": {
                TS_FILE: ["forward", "step", "reset", "window_full"],
                PT2_FILE: ["forward"],
                ONNX_FILE: ["forward"],
                ONNX_ENCODER_FILE: ["newest frame of a step"],
                ONNX_DECODER_FILE: ["cached features of a step"],
            },
            "note": "step() is stateful and exists only in policy.ts; policy.pt2 and policy.onnx hold the full-window forward; "
            "the ONNX encoder + decoder are the stateless halves of step() (the caller keeps the feature cache).",
            "step_period_s": timing.control_dt,
            "stride": deployable.stride,
            "cache_length": deployable.cache_length,
        },
        "controller": {"name": "pure_pursuit", **limits.to_dict()},
        "policy_config": config.to_dict(),
        "anchors": {
            "units": "normalized: a mode in metres is its mean times its predicted scale (metres per step)",
            "num_anchors": anchors.num_anchors,
            "points": anchors.points.tolist(),
            "trajectories": anchors.trajectories.tolist(),
        },
        "versions": versions,
    }
    if onnx_section is not None:
        meta["onnx"] = onnx_section
    return write_export_metadata(out, meta, [name for f in formats for name in FORMAT_FILES[f]])
