"""``python -m s2e fit|validate|test|predict --config ...``: the project's LightningCLI.

The model and data classes are chosen by the config (``class_path``), so pretraining, RL
post-training and the benchmark all run through this one entry point. A fixed default seed makes
runs repeatable; the resolved config is saved next to the logs.

``python -m s2e export --ckpt_path CKPT --out DIR [--config CFG]`` is dispatched before LightningCLI:
an export needs no Trainer, model or data config, since the checkpoint alone rebuilds the policy
(see :func:`export_main`).
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

DEFAULT_SEED = 1234


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

    def _parse_ckpt_path(self) -> None:
        """Merge a checkpoint's hyper-parameters into the model config, unless the model only reads policies.

        Lightning assumes ``--ckpt_path`` was written by the configured model class. The benchmark
        (``reads_policy_checkpoints = True``) is handed checkpoints that pretraining or post-training
        wrote, whose hyper-parameters belong to another class and would fail the config parse.
        """
        subcommand = self.config.get("subcommand")
        if subcommand and getattr(model_class_of(self.config[subcommand]), "reads_policy_checkpoints", False):
            return
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

    defaults = ControllerLimits()
    parser = argparse.ArgumentParser(
        prog="python -m s2e export",
        description="Write policy.ts (TorchScript), policy.pt2 (torch.export) and policy.json for a trained checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="PretrainModule checkpoint; it alone rebuilds the policy")
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
    from s2e.export import JSON_FILE, export_policy
    from s2e.pretrain import load_policy_from_checkpoint

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
        policy, timing, anchors = load_policy_from_checkpoint(parsed.ckpt_path)
    except (OSError, ValueError) as err:  # a bad path, config or checkpoint: a usage error, not a crash
        parser.error(str(err))
    export_policy(policy, timing, anchors, parsed.out, controller, source=str(parsed.ckpt_path))
    print(Path(parsed.out) / JSON_FILE)


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        export_main(argv[1:])
        return
    S2ECLI(args=args)
