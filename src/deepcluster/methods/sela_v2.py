"""SeLa-v2 (the SwAV paper's appendix): each set's labels are the equal-size optimal-transport assignment
(Sinkhorn-Knopp) of the bank's scores against that set's prototypes, which are trained (see `methods/v2.py`
for the shared network, crops and bank)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster.sinkhorn import default_chunk_rows, resident_budget_mb, sinkhorn_labels
from deepcluster.config import option
from deepcluster.config.options import number
from deepcluster.methods.v2 import V2Config, V2Method
from deepcluster.seeding import derive_seed


@dataclass
class SelaV2Config(V2Config):
    """SeLa-v2: V2Config plus Sinkhorn-Knopp."""

    epsilon: float = option(
        0.05, "entropic regularisation of the transport: labels from exp(score / epsilon)", check=number(0)
    )
    tolerance: float = option(0.1, "Sinkhorn's stopping rule (as sela.tolerance)", check=number(0))


class SelaV2(V2Method):
    """Labels: Sinkhorn-Knopp over each set's prototype scores (a pass or the bank; equal-size clusters);
    prototypes: trained."""

    name = "sela-v2"
    summary = "Sinkhorn-Knopp labels of the projections, trained prototypes, multi-crop (Asano et al., 2020)"
    Config = SelaV2Config
    trainable_prototypes = True

    def assign_bank(self, bank: np.ndarray, index: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        settings = self.config.section(self.section())
        assert self.heads is not None, "SeLa-v2 scores the bank against its prototypes: heads first"
        prototypes = nn.functional.normalize(self.heads.prototypes[index].detach().float().cpu(), dim=1)
        scores = torch.from_numpy(bank) @ prototypes.T
        log_probs = torch.log_softmax(scores.double() / settings.epsilon, dim=1).numpy()
        k = prototypes.shape[0]
        result = sinkhorn_labels(
            log_probs, 1.0, tolerance=settings.tolerance, chunk_rows=default_chunk_rows(k), device=self.device,
            seed=derive_seed(seed, "set", index), resident_mb=resident_budget_mb(self.device),
        )  # fmt: skip
        n_empty = int((np.bincount(result.labels, minlength=k) == 0).sum())
        return (
            result.labels,
            prototypes.numpy(),
            {"sinkhorn_iters": float(result.iterations), "n_empty": n_empty, "log_beta": result.log_beta},
        )

    def update_heads(self, heads: nn.Module, assignment: Any) -> None:
        """The prototypes are trained: new labels leave them as they are."""
        return None
