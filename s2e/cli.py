"""``python -m s2e fit|validate|test|predict --config ...``: the project's LightningCLI.

The model and data classes are chosen by the config (``class_path``), so pretraining, RL
post-training and the benchmark all run through this one entry point. A fixed default seed makes
runs repeatable; the resolved config is saved next to the logs. Further subcommands (e.g. ``export``)
are added by extending :meth:`S2ECLI.subcommands` and implementing a method of the same name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

DEFAULT_SEED = 1234


class S2ECLI(LightningCLI):
    """LightningCLI with subclass-mode model and data and a fixed default seed."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
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


def find_last_checkpoint(trainer: Trainer) -> Optional[Path]:
    """Newest ``last*.ckpt`` in the ModelCheckpoint folders and under every version of the logger."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    patterns = [(folder, "last*.ckpt") for folder in folders]
    root_dir = getattr(trainer.logger, "root_dir", None)
    if root_dir is not None:
        patterns.append((Path(root_dir), "*/checkpoints/last*.ckpt"))
    candidates = [path for folder, pattern in patterns if folder.is_dir() for path in folder.glob(pattern)]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def main(args: Optional[list[str]] = None) -> None:
    S2ECLI(args=args)
