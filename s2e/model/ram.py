"""The Residual Attention Module (RAM) of RL post-training (PAPER.md, stage 2).

RAM wraps the pretrained anchor cross-attention block psi:

    Q' = psi(Q; K, V; Theta_D) + Z_out( psi( Z_in(Q); K, V; Theta_l ) )

* ``frozen``: the pretrained block (Theta_D), its parameters never receive gradients;
* ``residual``: a trainable copy of it (Theta_l), initialised from the pretrained weights so the
  branch starts from a block that already reads the context well;
* ``gate_in`` / ``gate_out``: linear maps (Z_in, Z_out) whose weights and biases start at zero, so at
  step 0 the branch adds exactly ``0`` and the wrapped policy's outputs are bit-identical to the
  pretrained ones. The output gate learns first (its gradient is the residual block's output);
  the input gate follows once ``gate_out`` is non-zero, as in zero-convolution adapters.

Same call signature as :class:`s2e.model.decoder.AnchorCrossAttention`, so it replaces
``S2EPolicy.cross_attention`` in place (:func:`wrap_with_ram`), and it is TorchScript-scriptable so
a post-trained policy exports like a pretrained one.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from s2e.model.decoder import AnchorCrossAttention
from s2e.registry import dataclass_from_dict


@dataclass
class RAMConfig:
    """How the residual branch is built (plain types: stored in post-training checkpoints).

    Attributes:
        gate_bias: give the zero-initialised gates a (zero-initialised) bias.
    """

    gate_bias: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RAMConfig":
        return dataclass_from_dict(cls, data)


class ResidualAttentionModule(nn.Module):
    """Frozen pretrained cross-attention + gated trainable copy (see the module docstring)."""

    def __init__(self, block: AnchorCrossAttention, config: Optional[RAMConfig] = None) -> None:
        super().__init__()
        if not isinstance(block, AnchorCrossAttention):
            raise TypeError(f"RAM wraps an AnchorCrossAttention block, got {type(block).__name__}")
        config = config or RAMConfig()
        self.config = config
        d_model = block.norm.normalized_shape[0]
        self.residual = copy.deepcopy(block)
        self.frozen = block
        for param in self.frozen.parameters():
            param.requires_grad_(False)
        for param in self.residual.parameters():
            param.requires_grad_(True)
        self.gate_in = nn.Linear(d_model, d_model, bias=config.gate_bias)
        self.gate_out = nn.Linear(d_model, d_model, bias=config.gate_bias)
        for gate in (self.gate_in, self.gate_out):
            nn.init.zeros_(gate.weight)
            if gate.bias is not None:
                nn.init.zeros_(gate.bias)

    def forward(self, queries: Tensor, context: Tensor, context_padding_mask: Optional[Tensor] = None) -> Tensor:
        base = self.frozen(queries, context, context_padding_mask)
        branch = self.residual(self.gate_in(queries), context, context_padding_mask)
        return base + self.gate_out(branch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The residual copy and both gates: what the ``ram`` strategy optimizes."""
        return [*self.residual.parameters(), *self.gate_in.parameters(), *self.gate_out.parameters()]


def wrap_with_ram(policy: nn.Module, config: Optional[RAMConfig] = None) -> ResidualAttentionModule:
    """Replace ``policy.cross_attention`` by a RAM around it (in place) and return the RAM.

    A policy that is already wrapped is refused: a second wrap would freeze the first branch.
    """
    block = getattr(policy, "cross_attention", None)
    if isinstance(block, ResidualAttentionModule):
        raise ValueError("the policy's cross-attention is already wrapped by a RAM")
    ram = ResidualAttentionModule(block, config)
    policy.cross_attention = ram
    return ram
