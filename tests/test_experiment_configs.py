"""One source of defaults: the code's defaults are the shipped values, and every file in
experiments/ sets only what its experiment changes. A YAML restating a default would let the two
drift apart (the tools that build modules directly would then measure something not shipped)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
from typing import Any

import pytest
import yaml

from s2e.control import ControllerLimits

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
BASES = ("pretrain.yaml", "posttrain.yaml", "navbench.yaml")
OVERLAYS = {
    "model_paper.yaml": "pretrain.yaml",
    "pretrain_single.yaml": "pretrain.yaml",
    "navbench_quick.yaml": "navbench.yaml",
}
EXPORT = "export.yaml"  # not a LightningCLI config: the `export:` section of `python -m s2e export`


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXPERIMENTS / name).read_text()) or {}


def _plain(value: Any) -> Any:
    """Tuples as lists and dataclasses as dicts, as YAML writes them."""
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _defaults(class_path: str) -> dict[str, Any]:
    module, _, name = class_path.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
    return {k: p.default for k, p in parameters.items() if k != "self"}


def _restated(init_args: dict[str, Any], effective: dict[str, Any], where: str) -> list[str]:
    """Keys of ``init_args`` whose value is the one in effect without them (config dataclass
    arguments field by field); an unknown key is an error of its own."""
    found = []
    for key, value in init_args.items():
        assert key in effective, f"{where}.{key} is not an argument"
        current = effective[key]
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            fields = {f.name for f in dataclasses.fields(current)}
            assert set(value) <= fields, f"{where}.{key}: unknown fields {sorted(set(value) - fields)}"
            found += [f"{where}.{key}.{f}" for f, v in value.items() if _plain(v) == _plain(getattr(current, f))]
        elif _plain(value) == _plain(current):
            found.append(f"{where}.{key}")
    return found


def test_every_experiment_file_is_checked() -> None:
    assert {p.name for p in EXPERIMENTS.glob("*.yaml")} == {*BASES, *OVERLAYS, EXPORT}


@pytest.mark.parametrize("name", BASES)
def test_a_base_config_sets_only_what_differs_from_the_code_defaults(name: str) -> None:
    config = _load(name)
    restated = []
    for section in ("model", "data"):
        entry = config[section]
        restated += _restated(entry.get("init_args") or {}, _defaults(entry["class_path"]), f"{name}: {section}")
    assert not restated, f"the code default, drop from the YAML: {restated}"


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_an_overlay_changes_every_value_it_sets(name: str) -> None:
    base = _load(OVERLAYS[name])
    overlay = _load(name)
    restated = []
    for section in ("model", "data"):
        entry = base[section]
        effective = {**_defaults(entry["class_path"]), **(entry.get("init_args") or {})}
        restated += _restated((overlay.get(section) or {}).get("init_args") or {}, effective, f"{name}: {section}")
    assert not restated, f"already in effect without the overlay, drop from the YAML: {restated}"


def test_the_export_config_states_no_default_limit() -> None:
    limits = _load(EXPORT).get("export") or {}
    assert not _restated(limits, dataclasses.asdict(ControllerLimits()), f"{EXPORT}: export")


def test_a_restated_default_is_caught_field_by_field() -> None:
    """The check itself: a config dataclass field equal to its default is found, a changed one is not."""
    effective = _defaults("s2e.posttrain.PostTrainModule")
    found = _restated({"ppo": {"epochs": 2, "lr": 1e-4}, "task": ["obstacle", "both"], "rewards": {"collision": 5.0}}, effective, "m")
    assert found == ["m.ppo.epochs", "m.task"]
