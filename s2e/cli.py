"""``python -m s2e fit|validate|test|predict --config ...``: the project's LightningCLI.

The model and data classes are chosen by the config (``class_path``), so pretraining, RL
post-training and the benchmark all run through this one entry point. A fixed default seed makes
runs repeatable; the resolved config is saved next to the logs.

``python -m s2e export --ckpt_path CKPT --out DIR [--config CFG] [--formats ts pt2 onnx]`` is
dispatched before LightningCLI: an export needs no Trainer, model or data config, since the
checkpoint alone rebuilds the policy (see :func:`export_main`).

Checkpoints are read through :mod:`s2e.checkpoint` (``weights_only=True`` only; a file that is no
checkpoint is named with what was expected), and ``--ckpt_path`` of another training stage than
the configured model (a post-training checkpoint given to ``fit`` with the pretraining config) is
refused: Lightning would otherwise switch the model class to the checkpoint's and fail later with
errors that do not say why (:func:`s2e.checkpoint.checkpoint_stage`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from s2e.checkpoint import POSTTRAIN_CLASS, PRETRAIN_CLASS, checkpoint_stage, load_policy_from_checkpoint, read_checkpoint

DEFAULT_SEED = 1234
#: What each training stage's LightningModule is, for error messages.
STAGES = {PRETRAIN_CLASS: "pretraining", POSTTRAIN_CLASS: "RL post-training"}


def _stage(class_path: str) -> str:
    return f"{class_path} ({STAGES.get(class_path, 'another model')})"


def stage_mismatch(path: str | Path, written_by: Optional[str], configured: Optional[str], subcommand: str) -> Optional[str]:
    """The error for ``--ckpt_path`` of another stage than the configured model, or None if they agree."""
    if written_by is None or configured is None or written_by == configured:
        return None
    return (
        f"--ckpt_path {path} was written by {_stage(written_by)}, but this `{subcommand}` configures {_stage(configured)}: "
        "--ckpt_path resumes or evaluates the same stage only. To post-train a pretrained checkpoint use "
        "--config experiments/posttrain.yaml --model.init_args.pretrained CKPT; to benchmark any policy checkpoint use "
        "`python -m s2e test --config experiments/navbench.yaml --ckpt_path CKPT`"
    )


class S2ECLI(LightningCLI):
    """LightningCLI with subclass-mode model and data and a fixed default seed."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"epilog": "export: python -m s2e export --help (TorchScript / torch.export of a checkpoint)"})
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )

    def _resolve_last_checkpoint(self) -> None:
        """``--ckpt_path last`` resumes the newest ``last.ckpt`` of any earlier run of this experiment.

        Lightning alone looks for it only in the new run's own checkpoint folder, which a logger
        gives a fresh version number, so a restarted job would silently train from scratch.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            found = find_last_checkpoint(self.trainer)
            if found is not None:
                config["ckpt_path"] = str(found)

    before_fit = before_validate = before_test = before_predict = _resolve_last_checkpoint

    def instantiate_classes(self) -> None:
        """A model or data ``__init__`` refusing its input (a missing shard, a bad anchors file) is a
        usage error: one line naming the file, not jsonargparse's dump of every Union subtype.

        jsonargparse wraps the ValueError / OSError in its own ValueError and chains the original as
        ``__cause__``; anything else is re-raised untouched.
        """
        try:
            super().instantiate_classes()
        except ValueError as err:
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            if root is err or not isinstance(root, (OSError, ValueError)):
                raise
            self.parser.error(str(root))

    def _parse_ckpt_path(self) -> None:
        """Merge a checkpoint's hyper-parameters into the model config, unless the model only reads policies.

        Lightning assumes ``--ckpt_path`` was written by the configured model class. The benchmark
        (``reads_policy_checkpoints = True``) is handed checkpoints that pretraining or post-training
        wrote, whose hyper-parameters belong to another class and would fail the config parse. For
        every other model, a checkpoint of another class (stage) is a usage error, and so is a file
        that is no checkpoint.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if getattr(model_class_of(config), "reads_policy_checkpoints", False):
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            try:
                written_by = checkpoint_stage(read_checkpoint(ckpt_path, mmap=True))
            except ValueError as err:
                self.parser.error(str(err))
            model = config.get("model") or {}
            error = stage_mismatch(ckpt_path, written_by, model.get("class_path") if hasattr(model, "get") else None, subcommand)
            if error:
                self.parser.error(error)
        super()._parse_ckpt_path()


