"""NavBench through the Lightning CLI: ``python -m s2e test --config experiments/navbench.yaml --ckpt_path CKPT``.

``NavBenchDataModule`` is the suite: its test loader yields batches of episodes, one appearance
domain at a time. ``NavBenchModule`` is the driver: each ``test_step`` runs one batch in a
``NavEnv`` and the epoch end writes the report, logs the metrics as TensorBoard scalars
(``navbench/<domain>/<task>/<metric>``) and renders the traced episodes.

The policy comes from ``--ckpt_path`` (Lightning calls ``on_load_checkpoint`` after ``setup``;
the module rebuilds the policy there with ``s2e.checkpoint.load_policy_from_checkpoint``, the one
loader for every policy checkpoint, and owns no parameters of its own, so Lightning's state-dict
restore has nothing to load), from ``model.init_args.policy_path`` (a checkpoint or an export
folder with ``policy.ts``), is any ONNX navigation policy (``agent: onnx`` with an adapter ``spec``,
``s2e.bench.onnx_agent``), or is a baseline (``agent: expert | straight | random``).

``frames: grey | shuffled`` is the camera ablation (``s2e.bench.report.FRAME_MODES``): the agent
sees uniform grey frames or another episode's frames, so a policy that ignores its camera scores
as with ``real`` frames; the report records the mode and ``tools/navbench_compare.py`` sets the
runs side by side.

Env settings: a run chooses the appearance domains (``data.domains``) and the baselines' render
size; everything else the env is made of is the suite's. The scenes (regenerated from the suite's
seeds and SceneConfig: layout, obstacles, pedestrians), the robot, the TimingSpec, the arrival
radius and the time limits are stored in the suite file (``tools/make_suite.py``), and the crowd's
dynamics and the physics are the simulator's defaults, so the same agent, suite and ``data.num_envs`` give identical numbers in
every run and reports stay comparable. Reward weights do not apply: NavBench scores episodes by
success, route completion and collisions, not by the training reward. A benchmark with other
scenes, robot or timing is a new suite, not a run setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from s2e.bench.agents import AGENTS, Agent, PolicyAgent, build_agent, check_agent_fits
from s2e.bench.metrics import METRICS, EpisodeResult
from s2e.bench.plots import plot_topdown, write_video
from s2e.bench.report import OVERALL, build_report, frames_suffix, write_report
from s2e.bench.runner import EpisodeTrace, check_frames_mode, make_env, run_batch
from s2e.bench.suite import EpisodeSpec, Suite, load_suite
from s2e.control import LOOKAHEAD_TIME
from s2e.sim.appearance import get_domain
from s2e.timing import TimingSpec


class EpisodeBatch:
    """Episodes that run side by side in one env, in one appearance domain (a plain object, so
    Lightning's batch transfer leaves it alone)."""

    def __init__(self, domain: str, episodes: Sequence[EpisodeSpec], first_index: int) -> None:
        self.domain = domain
        self.episodes = list(episodes)
        self.first_index = first_index  # position of the first episode in the domain's run order


def _as_is(item: Any) -> Any:
    return item


class NavBenchDataModule(pl.LightningDataModule):
    """A NavBench suite as test batches.

    Args:
        suite: ``quick`` / ``standard`` (``s2e/bench/suites``) or a path to a suite JSON.
        domains: appearance domains to evaluate in (default: the suite's own domain).
        tasks: only these tasks (default: all the suite has).
        max_episodes_per_task: keep at most this many episodes per task (a faster partial run).
        num_envs: episodes simulated side by side.
    """

    def __init__(
        self,
        suite: str = "quick",
        domains: Optional[list[str]] = None,
        tasks: Optional[list[str]] = None,
        max_episodes_per_task: Optional[int] = None,
        num_envs: int = 16,
    ) -> None:
        super().__init__()
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.suite: Suite = load_suite(suite).select(tasks, max_episodes_per_task)
        self.domains = list(domains) if domains else [self.suite.domain]
        for domain in self.domains:
            get_domain(domain)
        self.num_envs = num_envs
        self.timing: TimingSpec = self.suite.timing

    def batches(self) -> list[EpisodeBatch]:
        episodes = self.suite.episodes
        return [EpisodeBatch(d, episodes[i : i + self.num_envs], i) for d in self.domains for i in range(0, len(episodes), self.num_envs)]

    def pairs_fix(self) -> str:
        """How to make every batch hold 2+ episodes (what ``frames: shuffled`` needs)."""
        episodes = len(self.suite.episodes)
        if episodes < 2:
            return f"the selected suite has {episodes} episode(s): select 2 or more (data.init_args.tasks / max_episodes_per_task)"
        if self.num_envs < 2:
            return "set --data.init_args.num_envs 2 or more"
        n = min((n for n in range(2, episodes + 1) if episodes % n != 1), key=lambda n: abs(n - self.num_envs))
        return f"{episodes} episodes at num_envs={self.num_envs} leave a last batch of 1: set --data.init_args.num_envs {n}"

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.batches(), batch_size=None, shuffle=False, collate_fn=_as_is)


