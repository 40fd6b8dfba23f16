"""``PostTrainModule``: RL post-training of a pretrained S2E policy in the simulator (stage 2).

One training step, as in TorchRL's / CleanRL's PPO scripts:

1. pull a rollout batch [envs, time] from the TorchRL collector, created in the ``train_dataloader``
   of :class:`SimulatorRollouts` (the "data" of post-training: how experience is collected);
   ``training_step`` takes ``dataloader_iter`` so Lightning never prefetches a batch collected with
   stale weights. With a frozen encoder (``ram``, ``decoder``) the env encodes each new frame once
   (:mod:`s2e.rl.features`) and the batch stores the fused context (and, under ``ram``, the frozen
   half of the RAM's output) instead of raw frames, so PPO reruns only what learns;
2. GAE from the values the collector stored (:mod:`s2e.rl.advantage`);
3. ``ppo_epochs`` passes of shuffled minibatches through ``ClipPPOLoss`` (manual optimization, one
   AdamW whose parameter groups hold only what the strategy trains, plus the value head);
4. log reward terms, episode outcomes and PPO diagnostics. The in-process collector runs this
   module's policy itself; worker processes receive its weights before each batch.

The ``sft`` strategy replaces 2-3 by the AGDM loss on the privileged expert's arcs, collected with
the expert driving (:mod:`s2e.rl.sft`).

Checkpoints carry ``s2e_policy`` like pretraining (policy config, TimingSpec) plus ``ram`` (the RAM
config, ``None`` without RAM), and the policy weights under ``policy.*``, so
:func:`s2e.pretrain.load_policy_from_checkpoint` rebuilds a post-trained policy for the benchmark and
the exporter. The policy is kept in eval mode throughout: PPO's importance ratio compares
log-probabilities at collection and update time, which dropout or batch statistics would skew.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.objectives import ClipPPOLoss

from s2e.anchors import Anchors
from s2e.control import ControllerLimits
from s2e.distributions import agdm_loss
from s2e.model.policy import PolicyConfig
from s2e.model.ram import RAMConfig, ResidualAttentionModule
from s2e.pretrain import CHECKPOINT_KEY, load_policy_from_checkpoint
from s2e.rl.actor import ActorCritic, Exploration, ValueHead, build_actor_critic
from s2e.rl.advantage import add_gae
from s2e.rl.collect import CollectorKind, RolloutBatches, env_factory, make_collector, make_rollout_env
from s2e.rl.evaluate import run_policy_episodes
from s2e.rl.sft import EXPERT_KEY, NoisyExpert, expert_targets
from s2e.rl.features import FEATURES_KEY
from s2e.rl.stats import rollout_stats
from s2e.rl.strategy import apply_strategy, check_strategy, encoder_trainable
from s2e.sim.env import NavEnvConfig
from s2e.sim.robots import get_robot
from s2e.timing import TimingSpec

PPO_DIAGNOSTICS = ("kl_approx", "clip_fraction", "entropy", "explained_variance", "ESS", "loss_objective", "loss_critic", "loss_entropy")


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
        timing, image_size, anchors_path: optional statements of what the env / experiment expects;
            each must match the checkpoint (a mismatch is an error, never a silent resample).
        gamma, gae_lambda, clip_epsilon, ppo_epochs, minibatch_size, entropy_coeff, critic_coeff,
        max_grad_norm: PPO; lr: policy parameters; value_lr: value head. ``entropy_coeff`` weighs
            the mixture-entropy bonus (:meth:`AnchorTrajectoryDistribution.entropy`); it is 0 by
            default because that entropy sums 2T Gaussian log-stds, and Adam turns any constant
            bonus into a steady widening of every waypoint's std (seen in short CPU runs at 0.005,
            the paper's value: entropy rose and the per-step reward fell).
        anchor_temperature, std_scale: the behaviour distribution PPO samples and updates is the
            policy's mixture with anchor logits / ``anchor_temperature`` and stds x ``std_scale``
            (:class:`s2e.rl.actor.PolicyDecoder`); below 1 they keep a briefly pretrained policy's
            samples near its mode. Evaluation and export use the mode, which neither changes.
            Default 0.5 / 0.5, measured on the obstacle task with a 2-epoch policy (mode return
            +1.6): sampled return -15 at 1 / 1, -8 at 0.5 / 0.5; an 11-minute RAM run at 0.5 / 0.5
            raised the return from -0.48 to +3.18.
        exploration_space: ``trajectory`` (sample a whole trajectory from the mixture) or ``anchor``
            (sample which anchor to follow and drive its mean): see :class:`s2e.rl.actor.Exploration`.
        target_kl: stop a batch's PPO passes at the first minibatch whose approximate KL to the
            collecting policy exceeds it (``None``: never). Without it, fine-tuning the whole policy
            left the trust region on the first batch (obstacle task, lr 1e-4: KL 0.36, clip
            fraction 0.74), since the 2T-dimensional trajectory log-prob reacts strongly to small
            changes of the waypoint means; the demo's 10-epoch RAM run (``both`` task) at 1 / 1
            without it drifted to SR 0.00 on the quick suite (pretrained 0.75) and kept 0.75 at
            0.5 / 0.5 with the default 0.02.
        lookahead_time: the shared controller's pure-pursuit lookahead (seconds).
        action_repeat: control periods each sampled command is held during collection (one PPO
            transition, one rendered frame per decision; :class:`s2e.sim.env.NavEnvConfig`). The
            policy still sees frames ``frame_dt`` apart, and evaluation and export decide every
            ``control_dt`` as before.
        expert_noise: (v m/s, omega rad/s) std of the noise on the expert's commands (``sft``).
        video_every_n_epochs: a deterministic rollout video every N epochs (0: never), at most
            ``video_max_steps`` control steps, in a scene drawn from ``video_seed`` and the epoch.

    These defaults are the shipped experiment: ``experiments/posttrain.yaml`` sets only what it
    changes, and ``tools/bench_rl.py`` measures the module as built with them.
    """

    def __init__(
        self,
        pretrained: str,
        strategy: str = "ram",
        ram: Optional[dict[str, Any]] = None,
        task: str = "obstacle",
        robot: str = "wheeled",
        domain: str = "sim",
        timing: Optional[dict[str, Any]] = None,
        image_size: Optional[tuple[int, int]] = None,
        anchors_path: Optional[str] = None,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_epsilon: float = 0.2,
        ppo_epochs: int = 4,
        minibatch_size: int = 256,
        lr: float = 3e-4,
        value_lr: float = 1e-3,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 0.5,
        max_grad_norm: float = 1.0,
        anchor_temperature: float = 0.5,
        std_scale: float = 0.5,
        exploration_space: str = "trajectory",
        target_kl: Optional[float] = 0.02,
        lookahead_time: float = 0.6,
        action_repeat: int = 1,
        expert_noise: tuple[float, float] = (0.1, 0.2),
        video_every_n_epochs: int = 10,
        video_max_steps: int = 300,
        video_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if target_kl is not None and not target_kl > 0:
            raise ValueError(f"model.target_kl must be a positive number or null, got {target_kl}")
        self.strategy = check_strategy(strategy)
        if strategy != "ram" and ram:
            raise ValueError(f"model.ram configures the Residual Attention Module; strategy {strategy!r} has none")
        policy, self.timing, anchors = load_policy_from_checkpoint(pretrained)
        check_experiment_matches(policy.config, self.timing, anchors, timing, image_size, anchors_path, pretrained)
        trainable = apply_strategy(policy, strategy, RAMConfig.from_options(ram or {}))
        self.policy = policy
        self.value_head = ValueHead(policy.config.d_model).requires_grad_(strategy != "sft")
        self._trainable_policy_params = trainable
        profile = get_robot(robot)
        self.limits = ControllerLimits(max_speed=profile.max_speed, max_yaw_rate=profile.max_omega, lookahead_time=lookahead_time)
        self.env_config = NavEnvConfig(task=task, robot=robot, timing=self.timing, image_size=policy.config.image_size, domain=domain,
                                      action_repeat=action_repeat)
        exploration = Exploration(anchor_temperature, std_scale, exploration_space)
        modules = build_actor_critic(
            policy, self.value_head, self.timing.waypoint_dt, self.limits, encoder_trainable=encoder_trainable(strategy), exploration=exploration
        )
        self.agent = _Agent(modules, None if strategy == "sft" else self._make_loss(modules))

    def _make_loss(self, modules: ActorCritic) -> ClipPPOLoss:
        hp = self.hparams
        loss = ClipPPOLoss(
            modules.actor,
            modules.critic,
            clip_epsilon=hp.clip_epsilon,
            entropy_coeff=hp.entropy_coeff,
            critic_coeff=hp.critic_coeff,
            normalize_advantage=True,
            functional=False,  # the optimizer owns the live parameters; required under DDP
        )
        loss.set_keys(action=modules.action_key, sample_log_prob=modules.log_prob_key, value="state_value")
        return loss

    @property
    def ram_config(self) -> Optional[RAMConfig]:
        block = self.policy.cross_attention
        return block.config if isinstance(block, ResidualAttentionModule) else None

    def train(self, mode: bool = True) -> "PostTrainModule":
        """Lightning switches modules to train mode for fitting; the policy stays in eval mode (see the
        module docstring), and so frozen normalisation statistics never move."""
        super().train(mode)
        self.policy.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ram = self.ram_config
        checkpoint[CHECKPOINT_KEY] = {
            "policy_config": self.policy.config.to_dict(),
            "timing": self.timing.to_dict(),
            "ram": ram.to_dict() if ram is not None else None,
            "strategy": self.strategy,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming needs the same policy architecture, timing and RAM wrapping as this run."""
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is None:
            raise ValueError(f"not an S2E checkpoint: it has no {CHECKPOINT_KEY!r} entry")
        TimingSpec.from_dict(stored["timing"]).check_compatible(self.timing, this="checkpoint", that="this run")
        if PolicyConfig.from_dict(stored["policy_config"]) != self.policy.config:
            raise ValueError("the checkpoint's policy architecture differs from this run's pretrained policy")
        had_ram, has_ram = bool(stored.get("ram")), self.ram_config is not None
        if had_ram != has_ram:
            raise ValueError(
                f"the checkpoint was trained {'with' if had_ram else 'without'} RAM but this run's policy is "
                f"{'' if has_ram else 'not '}RAM-wrapped (strategy {self.strategy!r})"
            )
        if had_ram and RAMConfig.from_dict(stored["ram"]) != self.ram_config:
            raise ValueError(
                f"the checkpoint's RAM {RAMConfig.from_dict(stored['ram'])} differs from this run's {self.ram_config}; "
                "resume with the same model.ram (a checkpoint written before 2026-12 has branch_input 'gated')"
            )

    # ------------------------------------------------------------------ experience
    def rollout_env(self, num_envs: int, seed: int) -> Callable[[], EnvBase]:
        """A picklable factory of this run's training env: with the expert's labels for ``sft``; with
        the frozen encoder's ``frame_features`` instead of ``frames`` for ``ram`` / ``decoder``
        (:mod:`s2e.rl.features`: one new frame encoded per env and step)."""
        features = self.policy if self.agent.modules.feature_policy is not None else None
        return env_factory(self.env_config, num_envs, seed, expert=self.strategy == "sft", features=features)

    def rollout_policy(self) -> TensorDictModuleBase:
        """What drives the env during collection: the stochastic policy (from the env's frame features
        when the encoder is frozen), or the noisy expert for ``sft``."""
        if self.strategy == "sft":
            return TensorDictModule(NoisyExpert(self.hparams.expert_noise), in_keys=[EXPERT_KEY], out_keys=["action"])
        modules = self.agent.modules
        return modules.feature_policy if modules.feature_policy is not None else modules.collect_policy

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self._trainable_policy_params, "lr": self.hparams.lr, "name": "policy"}]
        if self.strategy != "sft":
            groups.append({"params": list(self.value_head.parameters()), "lr": self.hparams.value_lr, "name": "value"})
        return torch.optim.AdamW(groups, weight_decay=0.0)

    def training_step(self, dataloader_iter: Iterator) -> None:
        batch, _, _ = next(dataloader_iter)
        metrics = {f"train/{k}": v for k, v in rollout_stats(batch).items()}
        update = self._sft_update if self.strategy == "sft" else self._ppo_update
        metrics.update(update(batch))
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.numel())

    def _minibatches(self, size: int) -> Iterator[Tensor]:
        hp = self.hparams
        for _ in range(hp.ppo_epochs):
            yield from torch.randperm(size).split(hp.minibatch_size)

    def _step(self, loss: Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()

    def _value_of(self, observation: TensorDictBase) -> Tensor:
        """V of observations from the rollout env (frame features when the collector's env has them)."""
        modules = self.agent.modules
        context = modules.feature_context if FEATURES_KEY in observation.keys() else modules.context
        return modules.critic(context(observation.select(*context.in_keys)))["state_value"]

    def _ppo_update(self, batch: TensorDictBase) -> dict[str, float]:
        hp = self.hparams
        add_gae(batch, self._value_of, hp.gamma, hp.gae_lambda)
        flat = batch.select(*self._loss_keys()).reshape(-1)  # minibatches gather only what the loss reads
        logged = defaultdict(list)
        updates = 0
        for index in self._minibatches(flat.shape[0]):
            losses = self.agent.loss(flat[index])
            for key in PPO_DIAGNOSTICS:
                logged[key].append(float(losses[key].detach().mean()))
            if hp.target_kl is not None and logged["kl_approx"][-1] > hp.target_kl:
                break
            self._step(losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"])
            updates += 1
        out = {f"ppo/{k}": float(np.mean(v)) for k, v in logged.items()}
        out["ppo/updates"] = float(updates)
        out["ppo/value_target"] = float(batch["value_target"].mean())
        return out

    def _loss_keys(self) -> list:
        """The rollout entries ClipPPOLoss reads once GAE is written (no ``next`` observations)."""
        loss = self.agent.loss
        modules = [k for k in loss.in_keys if not (isinstance(k, tuple) and k[0] == "next")]
        agent = self.agent.modules
        return list(dict.fromkeys([*modules, agent.action_key, agent.log_prob_key, "advantage", "value_target", "state_value"]))

    def _sft_update(self, batch: TensorDictBase) -> dict[str, float]:
        flat = batch.reshape(-1)
        target, scale = expert_targets(flat[EXPERT_KEY], self.timing.waypoint_dt, self.timing.num_waypoints)
        logged = defaultdict(list)
        for index in self._minibatches(flat.shape[0]):
            out = self.policy(flat["frames"][index], flat["goal"][index])
            losses = agdm_loss(self.policy.mixture(out), out["scale"], target[index], scale[index], self.policy.anchor_points)
            self._step(losses["loss"])
            for key in ("loss", "nll", "cls", "scale"):
                logged[key].append(float(losses[key].detach()))
        return {f"sft/{k}": float(np.mean(v)) for k, v in logged.items()}

    # ------------------------------------------------------------------ video
    def on_train_epoch_end(self) -> None:
        every = self.hparams.video_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0:
            self._log_rollout_video()

    @rank_zero_only
    def _log_rollout_video(self) -> None:
        """One deterministic episode in the training env: an mp4 under ``<log_dir>/videos`` and a frame
        strip in TensorBoard (TensorBoard's own ``add_video`` needs moviepy, which is not a dependency)."""
        from s2e.video_io import write_mp4

        env = make_rollout_env(self.env_config, 1, seed=self.hparams.video_seed + 7919 * (self.current_epoch + 1))
        outcome = run_policy_episodes(env, self.agent.modules.drive, record_frames=True, max_steps=self.hparams.video_max_steps)
        log_dir = Path(getattr(self.logger, "log_dir", None) or self.trainer.default_root_dir)
        (log_dir / "videos").mkdir(parents=True, exist_ok=True)
        write_mp4(log_dir / "videos" / f"epoch_{self.current_epoch:04d}.mp4", outcome.frames, fps=1.0 / self.timing.control_dt)
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            picks = np.linspace(0, len(outcome.frames) - 1, num=min(8, len(outcome.frames))).astype(int)
            strip = np.concatenate(list(outcome.frames[picks]), axis=1)  # [H, 8W, 3]
            experiment.add_image("rollout/frames", strip, global_step=self.global_step, dataformats="HWC")
            experiment.add_scalar("rollout/return", float(outcome.episode_return[0]), global_step=self.global_step)


class SimulatorRollouts(pl.LightningDataModule):
    """The data of post-training: a TorchRL collector over the model's training env.

    The model defines *what* is learned from (policy, robot, task, appearance domain, rewards); this
    module defines *how* experience is gathered. ``train_dataloader`` creates the collector with the
    attached PostTrainModule's env factory and rollout policy; ``teardown`` shuts it down.

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
        num_envs: int = 8,
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
        self._rollouts: Optional[RolloutBatches] = None

    def train_dataloader(self) -> RolloutBatches:
        model = self.trainer.lightning_module
        if not isinstance(model, PostTrainModule):
            raise TypeError(f"SimulatorRollouts feeds a PostTrainModule, got {type(model).__name__}")
        hp = self.hparams
        seed = hp.seed + 1000 * self.trainer.global_rank
        workers = hp.collector_workers if hp.collector == "multisync" else 1
        collector = make_collector(
            model.rollout_env(hp.num_envs, seed), model.rollout_policy(), workers * hp.num_envs * hp.steps_per_batch,
            kind=hp.collector, workers=workers, seed=seed,
        )
        self.teardown("fit")
        self._rollouts = RolloutBatches(collector, hp.batches_per_epoch)
        return self._rollouts

    def teardown(self, stage: str) -> None:
        if self._rollouts is not None:
            self._rollouts.shutdown()
            self._rollouts = None


def check_experiment_matches(
    config: PolicyConfig,
    checkpoint_timing: TimingSpec,
    checkpoint_anchors: Anchors,
    timing: Optional[dict[str, Any]],
    image_size: Optional[tuple[int, int]],
    anchors_path: Optional[str],
    source: str,
) -> None:
    """What an experiment states about timing, image size or anchors must be what the checkpoint holds.

    The env is built from the checkpoint's TimingSpec and image size, so these statements are
    assertions: a config written for another model fails here with every difference named.
    """
    if timing is not None:
        TimingSpec.from_dict(timing).check_compatible(checkpoint_timing, this="model.timing (the env)", that=f"checkpoint {source}")
    if image_size is not None and tuple(int(s) for s in image_size) != config.image_size:
        raise ValueError(f"model.image_size {tuple(image_size)} differs from the checkpoint's {config.image_size} ({source})")
    if anchors_path is not None:
        anchors = Anchors.load(anchors_path)
        anchors.timing.check_compatible(checkpoint_timing, this=f"anchors {anchors_path}", that=f"checkpoint {source}")
        same = anchors.points.shape == checkpoint_anchors.points.shape and np.allclose(anchors.points, checkpoint_anchors.points, atol=1e-5)
        if not same or not np.allclose(anchors.trajectories, checkpoint_anchors.trajectories, atol=1e-5):
            raise ValueError(
                f"anchors {anchors_path} ({anchors.num_anchors} anchors) are not the anchors the checkpoint {source} was "
                f"trained with ({checkpoint_anchors.num_anchors}); post-training keeps the pretrained anchors"
            )
