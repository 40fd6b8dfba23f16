"""The S2E policy as plain nn.Modules (no Lightning): encoders, fusion, anchor decoder, heads."""

from s2e.model.decoder import AnchorCrossAttention, AnchorQueries
from s2e.model.policy import PRESETS, PolicyConfig, S2EPolicy, best_trajectory_metres, modes_metres

__all__ = ["AnchorCrossAttention", "AnchorQueries", "PRESETS", "PolicyConfig", "S2EPolicy", "best_trajectory_metres", "modes_metres"]