def model_class_of(config: Any) -> Optional[type]:
    """The class a parsed subcommand config names under ``model.class_path`` (None if absent or not importable)."""
    class_path = (config.get("model") or {}).get("class_path") if hasattr(config, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None


def find_last_checkpoint(trainer: Trainer) -> Optional[Path]:
    """Newest ``last*.ckpt`` in the ModelCheckpoint folders and under every version of the logger."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    patterns = [(folder, "last*.ckpt") for folder in folders]
    root_dir = getattr(trainer.logger, "root_dir", None)
    if root_dir is not None:
        patterns.append((Path(root_dir), "*/checkpoints/last*.ckpt"))
    candidates = [path for folder, pattern in patterns if folder.is_dir() for path in folder.glob(pattern)]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def export_parser() -> argparse.ArgumentParser:
    from s2e.control import ControllerLimits
    from s2e.export_meta import FORMAT_FILES

    defaults = ControllerLimits()
    parser = argparse.ArgumentParser(
        prog="python -m s2e export",
        description="Write policy.ts (TorchScript), policy.pt2 (torch.export), the ONNX graphs and policy.json for a trained checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="PretrainModule or PostTrainModule checkpoint; it alone rebuilds the policy")
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=list(FORMAT_FILES),
        help="formats to write (default: ts pt2, and onnx when the onnx extra is installed: pip install 's2e[onnx]')",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="optional YAML (repeatable, e.g. the training config); only its `export:` section is read "
        "(keys max_speed, max_yaw_rate, lookahead_time); the command line wins",
    )
    parser.add_argument("--max_speed", type=float, help=f"m/s (default {defaults.max_speed})")
    parser.add_argument("--max_yaw_rate", type=float, help=f"rad/s (default {defaults.max_yaw_rate})")
    parser.add_argument("--lookahead_time", type=float, help=f"s along the plan for pure pursuit (default {defaults.lookahead_time})")
    return parser


def export_main(args: list[str]) -> None:
    """``python -m s2e export``: checkpoint -> export folder; prints the written policy.json path."""
    from s2e.control import ControllerLimits
    from s2e.export import JSON_FILE, default_formats, export_policy
    from s2e.onnx_export import require_onnx_export

    parser = export_parser()
    parsed = parser.parse_args(args)
    limits = ControllerLimits().to_dict()
    try:
        for path in parsed.config:
            with open(path) as handle:
                document = yaml.safe_load(handle) or {}
            if not isinstance(document, dict):
                raise ValueError(f"{path} is not a YAML mapping")
            limits.update(document.get("export") or {})
        limits.update({k: getattr(parsed, k) for k in ("max_speed", "max_yaw_rate", "lookahead_time") if getattr(parsed, k) is not None})
        controller = ControllerLimits.from_dict(limits)
        if parsed.formats and "onnx" in parsed.formats:
            require_onnx_export()
        policy, timing, anchors = load_policy_from_checkpoint(parsed.ckpt_path)  # a file that is no checkpoint: named
    except (OSError, ValueError, ImportError) as err:  # a bad path, config, checkpoint or a missing extra: a usage error, not a crash
        parser.error(str(err))
    export_policy(policy, timing, anchors, parsed.out, controller, source=str(parsed.ckpt_path), formats=parsed.formats or default_formats())
    print(Path(parsed.out) / JSON_FILE)


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        export_main(argv[1:])
        return
    S2ECLI(args=args)
