"""PostTrainModule on the real simulator with a tiny policy: strategies train only their parameters,
RAM keeps every pretrained weight bit-identical, resume, mismatch errors, the CLI and the YAML,
TensorBoard output, GAE bootstrapping and the multi-process collector."""

from __future__ import annotations

import json
import pathlib

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringDataModule
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensordict import TensorDict
from test_pretrain import TINY_POLICY
from test_rl_distribution import _tiny_policy
from torchrl.envs.utils import step_mdp

from s2e.anchors import Anchors
from s2e.checkpoint import load_policy_from_checkpoint
from s2e.cli import S2ECLI
from s2e.model.ram import ResidualAttentionModule
from s2e.posttrain import PostTrainModule, RolloutVideo, SimulatorRollouts
from s2e.pretrain import PretrainModule
from s2e.rl.advantage import next_state_values
from s2e.rl.collect import env_factory, make_collector
from s2e.rl.ppo import PPOConfig
from s2e.sim.crowd import CrowdConfig
from s2e.sim.env import NavEnvConfig
from s2e.sim.rewards import RewardConfig
from s2e.timing import TimingMismatchError, TimingSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
# every minibatch steps (tests count optimizer steps); no KL penalty, which only ``ram`` can compute
# (tests/test_rl_reference_kl.py), so one config serves every strategy
TINY_PPO = PPOConfig(epochs=1, minibatch_size=8, lr=1e-3, target_kl=None, reference_kl=0.0)
TINY_RUN = dict(ppo=TINY_PPO)
TINY_DATA = dict(num_envs=2, steps_per_batch=8, batches_per_epoch=1)


def _anchors(spread: float = 0.15) -> Anchors:
    t = np.linspace(1, 10, 10)[:, None]
    trajectories = np.stack([np.concatenate([t, spread * k * (t / 10) ** 2 * 10], 1) for k in (-1, 0, 1)]).astype(np.float32)
    return Anchors(points=trajectories[:, -1], trajectories=trajectories, timing=TimingSpec(), counts=np.ones(3, np.int64))


def write_tiny_pretrained(root: pathlib.Path, anchors: Anchors) -> pathlib.Path:
    """A real PretrainModule checkpoint of a tiny policy (seed 0) with ``anchors``, written by a Trainer."""
    anchors.save(root / "anchors.npz")
    torch.manual_seed(0)
    module = PretrainModule(str(root / "anchors.npz"), policy=dict(TINY_POLICY), image_every_n_steps=0)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(root / "pretrain.ckpt")
    return root / "pretrain.ckpt"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_tiny_pretrained(tmp_path_factory.mktemp("posttrain"), _anchors())


def _trainer(root: pathlib.Path, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    args = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        logger=TensorBoardLogger(root, name="tb"),
        enable_checkpointing=False,
    )
    args.update(kwargs)
    return pl.Trainer(**args)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _trainable_names(strategy: str, names: list[str]) -> set[str]:
    if strategy == "sft":
        return set(names)
    if strategy == "full":  # the velocity-scale head gets no PPO gradient and stays as pretrained
        return {n for n in names if not n.startswith("heads.scale.")}
    if strategy == "decoder":
        return {n for n in names if n.startswith(("cross_attention.", "heads.")) and not n.startswith("heads.scale.")}
    return {n for n in names if n.startswith(("cross_attention.residual.", "cross_attention.gate_"))}


