"""End-to-end PPO throughput on CPU: env frames/s of a real post-training fit and where the time goes.

    python tools/bench_rl.py                      # a freshly initialised small policy, 64 envs
    python tools/bench_rl.py --pretrained artifacts/demo/pretrain.ckpt --envs 8

Runs ``PostTrainModule`` + ``SimulatorRollouts`` under a Lightning ``Trainer`` exactly as
``python -m s2e fit`` does, with the module's own defaults (the shipped experiment, see
``PostTrainModule``; ``--model KEY=VALUE`` overrides one, ``--model ppo.epochs=2`` one field of
a config such as :class:`s2e.rl.ppo.PPOConfig`), and times, from the second collected
batch on (env creation, compilation and the first batch excluded):

* ``render``: the renderer (``NavEnv.renderer.render``) within env steps;
* ``env_other``: the rest of the env step (physics, crowd, rewards, frame stacking);
* ``reset``: starting new episodes for the envs whose episode ended (``NavEnv._reset``: new scenes,
  their first frames), which with ``end_on_contact`` happens after most steps somewhere in the batch;
* ``encode``: the frozen encoder on the env's new frames (:class:`s2e.rl.features.FrameFeatures`,
  ``ram`` / ``decoder``; under ``full`` the encoder runs inside ``policy``);
* ``policy``: the collector's policy (context, actor, controller, value);
* ``gae``: advantages, including the values of episode-end observations;
* ``update``: the PPO minibatch passes;
* ``overhead``: the rest: TorchRL collector and env wrappers, Lightning, logging.

A *frame* is one control period of simulated robot time (``control_dt``, one camera frame at the
robot's rate); with ``action_repeat`` > 1 one env step holds its command for that many periods and
renders, encodes and stores one *decision*, so both rates are printed (``decisions_per_s``).

Without ``--pretrained`` it writes a checkpoint of a freshly initialised policy (``--preset``,
fixed seed, 20 arc anchors) to a temporary directory, so it runs on a fresh clone; throughput does
not depend on what the weights learned, except through episode lengths and PPO's early stop.
The renderer compiles before the timed batches (``--compile on``, the steady state of a training
run, which compiles after ``COMPILE_AFTER_EAGER_S`` seconds). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch
import yaml

import s2e.posttrain as posttrain
import s2e.rl.ppo as ppo
from s2e.posttrain import PostTrainModule, SimulatorRollouts
from s2e.sim.compiled import PROCESS_POLICY, CompilePolicy

PARTS = ("render", "env_other", "reset", "encode", "policy", "gae", "update", "overhead")


class Stopwatch:
    """Accumulated seconds and calls per named part; ``wrap`` times every call of a function, except
    calls made while the part named ``unless`` runs (they count in that part, not twice)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.running: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Any], unless: str | None = None) -> Callable[..., Any]:
        self.seconds.setdefault(name, 0.0)
        self.calls.setdefault(name, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if unless is not None and self.running.get(unless):
                return fn(*args, **kwargs)
            self.running[name] = self.running.get(name, 0) + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1
                self.running[name] -= 1

        return timed


class Instrument(pl.Callback):
    """Compiles (or not) the renderer before the first batch, then installs the timers once that
    batch is in (warm start) and counts the frames of every later one."""

    def __init__(self, watch: Stopwatch, compiled: bool | None) -> None:
        self.watch = watch
        self.compiled = compiled
        self.started: float | None = None
        self.decisions = 0

    @staticmethod
    def _env(trainer: pl.Trainer) -> Any:
        return trainer.datamodule._rollouts.collector.env

    def on_train_start(self, trainer: pl.Trainer, module: PostTrainModule) -> None:
        self._env(trainer).base_env.renderer.compiled = self.compiled  # the collector exists once the loop set up its data

    def on_train_batch_end(self, trainer: pl.Trainer, module: PostTrainModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.started is None:
            watch, env = self.watch, self._env(trainer)
            base = env.base_env
            base._reset = watch.wrap("reset", base._reset)
            base.renderer.render = watch.wrap("render", base.renderer.render, unless="reset")
            base._step = watch.wrap("env_step", base._step)
            for transform in env.transform:
                if hasattr(transform, "_features"):  # s2e.rl.features.FrameFeatures
                    transform._features = watch.wrap("encode", transform._features)
            policy = module.rollout_spec.policy
            policy.forward = watch.wrap("policy", policy.forward)
            ppo.add_gae = watch.wrap("gae", ppo.add_gae)
            posttrain.ppo_update = watch.wrap("ppo", posttrain.ppo_update)
            module._optimizer_step = watch.wrap("optimizer_step", module._optimizer_step)
            self.started = time.perf_counter()
            return
        self.decisions += trainer.datamodule.hparams.num_envs * trainer.datamodule.hparams.steps_per_batch


def tiny_pretrained(directory: Path, preset: str = "small", num_anchors: int = 20) -> Path:
    """A PretrainModule checkpoint of a freshly initialised ``preset`` policy (seed 0) whose anchors
    are ``num_anchors`` constant-curvature arcs; written by a Trainer like a real one."""
    from s2e.anchors import Anchors
    from s2e.pretrain import PretrainModule
    from s2e.timing import TimingSpec

    timing = TimingSpec()
    s = np.arange(1, timing.num_waypoints + 1, dtype=np.float64)[None, :]  # unit steps along each arc
    curvature = np.linspace(-0.25, 0.25, num_anchors)[:, None] + 1e-9
    arcs = np.stack([np.sin(curvature * s) / curvature, (1 - np.cos(curvature * s)) / curvature], -1).astype(np.float32)
    Anchors(points=arcs[:, -1], trajectories=arcs, timing=timing, counts=np.ones(num_anchors, np.int64)).save(directory / "anchors.npz")
    torch.manual_seed(0)
    module = PretrainModule(str(directory / "anchors.npz"), preset=preset, image_every_n_steps=0)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", max_epochs=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(directory / "pretrain.ckpt")
    return directory / "pretrain.ckpt"


def model_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE parsed as YAML, as on the ``s2e fit`` command line) -> kwargs of
    ``PostTrainModule``; ``NAME.FIELD=VALUE`` replaces one field of a config dataclass argument."""
    defaults = {k: p.default for k, p in inspect.signature(PostTrainModule.__init__).parameters.items()}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--model expects KEY=VALUE, got {pair!r}")
        name, _, field = key.partition(".")
        if not field:
            out[key] = yaml.safe_load(value)
        elif dataclasses.is_dataclass(defaults.get(name)):
            out[name] = dataclasses.replace(out.get(name, defaults[name]), **{field: yaml.safe_load(value)})
        else:
            raise ValueError(f"--model {key}: PostTrainModule has no config argument {name!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, default=None, help="a pretraining checkpoint (default: a fresh --preset policy)")
    parser.add_argument("--preset", default="small", help="policy preset of the fresh checkpoint")
    parser.add_argument("--strategy", default="ram")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a PostTrainModule argument other than its default (repeatable), e.g. action_repeat=2 or ppo.epochs=2",
    )
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="control steps per env per batch (default: SimulatorRollouts')")
    parser.add_argument("--batches", type=int, default=3, help="timed batches (one more warms up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="on",
        help="the renderer's torch.compile (auto: as a training run, after COMPILE_AFTER_EAGER_S eager seconds)",
    )
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Fit the warm-up batch and the timed ones; prints the rates and the split, and returns the result."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strategy == "sft":
        parser.error("bench_rl measures PPO; the sft strategy has no PPO update")
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    with tempfile.TemporaryDirectory() as scratch:
        pretrained = args.pretrained or tiny_pretrained(Path(scratch), args.preset)
        if not pretrained.is_file():
            parser.error(f"pretrained checkpoint not found: {pretrained}")
        module = PostTrainModule(str(pretrained), strategy=args.strategy, **model_overrides(args.model))
    data_args = dict(num_envs=args.envs, batches_per_epoch=args.batches + 1)
    if args.steps is not None:
        data_args["steps_per_batch"] = args.steps
    data = SimulatorRollouts(**data_args)
    watch = Stopwatch()
    instrument = Instrument(watch, {"auto": None, "on": True, "off": False}[args.compile])
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[instrument],
    )
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - instrument.started

    seconds = {name: watch.seconds.get(name, 0.0) for name in ("render", "reset", "encode", "policy", "gae")}
    seconds["env_other"] = watch.seconds["env_step"] - seconds["render"]
    seconds["update"] = watch.seconds["ppo"] - seconds["gae"]
    seconds["overhead"] = wall - sum(seconds.values())
    seconds = {name: seconds[name] for name in PARTS}
    steps = data.hparams.steps_per_batch
    env_steps = args.batches * steps
    repeat = module.env_config.action_repeat
    frames = instrument.decisions * repeat
    result = {
        "frames_per_s": round(frames / wall, 1),
        "decisions_per_s": round(instrument.decisions / wall, 1),
        "frames": frames,
        "action_repeat": repeat,
        "seconds": round(wall, 2),
        "share": {k: round(v / wall, 4) for k, v in seconds.items()},
        "seconds_by_part": {k: round(v, 2) for k, v in seconds.items()},
        "ms_per_env_step": {k: round(1e3 * v / env_steps, 2) for k, v in seconds.items()},
        "ppo_updates_per_batch": watch.calls["optimizer_step"] / args.batches,
        "resets_per_batch": watch.calls["reset"] / args.batches,
        "strategy": args.strategy,
        "envs": args.envs,
        "steps_per_batch": steps,
        "image_size": list(module.policy.config.image_size),
        "pretrained": str(args.pretrained) if args.pretrained else f"fresh {args.preset} policy",
        "ppo": dataclasses.asdict(module.ppo),
        "threads": args.threads,
        "compile": args.compile,
        "compile_state": PROCESS_POLICY.report(),  # what ran (the rollout env's renderer uses the process policy)
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"{result['frames_per_s']} frames/s ({result['decisions_per_s']} decisions/s, action_repeat {repeat}) over {frames} frames "
        f"({args.envs} envs x {steps} steps x {args.batches} batches, {result['ppo_updates_per_batch']:.0f} PPO updates per batch)"
    )
    print(f"compile: asked {args.compile}, ran {CompilePolicy.describe(result['compile_state'])}")
    print("time split: " + ", ".join(f"{k} {100 * v:.1f} % ({result['ms_per_env_step'][k]} ms/step)" for k, v in result["share"].items()))
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> None:
    """The command line: :func:`run`, whose result is on stdout already (exit status 0)."""
    run(argv)
