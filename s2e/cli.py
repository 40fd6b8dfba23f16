"""``python -m s2e fit|validate|test|predict --config ...``: the project's LightningCLI.

The model and data classes are chosen by the config (``class_path``), so pretraining, RL
post-training and the benchmark all run through this one entry point. A fixed default seed makes
runs repeatable; the resolved config is saved next to the logs. Further subcommands (e.g. ``export``)
are added by extending :meth:`S2ECLI.subcommands` and implementing a method of the same name.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule
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


def main(args: Optional[list[str]] = None) -> None:
    S2ECLI(args=args)
