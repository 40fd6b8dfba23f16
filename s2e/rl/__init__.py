"""RL post-training pieces (stage 2), free of Lightning: the anchor-mixture distribution for TorchRL
(``trajectory_distribution``), the actor / critic modules (``actor``), fine-tuning strategies
(``strategy``), envs, collectors and what a learner hands its collector (``collect``), advantages
(``advantage``), the PPO step and its settings (``ppo``), the SFT labels and step (``sft``) and
episode statistics (``stats``, ``evaluate``). ``s2e.posttrain`` puts them together inside Lightning."""
