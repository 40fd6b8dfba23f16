"""The layering that docs/architecture.md states, checked on the source.

Every import statement of every file (module level or inside a function: a lazy import is still a
dependency) is read with ``ast``; nothing is imported or run, so the check takes a second and sees
optional dependencies that are not installed. ``importlib.import_module`` strings are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = ("lightning", "pytorch_lightning")
TORCHRL = ("torchrl", "tensordict")
TRAINING = ("s2e.pretrain", "s2e.posttrain", "s2e.cli")
#: The policy and what ships it to a robot: a checkpoint must load, export and run without a trainer.
POLICY_SIDE = (
    "s2e/model",
    "s2e/checkpoint.py",
    "s2e/control.py",
    "s2e/export.py",
    "s2e/export_meta.py",
    "s2e/onnx_export.py",
    "s2e/onnx_runtime.py",
    "s2e/deploy.py",
)
#: The only files that may import Lightning: the LightningModules / DataModules and the CLI.
LIGHTNING_FILES = ("s2e/cli.py", "s2e/pretrain.py", "s2e/posttrain.py", "s2e/bench/module.py", "datamodules/nav_video.py")

#: (what may not import, the modules it may not import). A name forbids itself and its submodules.
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "policy side": (POLICY_SIDE, (*LIGHTNING, *TORCHRL, "s2e.rl", "s2e.sim", "s2e.bench", "s2e.splat", "datamodules", *TRAINING)),
    "simulator": (("s2e/sim",), (*LIGHTNING, "s2e.rl", "s2e.bench", "s2e.model", "s2e.checkpoint", "s2e.splat", "s2e.external", "datamodules", *TRAINING)),
    "RL parts": (("s2e/rl",), (*LIGHTNING, "s2e.bench", "datamodules", *TRAINING)),
    "NavBench": (("s2e/bench",), ("torchrl", "s2e.rl", "datamodules", *TRAINING)),
    "splat scenes": (("s2e/splat",), (*LIGHTNING, *TORCHRL, "s2e.rl", "s2e.bench", "s2e.model", *TRAINING)),
    "external simulators": (("s2e/external",), (*LIGHTNING, "s2e.rl", "s2e.bench", *TRAINING)),
    "data": (("datamodules",), (*TORCHRL, "s2e.model", "s2e.checkpoint", "s2e.rl", "s2e.sim", "s2e.bench", *TRAINING)),
    "library": (("s2e", "datamodules"), ("s2e.scripts", "tools")),
    "model side of the data": (("s2e",), ("datamodules",)),
}
#: Paths a rule's folder holds that the rule does not cover.
EXEMPT = {"library": ("s2e/scripts",), "model side of the data": ("s2e/scripts",)}


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file under ``root`` imports, dotted and absolute; ``from a import b`` gives
    ``a`` and ``a.b`` (``b`` may be a submodule)."""
    names: set[str] = set()
    package = path.relative_to(root).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: the package, less one level per extra dot
                parts = package[: len(package) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def sources(*places: str) -> list[Path]:
    """The .py files of files and folders given relative to the repository."""
    found: list[Path] = []
    for place in places:
        path = ROOT / place
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def within(name: str, modules: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``modules`` or a submodule of one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for every import of a forbidden module."""
    return sorted(f"{path.relative_to(ROOT)}: {name}" for path in paths for name in imported(path) if within(name, forbidden))


def test_imports_are_read_absolute_lazy_ones_included(tmp_path: Path) -> None:
    probe = tmp_path / "s2e" / "sim" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import torch\nfrom . import env\nfrom .render import Raycaster\nfrom ..rl import ppo\ndef f():\n    from lightning.pytorch import Trainer\n"
    )
    assert imported(probe, tmp_path) == {
        "torch",
        "s2e.sim",
        "s2e.sim.env",
        "s2e.sim.render",
        "s2e.sim.render.Raycaster",
        "s2e.rl",
        "s2e.rl.ppo",
        "lightning.pytorch",
        "lightning.pytorch.Trainer",
    }
    assert within("s2e.rl.ppo", ("s2e.rl",)) and within("s2e.rl", ("s2e.rl",)) and not within("s2e.rlx", ("s2e.rl",))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layering(rule: str) -> None:
    places, forbidden = RULES[rule]
    exempt = [ROOT / place for place in EXEMPT.get(rule, ())]
    paths = [p for p in sources(*places) if not any(p.is_relative_to(e) for e in exempt)]
    assert paths, f"{rule}: no source files under {places}"
    assert offending(paths, forbidden) == [], f"{rule} imports what docs/architecture.md says it must not"


def test_lightning_only_in_the_lightning_modules_and_the_cli() -> None:
    allowed = {ROOT / f for f in LIGHTNING_FILES}
    paths = [p for p in sources("s2e", "datamodules") if p not in allowed and not p.is_relative_to(ROOT / "s2e" / "scripts")]
    assert offending(paths, LIGHTNING) == []


def test_a_moved_tool_is_only_its_entry_point() -> None:
    """A tools/ script whose code moved to s2e/scripts imports that module's main and sys, nothing else."""
    moved = [p for p in sorted((ROOT / "tools").glob("*.py")) if any(within(n, ("s2e.scripts",)) for n in imported(p))]
    assert moved, "no tool imports s2e.scripts"
    for path in moved:
        module = f"s2e.scripts.{path.stem}"
        assert imported(path) == {"sys", module, f"{module}.main"}, path.relative_to(ROOT)