@pytest.mark.parametrize("strategy", ["ram", "full", "decoder", "sft"])
def test_each_strategy_trains_exactly_its_parameters(pretrained: pathlib.Path, tmp_path: pathlib.Path, strategy: str) -> None:
    module = PostTrainModule(str(pretrained), strategy=strategy, **TINY_RUN)
    names = [n for n, _ in module.policy.named_parameters()]
    expected = _trainable_names(strategy, names)
    assert {n for n, p in module.policy.named_parameters() if p.requires_grad} == expected
    before_policy, before_value = _snapshot(module.policy), _snapshot(module.value_head)
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=SimulatorRollouts(**TINY_DATA))

    grouped = {id(p): g["name"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    policy_ids = {id(p): n for n, p in module.policy.named_parameters()}
    assert {policy_ids[i] for i, g in grouped.items() if g == "policy"} == expected
    assert all(grouped.get(id(p)) == "value" for p in module.value_head.parameters()) == (strategy != "sft")
    assert len(grouped) == len(expected) + (0 if strategy == "sft" else len(list(module.value_head.parameters())))

    after = _snapshot(module.policy)
    changed = {n for n in names if not torch.equal(before_policy[n], after[n])}
    assert changed and changed <= expected
    for name in set(names) - expected:
        assert torch.equal(before_policy[name], after[name]), f"frozen {name} moved"
    value_moved = any(not torch.equal(before_value[n], p) for n, p in module.value_head.named_parameters())
    assert value_moved == (strategy != "sft")
    assert trainer.global_step == 2  # 2 envs x 8 steps in minibatches of 8, one epoch: two optimizer steps


def test_ram_fit_logs_tensorboard_writes_video_checkpoint_and_resumes(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = TINY_RUN
    data = dict(TINY_DATA, batches_per_epoch=2)
    module = PostTrainModule(str(pretrained), **run)
    frozen_before = {n: p.clone() for n, p in module.policy.named_parameters() if not p.requires_grad}
    video = RolloutVideo(every_n_epochs=1, max_steps=12)
    trainer = _trainer(tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), video])
    trainer.fit(module, datamodule=SimulatorRollouts(**data))
    for name, value in frozen_before.items():
        assert torch.equal(value, dict(module.policy.named_parameters())[name]), name
    assert module.policy.cross_attention.gate_out.weight.abs().sum() > 0  # the branch woke up

    log_dir = pathlib.Path(trainer.logger.log_dir)
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/reward_terms/progress",
        "train/reward_terms/collision",
        "train/reward/step",
        "ppo/kl_approx",
        "ppo/clip_fraction",
        "ppo/entropy",
        "ppo/explained_variance",
        "ppo/reference_kl",  # the RAM's drift from the pretrained policy, logged at penalty weight 0 too
    ):
        assert tag in scalars, tag
    assert max(e.value for e in events.Scalars("ppo/reference_kl")) > 0
    assert "rollout/frames" in events.Tags()["images"]
    assert (log_dir / "videos" / "epoch_0000.mp4").stat().st_size > 0

    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["s2e_policy"]["ram"] == {"gate_bias": True, "branch_input": "queries"} and saved["s2e_policy"]["strategy"] == "ram"
    policy, timing, _ = load_policy_from_checkpoint(last)
    assert isinstance(policy.cross_attention, ResidualAttentionModule) and timing == TimingSpec()
    obs = {"frames": torch.randint(0, 256, (2, 5, 3, 32, 32), dtype=torch.uint8), "goal": torch.tensor([[5.0, 1.0, 0.0], [9.0, 0.0, 1.0]])}
    with torch.no_grad():
        torch.testing.assert_close(policy(**obs)["scores"], module.policy(**obs)["scores"])

    resumed = PostTrainModule(str(pretrained), **run)
    trainer2 = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer2.fit(resumed, datamodule=SimulatorRollouts(**data), ckpt_path=str(last))
    assert trainer2.current_epoch == 2 and trainer2.global_step == 2 * trainer.global_step

    wrong = PostTrainModule(str(pretrained), strategy="full", **TINY_RUN)
    with pytest.raises(ValueError, match="with RAM"):
        _trainer(tmp_path / "wrong", max_epochs=2).fit(wrong, datamodule=SimulatorRollouts(**data), ckpt_path=str(last))

    # a run written before 2026-12 (RAM input gate on the whole query) resumes only with that RAM
    old = torch.load(last, weights_only=True)
    old["s2e_policy"]["ram"] = {"gate_bias": True}
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="branch_input 'gated'"):
        _trainer(tmp_path / "old", max_epochs=3).fit(
            PostTrainModule(str(pretrained), **run), datamodule=SimulatorRollouts(**data), ckpt_path=str(tmp_path / "old.ckpt")
        )
    gated = PostTrainModule(str(pretrained), ram={"branch_input": "gated"}, **run)
    _trainer(tmp_path / "old", max_epochs=3).fit(gated, datamodule=SimulatorRollouts(**data), ckpt_path=str(tmp_path / "old.ckpt"))


