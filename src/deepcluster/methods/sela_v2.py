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
from deepcluster.methods.base import cluster_sizes
from deepcluster.methods.predict import Prediction, transport
from deepcluster.methods.v2 import SetLabels, V2Config, V2Method, prototypes_of, unit_rows
from deepcluster.models import PrototypeHead
from deepcluster.seeding import derive_seed


@dataclass
class SeLaV2Config(V2Config):
    """SeLa-v2: V2Config plus Sinkhorn-Knopp."""

    epsilon: float = option(
        0.05, "entropic regularisation of the transport: labels from exp(score / epsilon)", check=number(0)
    )
    tolerance: float = option(0.1, "Sinkhorn's stopping rule (as sela.tolerance)", check=number(0))


class SeLaV2(V2Method):
    """Labels: Sinkhorn-Knopp over each set's prototype scores (a pass or the bank; equal-size clusters);
    prototypes: trained."""

    name = "sela-v2"
    summary = "Sinkhorn-Knopp labels of the projections, trained prototypes, multi-crop (Asano et al., 2020)"
    Config = SeLaV2Config
    trainable_prototypes = True

    @property
    def settings(self) -> SeLaV2Config:
        return self.config.section(self.section())

    def assign_set(
        self, projections: np.ndarray, heads: nn.Module | None, index: int, seed: int
    ) -> SetLabels:
        """The equal-size transport of the set's scores against its current (trained) prototypes."""
        if not isinstance(heads, PrototypeHead):
            raise RuntimeError("SeLa-v2 scores the projections against its prototypes: heads first")
        prototypes = nn.functional.normalize(heads.prototypes[index].detach().float().cpu(), dim=1)
        scores = torch.from_numpy(projections) @ prototypes.T
        log_probs = torch.log_softmax(scores.double() / self.settings.epsilon, dim=1).numpy()
        k = prototypes.shape[0]
        result = sinkhorn_labels(
            log_probs,
            1.0,
            tolerance=self.settings.tolerance,
            chunk_rows=default_chunk_rows(k),
            device=self.device,
            seed=derive_seed(seed, "set", index),
            resident_mb=resident_budget_mb(self.device),
        )
        stats = {
            "sinkhorn_iters": float(result.iterations),
            "n_empty": cluster_sizes(result.labels, k)["n_empty"],
        }
        return SetLabels(result.labels, prototypes.numpy(), stats, state={"log_beta": result.log_beta})

    def assignment_state(self, sets: list[SetLabels]) -> dict[str, Any]:
        """The prototypes, each set's column scaling (log_beta) and the epsilon of the scores."""
        return {**super().assignment_state(sets), "epsilon": float(self.settings.epsilon)}

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """Each set's transport rule on the scores / epsilon with the set's column scaling."""
        z, prototypes, epsilon = unit_rows(values), prototypes_of(state), float(state["epsilon"])
        columns = []
        for s in range(len(prototypes)):
            scores = z @ prototypes[s].astype(np.float64).T / epsilon
            log_probs = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
            columns.append(transport(log_probs, 1.0, state["log_beta"][s]))
        return Prediction.from_columns(columns, "probability")
