"""End-to-end PPO throughput on CPU: frames/s of a real post-training fit and where the time goes.

    python tools/bench_rl.py --pretrained artifacts/demo/pretrain.ckpt --envs 8 --steps 64 --batches 4

Runs ``PostTrainModule`` + ``SimulatorRollouts`` under a Lightning ``Trainer`` exactly as
``python -m s2e fit`` does, and times, from the first collected batch on (env creation and the
first reset excluded): the renderer (``NavEnv.renderer.render``), the rest of the env step
(physics, crowd, rewards), policy inference in the collector (context, actor, controller, value)
and the PPO update (GAE + minibatch epochs). Shares are of the measured wall time; what is left is
collector / TorchRL / Lightning overhead. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/bench_sim.py: must precede torch's import

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2e.posttrain import PostTrainModule, SimulatorRollouts  # noqa: E402


class Stopwatch:
    """Accumulated seconds per named part; ``wrap`` times every call of a function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds.setdefault(name, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed


class Instrument(pl.Callback):
    """Installs the timers once the collector exists and its first batch is in (warm start)."""

    def __init__(self, watch: Stopwatch) -> None:
        self.watch = watch
        self.started: float | None = None
        self.frames = 0

    def on_train_batch_end(self, trainer: pl.Trainer, module: PostTrainModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.started is None:
            rollouts = trainer.datamodule._rollouts
            env = rollouts.collector.env.base_env
            env.renderer.render = self.watch.wrap("render", env.renderer.render)
            env._step = self.watch.wrap("env_step", env._step)
            policy = module.agent.modules.collect_policy
            policy.forward = self.watch.wrap("policy", policy.forward)
            module._ppo_update = self.watch.wrap("update", module._ppo_update)
            self.started = time.perf_counter()
            return
        self.frames += trainer.datamodule.hparams.num_envs * trainer.datamodule.hparams.steps_per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, default=Path("artifacts/demo/pretrain.ckpt"))
    parser.add_argument("--strategy", default="ram")
    parser.add_argument("--task", default="obstacle")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64, help="control steps per env per batch")
    parser.add_argument("--batches", type=int, default=4, help="timed batches (one more warms up)")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.pretrained.is_file():
        parser.error(f"pretrained checkpoint not found: {args.pretrained} (run tools/demo.py first)")
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    module = PostTrainModule(str(args.pretrained), strategy=args.strategy, task=args.task, ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch)
    if args.strategy == "sft":
        parser.error("bench_rl measures PPO; the sft strategy has no PPO update")
    data = SimulatorRollouts(num_envs=args.envs, steps_per_batch=args.steps, batches_per_epoch=args.batches + 1)
    watch = Stopwatch()
    instrument = Instrument(watch)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[instrument],
    )
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - instrument.started
    parts = dict(watch.seconds)
    parts["env_other"] = parts.pop("env_step") - parts["render"]
    parts["overhead"] = wall - sum(parts.values())
    shares = {k: round(v / wall, 4) for k, v in parts.items()}
    result = {
        "frames_per_s": round(instrument.frames / wall, 1),
        "frames": instrument.frames,
        "seconds": round(wall, 2),
        "share": shares,
        "seconds_by_part": {k: round(v, 2) for k, v in parts.items()},
        "strategy": args.strategy,
        "envs": args.envs,
        "steps_per_batch": args.steps,
        "image_size": list(module.policy.config.image_size),
        "ppo_epochs": args.ppo_epochs,
        "minibatch": args.minibatch,
        "threads": args.threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{result['frames_per_s']} frames/s over {instrument.frames} frames; shares of wall time: {shares}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