def test_a_checkpoint_that_does_not_match_the_experiment_is_a_clear_error(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(TimingMismatchError, match="control_dt"):
        PostTrainModule(str(pretrained), timing={**TimingSpec().to_dict(), "control_dt": 0.05})
    with pytest.raises(ValueError, match="image_size"):
        PostTrainModule(str(pretrained), image_size=(64, 64))
    _anchors(spread=0.3).save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="not the anchors"):
        PostTrainModule(str(pretrained), anchors_path=str(tmp_path / "other.npz"))
    PostTrainModule(str(pretrained), anchors_path=str(pretrained.parent / "anchors.npz"), timing=TimingSpec().to_dict(), image_size=(32, 32))
    with pytest.raises(ValueError, match="unknown post-training strategy"):
        PostTrainModule(str(pretrained), strategy="lora")
    with pytest.raises(ValueError, match="not an S2E policy checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
        PostTrainModule(str(tmp_path / "foreign.ckpt"))


def test_fit_through_the_cli_with_the_experiment_yaml(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    overrides = {
        "model": {"init_args": {"pretrained": str(pretrained), "ppo": {"epochs": 1, "minibatch_size": 8, "lr": 1e-3, "target_kl": None}}},
        "data": {"init_args": TINY_DATA},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "default_root_dir": str(tmp_path),
            "enable_progress_bar": False,
            "logger": {"init_args": {"save_dir": str(tmp_path)}},
        },
    }
    cli = S2ECLI(args=["fit", "--config", str(ROOT / "experiments" / "posttrain.yaml"), "--config", json.dumps(overrides)])
    assert isinstance(cli.model, PostTrainModule) and cli.model.strategy == "ram" and cli.trainer.global_step >= 1
    last = pathlib.Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    policy, _, _ = load_policy_from_checkpoint(last)
    assert isinstance(policy.cross_attention, ResidualAttentionModule)

    # resuming merges the checkpoint's hyper-parameters (config dataclasses stored as plain dicts) back into the config
    resumed = S2ECLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "experiments" / "posttrain.yaml"),
            "--config",
            json.dumps(overrides),
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            str(last),
        ]
    )
    assert resumed.model.ppo == PPOConfig(epochs=1, minibatch_size=8, lr=1e-3, target_kl=None)
    assert resumed.trainer.global_step == 2 * cli.trainer.global_step


def _configured_cli(pretrained: pathlib.Path, root: pathlib.Path, *overrides: str) -> S2ECLI:
    """The shipped post-training experiment with ``overrides``, configured but not run."""
    args = ["--config", str(ROOT / "experiments" / "posttrain.yaml"), "--model.init_args.pretrained", str(pretrained), *overrides]
    return S2ECLI(args=[*args, "--trainer.default_root_dir", str(root), "--trainer.logger", "false"], run=False)


