"""``PostTrainModule``: RL post-training of a pretrained S2E policy in the simulator (stage 2).

Three Lightning pieces, each with one job:

* :class:`PostTrainModule`, *what* is learned: the pretrained policy and the strategy that decides
  which of its parts learn (:mod:`s2e.rl.strategy`), the training env (task, robot, domain, reward
  weights, scene generation, crowd), PPO (:class:`s2e.rl.ppo.PPOConfig`). Each training step pulls
  one rollout batch [envs, time] and runs :func:`s2e.rl.ppo.ppo_update` on it (GAE, then shuffled
  minibatch passes of ``ClipPPOLoss``, as in CleanRL), or for ``sft`` :func:`s2e.rl.sft.sft_update`
  (the AGDM loss on the privileged expert's arcs, collected with the expert driving). It takes
  ``dataloader_iter`` so Lightning never prefetches a batch collected with stale weights.
* :class:`SimulatorRollouts`, *how* experience is gathered: the TorchRL collector (envs, steps,
  workers, seeds), created in ``train_dataloader`` from the :class:`s2e.rl.collect.RolloutSpec` the
  module hands it in ``setup``. With a frozen encoder (``ram``, ``decoder``) the env encodes each
  new frame once (:mod:`s2e.rl.features`) and the batch stores the fused context (and, under
  ``ram``, the frozen half of the RAM's output) instead of raw frames, so PPO reruns only what learns.
* :class:`RolloutVideo`, a callback: a deterministic episode as an mp4 and a TensorBoard strip.

Checkpoints carry the ``s2e_policy`` entry of :mod:`s2e.checkpoint` (policy config, TimingSpec, RAM
config, strategy) and the policy weights under ``policy.*``, so
:func:`s2e.checkpoint.load_policy_from_checkpoint` rebuilds a post-trained policy for the benchmark
and the exporter. The policy is kept in eval mode throughout: PPO's importance ratio compares
log-probabilities at collection and update time, which dropout or batch statistics would skew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor
from torchrl.objectives import ClipPPOLoss

from s2e.checkpoint import CHECKPOINT_KEY, check_experiment_matches, check_resumable, load_policy_from_checkpoint, policy_entry
from s2e.control import LOOKAHEAD_TIME, ControllerLimits
from s2e.model.ram import RAMConfig
from s2e.rl.actor import ActorCritic, ValueHead, build_actor_critic
from s2e.rl.collect import CollectorKind, RolloutBatches, RolloutSpec, make_collector, make_rollout_env
from s2e.rl.evaluate import run_policy_episodes
from s2e.rl.ppo import PPOConfig, make_ppo_loss, ppo_update
from s2e.rl.sft import EXPERT_KEY, NoisyExpert, sft_update
from s2e.rl.stats import rollout_stats
from s2e.rl.strategy import apply_strategy, check_strategy, encoder_trainable
from s2e.sim.crowd import CrowdConfig
from s2e.sim.env import NavEnvConfig
from s2e.sim.generator import SceneConfig
from s2e.sim.rewards import RewardConfig
from s2e.sim.robots import get_robot
from s2e.sim.tasks import get_tasks


@dataclass
class _Agent:
    """TorchRL modules and loss around ``PostTrainModule.policy``; kept out of the module tree so the
    policy's weights are saved once, under ``policy.*``."""

    modules: ActorCritic
    loss: Optional[ClipPPOLoss]


