"""The Residual Attention Module (RAM) of RL post-training (the S2E paper's stage 2; README, "RL post-training").

RAM wraps the pretrained anchor cross-attention block psi. The paper writes it

    Q' = psi(Q; K, V; Theta_D) + Z_out( psi( Z_in(Q); K, V; Theta_l ) ),

and this module computes it with the input gate as a zero-initialised *residual* on the queries
(ControlNet's form, where the zero convolution sits on what is added to the copy's input, never on
the whole input):

    Q' = psi(Q; K, V; Theta_D) + Z_out( psi( Q + Z_in(Q); K, V; Theta_l ) ).

* ``frozen``: the pretrained block (Theta_D), its parameters never receive gradients;
* ``residual``: a trainable copy of it (Theta_l), initialised from the pretrained weights so the
  branch starts from a block that already reads the context well;
* ``gate_in`` / ``gate_out``: linear maps (Z_in, Z_out) whose weights and biases start at zero, so at
  step 0 the branch adds exactly ``0`` and the wrapped policy's outputs are bit-identical to the
  pretrained ones. The output gate learns first (its gradient is the residual block's output);
  the input gate follows once ``gate_out`` is non-zero.

Why ``Q + Z_in(Q)`` and not ``Z_in(Q)``: with ``Z_in = 0`` every anchor's query entering the copy is
the same vector (zero), so the copy gives every anchor the same output and ``Z_out`` adds one
vector to all anchor features. The score head is linear, so all scores shift alike: the anchor
probabilities cannot change, and a loss on which anchor wins even gives ``Z_out`` a zero gradient
(sum over anchors of (p_m - y_m) = 0). Only the waypoint heads could pull the gates off zero, and
re-ranking anchors waited for that. Fed the real queries, the copy distinguishes the anchors from
the first update, and ``Z_in`` still learns an input-side correction of the queries.

Post-training checkpoints written before this form stored ``ram = {"gate_bias": ...}``
with the same state-dict keys; :meth:`RAMConfig.from_dict` reads such a config as
``branch_input="gated"``, so they load and compute exactly what they were trained with.

Same call signature as :class:`s2e.model.decoder.AnchorCrossAttention`, so it replaces
``S2EPolicy.cross_attention`` in place (:func:`wrap_with_ram`), and it is TorchScript-scriptable so
a post-trained policy exports like a pretrained one.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from s2e.config_parsing import dataclass_from_dict
from s2e.model.decoder import AnchorCrossAttention

BRANCH_INPUTS = ("queries", "gated")


@dataclass
class RAMConfig:
    """How the residual branch is built (plain types: stored in post-training checkpoints).

    Attributes:
        gate_bias: give the zero-initialised gates a (zero-initialised) bias.
        branch_input: what the trainable copy reads: ``"queries"`` (``Q + Z_in(Q)``, the default)
            or ``"gated"`` (``Z_in(Q)``, the form of checkpoints written before ``branch_input`` existed; see the
            module docstring for why it cannot re-rank anchors until ``Z_in`` grows).
    """

    gate_bias: bool = True
    branch_input: str = "queries"

    def __post_init__(self) -> None:
        if self.branch_input not in BRANCH_INPUTS:
            raise ValueError(f"RAMConfig.branch_input must be one of {list(BRANCH_INPUTS)}, got {self.branch_input!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "RAMConfig":
        """A config from experiment options (``model.ram``): unset fields take today's defaults."""
        return dataclass_from_dict(cls, options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RAMConfig":
        """A config stored in a checkpoint; one written before ``branch_input`` existed had the gated input."""
        return dataclass_from_dict(cls, {"branch_input": "gated", **data})


class ResidualAttentionModule(nn.Module):
    """Frozen pretrained cross-attention + gated trainable copy (see the module docstring)."""

    def __init__(self, block: AnchorCrossAttention, config: Optional[RAMConfig] = None) -> None:
        super().__init__()
        if not isinstance(block, AnchorCrossAttention):
            raise TypeError(f"RAM wraps an AnchorCrossAttention block, got {type(block).__name__}")
        config = config or RAMConfig()
        self.config = config
        self.reads_queries = config.branch_input == "queries"
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
        return self.frozen(queries, context, context_padding_mask) + self.branch(queries, context, context_padding_mask)

    def branch(self, queries: Tensor, context: Tensor, context_padding_mask: Optional[Tensor] = None) -> Tensor:
        """The gated residual branch alone, ``Z_out(psi(Q + Z_in(Q); K, V; Theta_l))``: RL adds it to
        a stored frozen output (``s2e.rl.actor.ResidualDecoder``)."""
        branch_input = self.gate_in(queries)
        if self.reads_queries:
            branch_input = queries + branch_input
        return self.gate_out(self.residual(branch_input, context, context_padding_mask))

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