def test_env_settings_given_on_the_command_line_reach_the_training_env(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Reward weights, scene generation and crowd are experiment knobs: a CLI override of one field
    changes that field only, in the env the collector steps, and the checkpoint keeps plain values."""
    cli = _configured_cli(
        pretrained,
        tmp_path,
        "--model.init_args.rewards.collision",
        "5.0",
        "--model.init_args.rewards.progress",
        "2.0",
        "--model.init_args.scene.num_obstacles",
        "[7, 7]",
        "--model.init_args.crowd.robot_strength",
        "4.0",
    )
    model = cli.model
    assert model.env_config.rewards == RewardConfig(collision=5.0, progress=2.0)
    assert model.env_config.crowd == CrowdConfig(robot_strength=4.0)
    assert model.hparams["rewards"]["collision"] == 5.0  # a plain dict: checkpoints load with weights_only=True

    env = model.rollout_spec.env_factory(2, 0)()  # what SimulatorRollouts' collector steps
    try:
        assert env.base_env.scene_config.num_obstacles == (7, 7)  # the obstacle task keeps the configured count
        td = env.reset()
        for _ in range(3):
            td = env.step(td.set("action", torch.tensor([[1.0, 0.0], [0.5, 0.3]])))
            nxt = td["next"]
            weights = RewardConfig(collision=5.0, progress=2.0).weights()
            expected = sum(w * nxt["reward_terms", term] for term, w in weights.items())
            torch.testing.assert_close(nxt["reward"], expected)
            td = step_mdp(td)
        assert float(nxt["reward_terms", "progress"].abs().sum()) > 0  # the weighted sum was not trivially zero
    finally:
        env.close()


def test_a_task_mix_on_the_command_line_trains_one_batch_on_several_tasks(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """``--model.init_args.task [empty, both]``: the collector's env draws each scene's task from
    the list, and the checkpoint keeps the list as plain data."""
    cli = _configured_cli(pretrained, tmp_path, "--model.init_args.task", "[empty, both]")
    assert cli.model.hparams["task"] == ["empty", "both"]
    env = cli.model.rollout_spec.env_factory(16, 1)()
    try:
        td = env.reset()
        assert [t.name for t in env.base_env.tasks] == ["empty", "both"]
        assert cli.model.task_names == ["empty", "both"] and "task" in td.keys()  # training logs split outcomes by it
        drawn = env.base_env.scenes.last_tasks
        obstacles = env.base_env.world.scene.obstacle_mask.sum(1)
        assert set(drawn.tolist()) == {0, 1} and (obstacles[torch.as_tensor(drawn) == 0] == 0).all()
    finally:
        env.close()


def test_the_data_module_collects_with_what_the_model_hands_it(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """SimulatorRollouts does not look the model up: the model attaches its RolloutSpec in setup."""
    with pytest.raises(RuntimeError, match="nothing to collect with"):
        SimulatorRollouts(**TINY_DATA).train_dataloader()
    module = PostTrainModule(str(pretrained), **TINY_RUN)
    assert module.rollout_spec.features is module.policy and module.rollout_spec.env is module.env_config
    with pytest.raises(TypeError, match="learns from SimulatorRollouts"):
        _trainer(tmp_path).fit(module, datamodule=BoringDataModule())


def test_gae_bootstraps_from_the_next_row_and_re_encodes_only_episode_ends() -> None:
    values = torch.arange(8, dtype=torch.float32).reshape(2, 4, 1)
    done = torch.zeros(2, 4, 1, dtype=torch.bool)
    done[0, 1] = True
    batch = TensorDict(
        {"state_value": values, "next": TensorDict({"done": done, "marker": torch.arange(8).reshape(2, 4) + 100}, batch_size=[2, 4])},
        batch_size=[2, 4],
    )
    seen = []

    def value_of(obs: TensorDict) -> torch.Tensor:
        seen.append(obs["marker"].tolist())
        return -obs["marker"][:, None].float()

    following = next_state_values(batch, value_of)
    assert seen == [[101, 103, 107]]  # env 0 step 1 (episode end), the last step of each env
    assert following[:, :, 0].tolist() == [[1.0, -101.0, 3.0, -103.0], [5.0, 6.0, 7.0, -107.0]]


def test_multisync_collector_runs_workers_and_pushes_new_weights_before_each_batch() -> None:
    from s2e.control import ControllerLimits
    from s2e.rl.actor import ValueHead, build_actor_critic

    policy = _tiny_policy()
    modules = build_actor_critic(policy, ValueHead(32), 0.3, ControllerLimits(), encoder_trainable=False)
    config = NavEnvConfig(task="empty", image_size=(32, 32))
    # the frozen-encoder path PostTrainModule collects with: each worker's env encodes its own frames
    collector = make_collector(env_factory(config, 2, 0, features=policy), modules.feature_policy, 2 * 2 * 4, kind="multisync", workers=2, seed=3)
    try:
        stream = iter(collector)
        first = next(stream)
        assert first.shape[-1] == 4 and first.reshape(-1, 4).shape == (4, 4)
        assert "frames" not in first.keys() and first["frame_features"].shape[-2:] == (5, 32)
        with torch.no_grad():
            for param in modules.critic.parameters():
                param.add_(1.0)
        second = next(stream)
        recomputed = modules.critic(second.reshape(-1).select("context", "goal"))["state_value"]
        torch.testing.assert_close(second.reshape(-1)["state_value"], recomputed)
        assert not torch.allclose(first.reshape(-1)["state_value"], second.reshape(-1)["state_value"])
    finally:
        collector.shutdown()


DDP_SCRIPT = """
import sys, torch, lightning.pytorch as pl
from s2e.posttrain import PostTrainModule, SimulatorRollouts
from s2e.rl.ppo import PPOConfig

class Dump(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, index):
        if index == 0:
            goal = trainer.datamodule._rollouts.collector.env.base_env.world.scene.goal
            torch.save(goal.clone(), f"{sys.argv[2]}/goal{trainer.global_rank}.pt")

    def on_train_end(self, trainer, module):
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, f"{sys.argv[2]}/rank{trainer.global_rank}.pt")

if __name__ == "__main__":
    module = PostTrainModule(sys.argv[1], ppo=PPOConfig(epochs=1, minibatch_size=16))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[Dump()])
    trainer.fit(module, datamodule=SimulatorRollouts(num_envs=2, steps_per_batch=8, batches_per_epoch=2))
"""


@pytest.mark.slow
def test_ddp_ranks_collect_different_scenes_and_keep_identical_weights(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "ddp.py"), str(pretrained), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients were averaged over ranks
    assert rank0["policy.cross_attention.gate_out.weight"].abs().sum() > 0
    assert not torch.equal(*(torch.load(tmp_path / f"goal{r}.pt", weights_only=True) for r in (0, 1)))  # seed + 1000 * rank


def test_target_kl_stops_a_batchs_ppo_passes_once_the_policy_left_the_trust_region(pretrained: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Full fine-tuning at a large lr: without a KL target all 3 passes x 2 minibatches step; with one,
    the first minibatch (KL 0 to the collecting policy) steps and a later one, beyond the target, stops."""
    steps = {}
    for target in (None, 1e-4):
        module = PostTrainModule(str(pretrained), strategy="full", ppo=PPOConfig(epochs=3, minibatch_size=8, lr=1e-2, target_kl=target, reference_kl=0.0))
        trainer = _trainer(tmp_path / str(target))
        trainer.fit(module, datamodule=SimulatorRollouts(**TINY_DATA))
        steps[target] = trainer.global_step
    assert steps[None] == 6
    assert 1 <= steps[1e-4] < 6
    with pytest.raises(ValueError, match="target_kl"):
        PPOConfig(target_kl=0.0)
