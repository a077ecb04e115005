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


class HierarchicalHead(nn.Module):
    """DeeperCluster's top: ReLU, then a super-class head and, per super-class, a head over its sub-classes.

    The super-class head is a :func:`linear_head` of `n_super` outputs; the `n_super` sub-class heads of `n_sub`
    outputs each are stored together as ``sub_weight`` [n_super, n_sub, in_dim] and ``sub_bias`` [n_super, n_sub],
    initialised like :func:`linear_head` (weight ~ N(0, 0.01), bias 0), drawing from `generator` only.
    """

    every_parameter_used = False
    """A step trains only the sub-class heads of the super-classes in its batch (DistributedDataParallel must
    look for unused parameters; modules without this attribute use all of theirs)."""

    def __init__(
        self, in_dim: int, n_super: int, n_sub: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        for name, value in (("n_super", n_super), ("n_sub", n_sub)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"HierarchicalHead: {name} must be a positive integer, got {value!r}")
        self.relu = nn.ReLU()
        self.super_head = linear_head(in_dim, n_super, generator=generator)
        weight = torch.empty(n_super, n_sub, in_dim)
        nn.init.normal_(weight, mean=0.0, std=HEAD_INIT_STD, generator=generator)
        self.sub_weight = nn.Parameter(weight)
        self.sub_bias = nn.Parameter(torch.zeros(n_super, n_sub))

    @property
    def in_dim(self) -> int:
        """Size of the embedding the heads expect."""
        return self.super_head.in_features

    @property
    def n_super(self) -> int:
        """Number of super-classes (and of sub-class heads)."""
        return self.super_head.out_features

    @property
    def n_sub(self) -> int:
        """Outputs of each sub-class head."""
        return self.sub_weight.shape[1]

    def forward(self, x: torch.Tensor, super_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, n_super], [B, n_sub])`` logits for ``[B, in_dim]`` embeddings: row i's sub-class logits come
        from the head of super-class ``super_targets[i]``. One matrix product per super-class in the batch."""
        h = self.relu(x)
        super_logits = self.super_head(h)
        order = torch.argsort(super_targets, stable=True)
        heads, counts = torch.unique_consecutive(super_targets[order], return_counts=True)
        groups = h[order].split(counts.tolist())
        pieces = [
            nn.functional.linear(group, self.sub_weight[s], self.sub_bias[s])
            for group, s in zip(groups, heads.tolist(), strict=True)
        ]
        sub_logits = torch.cat(pieces)[torch.argsort(order)]
        return super_logits, sub_logits


class PrototypeHead(nn.Module):
    """The v2 methods' top (SwAV paper): a projection MLP to an L2-normalised embedding z, and `n_sets` sets of
    `k` unit-norm prototypes scoring it by cosine similarity.

    Projection: Linear(in_dim, hidden), BatchNorm1d, ReLU, Linear(hidden, out_dim) (hidden 0: one Linear;
    out_dim None: none, z is the normalised embedding).
    Prototypes ``[n_sets, k, out_dim]`` are a parameter; `trainable=False` freezes them (DeepCluster-v2 sets
    them to the centroids of a spherical k-means and never trains them). The linear layers are initialised
    like torch's default but drawing from `generator` only. ``forward`` returns (z [B, out_dim], scores
    [B, n_sets, k]).
    """

    def __init__(
        self,
        in_dim: int,
        k: int,
        n_sets: int,
        hidden: int = 2048,
        out_dim: int | None = 128,
        trainable: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("k", k), ("n_sets", n_sets), ("out_dim", out_dim or in_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"PrototypeHead: {name} must be a positive integer, got {value!r}")
        layers: list[nn.Module] = []
        if hidden and out_dim:
            layers += [
                _seeded_linear(in_dim, hidden, generator),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            ]
        if out_dim:
            layers.append(_seeded_linear(hidden or in_dim, out_dim, generator))
        self.projection = nn.Sequential(*layers)  # empty: the identity
        start = torch.randn(n_sets, k, out_dim or in_dim, generator=generator)
        self.prototypes = nn.Parameter(nn.functional.normalize(start, dim=-1), requires_grad=trainable)

    @property
    def n_sets(self) -> int:
        return int(self.prototypes.shape[0])

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """The L2-normalised projection z of the backbone's embedding, [B, out_dim], in float32 (unit length
        under bf16 autocast too: the bank and the clustering expect unit vectors)."""
        return nn.functional.normalize(self.projection(embedding).float(), dim=1)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.project(embedding)
        prototypes = nn.functional.normalize(self.prototypes, dim=-1).to(z.dtype)
        return z, torch.einsum("bd,skd->bsk", z, prototypes)

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Replace the prototypes ([n_sets, k, out_dim]; normalised here)."""
        self.prototypes.copy_(nn.functional.normalize(prototypes.to(self.prototypes), dim=-1))


def _seeded_linear(in_dim: int, out_dim: int, generator: torch.Generator | None) -> nn.Linear:
    """Linear with torch's default (Kaiming-uniform) init drawn from `generator` alone."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim)
    bound = 1.0 / in_dim**0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer
