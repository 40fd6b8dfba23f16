"""Fine-tuning strategies of the paper's ablation: which part of the pretrained policy learns.

* ``ram`` (default): wrap the cross-attention in a Residual Attention Module; only its residual copy
  and gates learn, every pretrained weight stays bit-identical.
* ``full``: every policy parameter learns (PPO); the paper sees it collapse from forgetting.
* ``decoder``: the cross-attention block and the heads learn; encoder, fusion and queries stay.
* ``sft``: supervised fine-tuning of every policy parameter on expert rollouts in the simulator.

Under PPO the velocity-scale head (``heads.scale``) gets no gradient: the scale is not part of the
sampled event (see :mod:`s2e.rl.trajectory_distribution`), so ``full`` and ``decoder`` leave it as pretrained
and do not hand it to the optimizer (which also keeps DDP free of unused parameters). The value head
always learns under the PPO strategies; it is not part of the policy.
"""

from __future__ import annotations

from typing import Literal, Optional

from torch import nn

from s2e.model.policy import S2EPolicy
from s2e.model.ram import RAMConfig, ResidualAttentionModule, wrap_with_ram

Strategy = Literal["ram", "full", "decoder", "sft"]
STRATEGIES: tuple[str, ...] = ("ram", "full", "decoder", "sft")


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown post-training strategy {strategy!r}; choose from {list(STRATEGIES)}")
    return strategy


def apply_strategy(policy: S2EPolicy, strategy: str, ram: Optional[RAMConfig] = None) -> list[nn.Parameter]:
    """Prepare ``policy`` for ``strategy`` (in place: wrap with RAM, set requires_grad) and return
    the policy parameters the optimizer may update; everything else gets ``requires_grad=False``."""
    check_strategy(strategy)
    if strategy == "ram" and not isinstance(policy.cross_attention, ResidualAttentionModule):
        wrap_with_ram(policy, ram)
    no_ppo_gradient = {id(p) for p in policy.heads.scale.parameters()}
    if strategy == "sft":
        trainable = list(policy.parameters())
    elif strategy == "full":
        trainable = [p for p in policy.parameters() if id(p) not in no_ppo_gradient]
    elif strategy == "decoder":
        trainable = [p for p in (*policy.cross_attention.parameters(), *policy.heads.parameters()) if id(p) not in no_ppo_gradient]
    else:
        trainable = policy.cross_attention.trainable_parameters()
    keep = {id(p) for p in trainable}
    for param in policy.parameters():
        param.requires_grad_(id(param) in keep)
    return trainable


def encoder_trainable(strategy: str) -> bool:
    """Whether the context (encoder + fusion) changes during training, so PPO must recompute it."""
    return check_strategy(strategy) in ("full", "sft")