class NavBenchModule(pl.LightningModule):
    """Runs an agent on the data module's suite (see the module docstring).

    Args:
        agent: ``policy`` (from ``--ckpt_path`` or ``policy_path``), ``onnx`` (any ONNX policy through ``spec``),
            ``expert``, ``straight`` or ``random``.
        policy_path: a policy checkpoint or an export folder, instead of ``--ckpt_path``; for ``onnx`` the .onnx file.
        spec: for ``onnx``, the adapter spec (``s2e.bench.onnx_agent``); the report records its sha256 (``run.adapter``).
        name: the agent's name in the report (default: the checkpoint / folder stem or the baseline name,
            plus e.g. `` [grey frames]`` under a camera ablation).
        out_dir: report folder (default: the logger's version folder, else ``artifacts/navbench``).
        image_size: render size for baselines; a policy always gets its own input size.
        lookahead_time: pure-pursuit lookahead (s) of the controller for checkpoint policies.
        frames: what the agent sees as its camera: ``real``, ``grey`` (uniform mid-grey) or ``shuffled``
            (another episode's frames of the same batch; needs every batch to hold 2+ episodes).
            Baselines do not look at frames; the mode is recorded for them all the same.
        videos: episodes per domain written as mp4 (the first episode of each task, in order).
        plots: episodes per domain drawn top-down as PNG (same choice; at least the videos').
        bootstrap_resamples, ci_level, seed: bootstrap settings; ``seed`` also seeds the random agent.
    """

    #: ``--ckpt_path`` names a policy checkpoint another module wrote: its hyper-parameters are not
    #: this module's, so the CLI must not merge them into the model config (see ``s2e.cli``).
    reads_policy_checkpoints = True

    def __init__(
        self,
        agent: str = "policy",
        policy_path: Optional[str] = None,
        name: Optional[str] = None,
        out_dir: Optional[str] = None,
        image_size: tuple[int, int] = (96, 96),
        lookahead_time: float = LOOKAHEAD_TIME,
        frames: str = "real",
        videos: int = 2,
        plots: int = 4,
        bootstrap_resamples: int = 1000,
        ci_level: float = 0.95,
        seed: int = 0,
        spec: Optional[str] = None,
    ) -> None:
        super().__init__()
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r}; known agents: {list(AGENTS)}")
        check_frames_mode(frames)
        self.save_hyperparameters()
        self.strict_loading = False  # the module owns no weights: s2e.checkpoint reads the policy checkpoint
        self.agent: Optional[Agent] = None
        self._results: list[EpisodeResult] = []
        self._traces: list[tuple[str, EpisodeTrace]] = []

    # ------------------------------------------------------------------ the agent
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``--ckpt_path``: rebuild the policy from the checkpoint file Lightning is restoring."""
        if self.hparams.agent != "policy":
            raise ValueError(f"--ckpt_path was given but model.init_args.agent is {self.hparams.agent!r}; use agent: policy")
        self.agent = PolicyAgent.from_checkpoint(self.trainer.ckpt_path, self.hparams.lookahead_time)

    def on_test_start(self) -> None:
        if self.trainer.world_size > 1:
            raise RuntimeError("NavBench runs in one process (episodes run side by side via data.num_envs); use --trainer.devices 1")
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, NavBenchDataModule):
            raise TypeError(f"NavBenchModule runs on a NavBenchDataModule, got {type(datamodule).__name__}")
        check_frames_mode(self.hparams.frames, min(len(b.episodes) for b in datamodule.batches()), fix=datamodule.pairs_fix())
        if self.agent is None:
            self.agent = build_agent(self.hparams.agent, self.hparams.policy_path, self.hparams.seed, self.hparams.lookahead_time, self.hparams.spec)
        check_agent_fits(self.agent, datamodule.suite.timing, datamodule.suite.name)
        if hasattr(self.agent, "to"):
            self.agent.to(self.device)
        self._results, self._traces = [], []

    # ------------------------------------------------------------------ the run
    def _traced(self, batch: EpisodeBatch) -> list[int]:
        """Batch indices of the first episode of each task, up to max(videos, plots) per domain."""
        firsts: dict[str, int] = {}
        for i, e in enumerate(self.trainer.datamodule.suite.episodes):
            firsts.setdefault(e.task, i)
        chosen = list(firsts.values())[: max(self.hparams.videos, self.hparams.plots)]
        return [i - batch.first_index for i in chosen if batch.first_index <= i < batch.first_index + len(batch.episodes)]

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        suite = self.trainer.datamodule.suite
        size = self.agent.image_size or tuple(self.hparams.image_size)
        trace = self._traced(batch)
        # Lightning tests under inference mode, whose tensors have no version counters: the
        # renderer's grid cache would then compare every scene's layout on every step to see
        # which ones changed. Plain no_grad keeps the counters (and that check free).
        with torch.inference_mode(False), torch.no_grad():
            env = make_env(suite, batch.episodes, batch.domain, size, self.device)
            results, traces = run_batch(env, self.agent, batch.episodes, batch.domain, trace, self.hparams.frames)
        self._results += results
        self._traces += [(batch.domain, traces[i]) for i in trace]

    def on_test_epoch_end(self) -> None:
        datamodule: NavBenchDataModule = self.trainer.datamodule
        hp = self.hparams
        name = self._report_name()
        report = build_report(name, datamodule.suite, self._results, hp.bootstrap_resamples, hp.ci_level, hp.seed)
        out = Path(hp.out_dir) if hp.out_dir else Path(self.trainer.log_dir or "artifacts/navbench")
        out.mkdir(parents=True, exist_ok=True)
        report["run"] = {
            "num_envs": datamodule.num_envs,
            "image_size": list(self.agent.image_size or hp.image_size),
            "lookahead_time": hp.lookahead_time,
            "source": hp.policy_path or (str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None),
            "frames": hp.frames,
        }
        if getattr(self.agent, "run_info", None):  # an ONNX agent: its spec and model, by path and sha256
            report["run"]["adapter"] = self.agent.run_info
        report["files"] = self._render_traces(out, datamodule)
        paths = write_report(report, out)
        for domain in report["domains"]:
            summary = report["results"][domain]
            for task, metrics in [*summary["tasks"].items(), (OVERALL, summary["overall"])]:
                for metric in METRICS:
                    value = metrics[metric]["mean"]
                    if value is not None:
                        self.log(f"navbench/{domain}/{task}/{metric}", float(value))
        self.report, self.report_paths = report, paths
        rank_zero_info(f"NavBench report: {paths['md']}")

    def _report_name(self) -> str:
        return self.hparams.name or self.agent.name + frames_suffix(self.hparams.frames)

    def _render_traces(self, out: Path, datamodule: NavBenchDataModule) -> dict[str, list[str]]:
        files: dict[str, list[str]] = {"plots": [], "videos": []}
        fps = 1.0 / datamodule.suite.timing.control_dt
        for domain in datamodule.domains:
            traced = [t for d, t in self._traces if d == domain]
            for k, trace in enumerate(traced):
                r = trace.result
                stem = f"{domain}_{r.episode_id.replace('/', '_')}"
                if k < self.hparams.plots:
                    title = f"{self._report_name()} | {domain} | {r.episode_id}: success={r.success} RC={r.route_completion:.2f} CT={r.collisions}"
                    files["plots"].append(str(plot_topdown(trace, out / f"{stem}.png", title)))
                if k < self.hparams.videos:
                    video = write_video(trace, out / f"{stem}.mp4", fps)
                    if video is not None:
                        files["videos"].append(str(video))
        return files
