"""Classification heads put on top of backbone embeddings (DeepCluster's top layer)."""

from __future__ import annotations

import torch
from torch import nn

HEAD_INIT_STD = 0.01


def linear_head(in_dim: int, n_out: int, generator: torch.Generator | None = None) -> nn.Linear:
    """A freshly initialised top layer: ``Linear(in_dim, n_out)`` with weight ~ N(0, 0.01) and bias 0.

    When ``generator`` is given it alone drives the init (the global RNG is left untouched).
    """
    for name, value in (("in_dim", in_dim), ("n_out", n_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"linear_head: {name} must be a positive integer, got {value!r}")
    layer = nn.utils.skip_init(nn.Linear, in_dim, n_out)  # no default init: keeps the global RNG untouched
    with torch.no_grad():
        nn.init.normal_(layer.weight, mean=0.0, std=HEAD_INIT_STD, generator=generator)
        nn.init.zeros_(layer.bias)
    return layer


class ClassifierHead(nn.Module):
    """ReLU followed by a :func:`linear_head`: what DeepCluster puts on top of the pre-ReLU embedding."""

    def __init__(self, in_dim: int, n_out: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.linear = linear_head(in_dim, n_out, generator=generator)

    @property
    def in_dim(self) -> int:
        """Size of the embedding the head expects."""
        return self.linear.in_features

    @property
    def n_out(self) -> int:
        """Number of outputs (clusters / classes)."""
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``[B, n_out]`` logits for ``[B, in_dim]`` embeddings."""
        return self.linear(self.relu(x))


class MultiHead(nn.Module):
    """ReLU followed by `n_heads` independent linear heads of `n_out` outputs each (SeLa's multi-task top).

    The heads are stored as one ``Linear(in_dim, n_heads * n_out)`` (one matrix product for all of them); each
    block of `n_out` rows is initialised like a :func:`linear_head`. Returns logits of shape ``[B, n_heads, n_out]``.
    """

    def __init__(
        self, in_dim: int, n_out: int, n_heads: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads <= 0:
            raise ValueError(f"MultiHead: n_heads must be a positive integer, got {n_heads!r}")
        self.relu = nn.ReLU()
        self.linear = linear_head(in_dim, n_heads * n_out, generator=generator)
        self.n_heads = n_heads
        self.n_out = n_out

    @property
    def in_dim(self) -> int:
        """Size of the embedding the heads expect."""
        return self.linear.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``[B, n_heads, n_out]`` logits for ``[B, in_dim]`` embeddings."""
        return self.linear(self.relu(x)).unflatten(1, (self.n_heads, self.n_out))