class PostTrainModule(pl.LightningModule):
    """PPO (or SFT) post-training of a pretrained policy in ``NavEnv``.

    Args:
        pretrained: PretrainModule (or PostTrainModule) checkpoint; brings the policy, its anchors
            and its TimingSpec.
        strategy: ``ram`` | ``full`` | ``decoder`` | ``sft`` (see :mod:`s2e.rl.strategy`).
        ram: RAMConfig fields (``ram`` strategy only).
        task, robot, domain: the training env (task preset, robot profile, appearance domain).
            ``task`` may be a list of tasks, a mix: each new scene draws its task from the list, so
            one batch trains on all of them (``[empty, obstacle, pedestrian, both]`` is NavBench's mix).
        rewards, scene, crowd: the training env's reward weights (:class:`s2e.sim.rewards.RewardConfig`),
            scene generation ranges (:class:`s2e.sim.generator.SceneConfig`; the task then removes
            the distractors it excludes) and social-force crowd (:class:`s2e.sim.crowd.CrowdConfig`).
            In YAML, set single fields: ``rewards: {collision: 5.0}``.
        timing, image_size, anchors_path: optional statements of what the env / experiment expects;
            each must match the checkpoint (a mismatch is an error, never a silent resample).
        ppo: PPO, its optimizer and the behaviour distribution it samples (:class:`s2e.rl.ppo.PPOConfig`).
        lookahead_time: the shared controller's pure-pursuit lookahead (seconds).
        action_repeat: control periods each sampled command is held during collection (one PPO
            transition, one rendered frame per decision; :class:`s2e.sim.env.NavEnvConfig`). The
            policy still sees frames ``frame_dt`` apart, and evaluation and export decide every
            ``control_dt`` as before.
        end_on_contact: the training env ends an episode at its first contact event
            (:class:`s2e.sim.env.NavEnvConfig`): PPO then sees no frames of a pinned robot, and the
            lost progress and arrival fall on the decisions just before the contact. NavBench runs
            its own env, where contacts never end an episode; ``RolloutVideo`` films the training env.
        expert_noise: (v m/s, omega rad/s) std of the noise on the expert's commands (``sft``).

    These defaults are the shipped experiment: ``experiments/posttrain.yaml`` sets only what it
    changes, and ``tools/bench_rl.py`` measures the module as built with them. They are the recipe
    that improved the 1,632-episode policy on the held-out large suite in every seed tried (README,
    "RL post-training: status"): the two obstacle tasks (``task``), contacts ending training
    episodes, decisions held for two control periods, and :class:`s2e.rl.ppo.PPOConfig`'s
    anchor-space exploration, KL penalty and 1,024-sample minibatches. Empty streets and pedestrians
    stay out of the mix: a uniform four-task mix without a penalty made every task worse.
    """

    def __init__(
        self,
        pretrained: str,
        strategy: str = "ram",
        ram: Optional[dict[str, Any]] = None,
        task: str | list[str] | tuple[str, ...] = ("obstacle", "both"),
        robot: str = "wheeled",
        domain: str = "sim",
        rewards: RewardConfig = RewardConfig(),
        scene: SceneConfig = SceneConfig(),
        crowd: CrowdConfig = CrowdConfig(),
        timing: Optional[dict[str, Any]] = None,
        image_size: Optional[tuple[int, int]] = None,
        anchors_path: Optional[str] = None,
        ppo: PPOConfig = PPOConfig(),
        lookahead_time: float = LOOKAHEAD_TIME,
        action_repeat: int = 2,
        end_on_contact: bool = True,
        expert_noise: tuple[float, float] = (0.1, 0.2),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _plain_hyperparameters(self)
        self.automatic_optimization = False
        self.strategy = check_strategy(strategy)
        if strategy != "ram" and ram:
            raise ValueError(f"model.ram configures the Residual Attention Module; strategy {strategy!r} has none")
        self.ppo = ppo
        policy, self.timing, anchors = load_policy_from_checkpoint(pretrained)
        check_experiment_matches(policy.config, self.timing, anchors, timing, image_size, anchors_path, pretrained)
        trainable = apply_strategy(policy, strategy, RAMConfig.from_options(ram or {}))
        self.policy = policy
        self.value_head = ValueHead(policy.config.d_model).requires_grad_(strategy != "sft")
        self._trainable_policy_params = trainable
        profile = get_robot(robot)
        self.limits = ControllerLimits(max_speed=profile.max_speed, max_yaw_rate=profile.max_omega, lookahead_time=lookahead_time)
        self.env_config = NavEnvConfig(
            task=task if isinstance(task, str) else tuple(task),
            robot=robot,
            timing=self.timing,
            image_size=policy.config.image_size,
            domain=domain,
            scene=scene,
            rewards=rewards,
            crowd=crowd,
            action_repeat=action_repeat,
            end_on_contact=end_on_contact,
        )
        self.task_names = [t.name for t in get_tasks(self.env_config.task)]  # refuses an unknown task before any env starts
        modules = build_actor_critic(
            policy, self.value_head, self.timing.waypoint_dt, self.limits, encoder_trainable=encoder_trainable(strategy), exploration=ppo.exploration()
        )
        if ppo.reference_kl > 0 and modules.reference_scores is None:
            raise ValueError(
                f"model.ppo.reference_kl {ppo.reference_kl} needs strategy 'ram' (the pretrained policy is the RAM's frozen half); "
                f"strategy {strategy!r} has no pretrained policy at hand: add --model.init_args.ppo.reference_kl 0"
            )
        self.agent = _Agent(modules, None if strategy == "sft" else make_ppo_loss(modules, ppo))
        self.rollout_spec = self._rollout_spec(expert_noise)

    def _rollout_spec(self, expert_noise: tuple[float, float]) -> RolloutSpec:
        """What collection drives with: the noisy expert for ``sft`` (the env adds its labels); else the
        stochastic policy and its value, from the frozen encoder's ``frame_features`` (which the env
        then computes, one new frame per env and step) whenever the encoder does not learn."""
        if self.strategy == "sft":
            expert = TensorDictModule(NoisyExpert(expert_noise), in_keys=[EXPERT_KEY], out_keys=["action"])
            return RolloutSpec(self.env_config, expert, expert=True)
        modules = self.agent.modules
        if modules.feature_policy is not None:
            return RolloutSpec(self.env_config, modules.feature_policy, features=self.policy)
        return RolloutSpec(self.env_config, modules.collect_policy)

    @property
    def drive(self) -> TensorDictSequential:
        """(frames, goal) -> ``action`` through the controller: what evaluation and videos run."""
        return self.agent.modules.drive

    def train(self, mode: bool = True) -> "PostTrainModule":
        """Lightning switches modules to train mode for fitting; the policy stays in eval mode (see the
        module docstring), and so frozen normalisation statistics never move."""
        super().train(mode)
        self.policy.eval()
        return self

    def setup(self, stage: str) -> None:
        """Hand the data module what it collects with (before Lightning asks it for the loader)."""
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, SimulatorRollouts):
            raise TypeError(f"PostTrainModule learns from SimulatorRollouts, got {type(datamodule).__name__}")
        datamodule.attach(self.rollout_spec)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = policy_entry(self.policy, self.timing, self.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming needs the same policy architecture, timing and RAM wrapping as this run."""
        check_resumable(checkpoint, self.timing, run="this run", policy=self.policy, strategy=self.strategy)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self._trainable_policy_params, "lr": self.ppo.lr, "name": "policy"}]
        if self.strategy != "sft":
            groups.append({"params": list(self.value_head.parameters()), "lr": self.ppo.value_lr, "name": "value"})
        return torch.optim.AdamW(groups, weight_decay=0.0)

    def training_step(self, dataloader_iter: Iterator) -> None:
        batch, _, _ = next(dataloader_iter)
        metrics = {f"train/{k}": v for k, v in rollout_stats(batch, self.task_names).items()}
        if self.strategy == "sft":
            metrics.update(sft_update(batch, self.policy, self.timing, self.ppo, self._optimizer_step))
        else:
            modules = self.agent.modules
            metrics.update(ppo_update(batch, self.agent.loss, modules.value_of, self.ppo, self._optimizer_step, modules.reference_scores))
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.numel())

    def _optimizer_step(self, loss: Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.ppo.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()


def _plain_hyperparameters(module: pl.LightningModule) -> None:
    """Config dataclasses given directly (not through the CLI, which records plain values) become
    dicts in the saved hyper-parameters: checkpoints hold plain types only (``weights_only=True``)."""
    for hparams in (module.hparams, module._hparams_initial):
        for key, value in hparams.items():
            if is_dataclass(value):
                hparams[key] = asdict(value)


class SimulatorRollouts(pl.LightningDataModule):
    """The data of post-training: a TorchRL collector over the model's training env.

    The model defines *what* is learned from (policy, robot, task, appearance domain, rewards) and
    hands it over as a :class:`s2e.rl.collect.RolloutSpec` (:meth:`attach`, from the model's
    ``setup``); this module defines *how* experience is gathered. ``train_dataloader`` creates the
    collector; ``teardown`` shuts it down.

    Args:
        num_envs: envs per collector (per worker process for ``multisync``).
        steps_per_batch: control steps per env in one rollout batch.
        batches_per_epoch: rollout batches per Lightning epoch.
        collector: ``sync`` (in-process ``Collector``) or ``multisync`` (``MultiSyncCollector`` with
            ``collector_workers`` processes, weights pushed to them before every batch).
        seed: env seed; rank r of a DDP run uses ``seed + 1000 r``, so ranks see different scenes.
    """

    def __init__(
        self,
        num_envs: int = 64,
        steps_per_batch: int = 64,
        batches_per_epoch: int = 4,
        collector: CollectorKind = "sync",
        collector_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("num_envs", num_envs), ("steps_per_batch", steps_per_batch), ("batches_per_epoch", batches_per_epoch)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self._spec: Optional[RolloutSpec] = None
        self._rollouts: Optional[RolloutBatches] = None

    def attach(self, spec: RolloutSpec) -> None:
        """What to collect with: the training env and the policy that drives it."""
        self._spec = spec

    def train_dataloader(self) -> RolloutBatches:
        if self._spec is None:
            raise RuntimeError("SimulatorRollouts has nothing to collect with: a PostTrainModule attaches its RolloutSpec in setup")
        hp = self.hparams
        seed = hp.seed + 1000 * self.trainer.global_rank
        workers = hp.collector_workers if hp.collector == "multisync" else 1
        collector = make_collector(
            self._spec.env_factory(hp.num_envs, seed),
            self._spec.policy,
            workers * hp.num_envs * hp.steps_per_batch,
            kind=hp.collector,
            workers=workers,
            seed=seed,
        )
        self.teardown("fit")
        self._rollouts = RolloutBatches(collector, hp.batches_per_epoch)
        return self._rollouts

    def teardown(self, stage: str) -> None:
        if self._rollouts is not None:
            self._rollouts.shutdown()
            self._rollouts = None


#: Scenes of successive videos are drawn from seeds this far apart (a prime: no two epochs share one).
VIDEO_SEED_STRIDE = 7919


class RolloutVideo(pl.Callback):
    """Every ``every_n_epochs`` epochs (0: never), one deterministic episode of the training env, at
    most ``max_steps`` control steps, in a scene drawn from ``seed`` and the epoch: an mp4 under
    ``<log_dir>/videos`` and a frame strip and the return in TensorBoard (TensorBoard's own
    ``add_video`` needs moviepy, which is not a dependency). ``experiments/posttrain.yaml`` adds it.
    """

    def __init__(self, every_n_epochs: int = 10, max_steps: int = 300, seed: int = 0) -> None:
        if every_n_epochs < 0 or max_steps < 1:
            raise ValueError(f"RolloutVideo needs every_n_epochs >= 0 and max_steps >= 1, got {every_n_epochs}, {max_steps}")
        self.every_n_epochs = every_n_epochs
        self.max_steps = max_steps
        self.seed = seed

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, PostTrainModule):
            raise TypeError(f"RolloutVideo films a PostTrainModule's env, got {type(pl_module).__name__}")
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log_video(trainer, pl_module)

    @rank_zero_only
    def _log_video(self, trainer: pl.Trainer, module: PostTrainModule) -> None:
        from s2e.video_io import write_mp4

        epoch = trainer.current_epoch
        env = make_rollout_env(module.env_config, 1, seed=self.seed + VIDEO_SEED_STRIDE * (epoch + 1))
        outcome = run_policy_episodes(env, module.drive, record_frames=True, max_steps=self.max_steps)
        log_dir = Path(getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir)
        (log_dir / "videos").mkdir(parents=True, exist_ok=True)
        write_mp4(log_dir / "videos" / f"epoch_{epoch:04d}.mp4", outcome.frames, fps=1.0 / module.timing.control_dt)
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            picks = np.linspace(0, len(outcome.frames) - 1, num=min(8, len(outcome.frames))).astype(int)
            strip = np.concatenate(list(outcome.frames[picks]), axis=1)  # [H, 8W, 3]
            experiment.add_image("rollout/frames", strip, global_step=trainer.global_step, dataformats="HWC")
            experiment.add_scalar("rollout/return", float(outcome.episode_return[0]), global_step=trainer.global_step)
