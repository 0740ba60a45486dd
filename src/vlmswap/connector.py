"""MLP connectors ("projectors") from vision tokens to LLM embeddings.

Prismatic's two shapes (`prismatic/util/nn_utils.py`; ../shared/reference/prismatic_spec.md 1.3):
- `mlp2` = gelu-mlp: Linear(d -> llm), GELU, Linear(llm -> llm); LLaVA-1.5's mlp2x_gelu.
- `mlp3` = fused-gelu-mlp: Linear(d -> 4d), GELU, Linear(4d -> llm), GELU, Linear(llm -> llm);
  the paper's "(f)" connector.
Both act on every token separately (no pooling) and use exact (erf) GELU. Initialisation is
seeded with the vision width, as Prismatic does with `torch.manual_seed(embed_dim)` just before
building the projector, so every cell with the same width starts from the same connector.
"""

from __future__ import annotations

import torch
from torch import nn


class Connector(nn.Module):
    def __init__(self, kind: str, vision_dim: int, llm_dim: int):
        super().__init__()
        if kind == "mlp2":
            layers = [nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        elif kind == "mlp3":
            hidden = 4 * vision_dim
            layers = [nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim), nn.GELU(),
                      nn.Linear(llm_dim, llm_dim)]
        else:
            raise ValueError(f"unknown connector {kind!r}; use mlp2 or mlp3")
        self.kind = kind
        self.projector = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projector(tokens)


def build_connector(kind: str, vision_dim: int, llm_dim: int) -> Connector:
    """Build a connector with Prismatic's deterministic init, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(vision_dim)
        return Connector(kind, vision_dim, llm_dim)
