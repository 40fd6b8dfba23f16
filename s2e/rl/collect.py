"""Environments and TorchRL collectors for post-training, and what a learner hands its collector.

Env factories are top-level functions of plain, picklable arguments, so the same factory serves the
in-process :class:`torchrl.collectors.Collector` and worker processes of
:class:`torchrl.collectors.MultiSyncCollector`. Several machines: TorchRL's distributed collectors
(``torchrl.collectors.distributed.DistributedSyncCollector`` / ``RPCCollector``) take the same
``create_env_fn`` and policy; see the README section on post-training.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.envs import Compose, EnvBase, RewardSum, TransformedEnv

from s2e.model.policy import S2EPolicy
from s2e.rl.features import FrameFeatures
from s2e.rl.sft import ExpertAction
from s2e.sim.env import NavEnv, NavEnvConfig, decision_stride

CollectorKind = Literal["sync", "multisync"]


def make_rollout_env(config: NavEnvConfig, num_envs: int, seed: int = 0, expert: bool = False, features: Optional[S2EPolicy] = None) -> TransformedEnv:
    """A batched NavEnv with the running episode return under ``episode_reward``; with ``expert``,
    the privileged expert's command under ``expert_action`` (for ``sft``); with ``features``, that
    (frozen-encoder) policy's ``frame_features`` in place of ``frames`` (:class:`FrameFeatures`)."""
    transforms = [RewardSum()]
    if expert:
        transforms.append(ExpertAction())
    if features is not None:
        transforms.append(FrameFeatures(features, decision_stride(config.timing, config.action_repeat)))
    return TransformedEnv(NavEnv(config, num_envs=num_envs, seed=seed), Compose(*transforms))


def env_factory(config: NavEnvConfig, num_envs: int, seed: int = 0, expert: bool = False, features: Optional[S2EPolicy] = None) -> Callable[[], EnvBase]:
    """A picklable zero-argument factory of :func:`make_rollout_env` (what collectors and workers call).

    ``features`` is copied here, frozen: the env only needs the (frozen) encoder, and the copy is
    independent of the live policy, which ``MultiSyncCollector`` ships to its workers stripped of
    weights (on the meta device) and refills with the trainable ones only."""
    if features is not None:
        features = copy.deepcopy(features).eval().requires_grad_(False)
    return functools.partial(make_rollout_env, config, num_envs, seed, expert, features)


@dataclass
class RolloutSpec:
    """What experience is collected with, as the learner defines it: the training env and the policy
    that drives it. ``PostTrainModule`` hands one to its data module, which owns how many envs,
    steps, workers and which seeds (:class:`s2e.posttrain.SimulatorRollouts`).

    Attributes:
        env: the training env.
        policy: the collector's policy (the stochastic actor with its value, or the noisy expert).
        expert: add the privileged expert's command to the observations (``sft``).
        features: a frozen-encoder policy whose frame features replace ``frames`` (``ram``, ``decoder``).
    """

    env: NavEnvConfig
    policy: TensorDictModuleBase
    expert: bool = False
    features: Optional[S2EPolicy] = None

    def env_factory(self, num_envs: int, seed: int) -> Callable[[], EnvBase]:
        """A picklable factory of ``num_envs`` training envs seeded with ``seed`` (:func:`env_factory`)."""
        return env_factory(self.env, num_envs, seed, self.expert, self.features)


def make_collector(
    create_env: Callable[[], EnvBase],
    policy: Callable[[TensorDictBase], TensorDictBase],
    frames_per_batch: int,
    *,
    kind: CollectorKind = "sync",
    workers: int = 2,
    seed: int = 0,
) -> Collector | MultiSyncCollector:
    """An endless collector delivering ``frames_per_batch`` frames per batch: ``sync`` steps the env
    in this process with ``policy`` itself (its weights are always current); ``multisync`` runs
    ``workers`` processes, each with its own env batch and a policy copy refreshed from ``policy``
    before every batch. Seeds differ per worker (TorchRL offsets them)."""
    if kind == "sync":
        collector: Collector | MultiSyncCollector = Collector(
            create_env, policy, frames_per_batch=frames_per_batch, total_frames=-1, device="cpu", auto_register_policy_transforms=False
        )
    elif kind == "multisync":
        if workers < 1:
            raise ValueError(f"a multisync collector needs workers >= 1, got {workers}")
        collector = MultiSyncCollector(
            [create_env] * workers, policy, frames_per_batch=frames_per_batch, total_frames=-1, device="cpu", cat_results=0, update_at_each_batch=True
        )
    else:
        raise ValueError(f"unknown collector kind {kind!r}; choose 'sync' or 'multisync'")
    collector.set_seed(seed)
    return collector


class RolloutBatches:
    """``batches_per_epoch`` rollout batches per pass from one endless collector: the Lightning
    "dataloader" of post-training. Batches come out as [envs, time] (worker batches concatenated)."""

    def __init__(self, collector: Collector | MultiSyncCollector, batches_per_epoch: int) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.collector = collector
        self.batches_per_epoch = batches_per_epoch
        self._stream: Iterator[TensorDictBase] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self._stream is None:
            self._stream = iter(self.collector)
        for _ in range(self.batches_per_epoch):
            batch = next(self._stream)
            yield batch.reshape(-1, batch.shape[-1])

    def shutdown(self) -> None:
        self.collector.shutdown()
