"""What `deepcluster evaluate` does, declared once: each setting with its default, help, flag and check (the
command line's flags and their checks come from here; `evaluate.runner.evaluate` takes it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepcluster.config.options import option, whole


def _every_k_positive(ks: Any) -> str | None:
    whole_numbers = all(isinstance(k, int) and not isinstance(k, bool) for k in ks)
    return None if whole_numbers and all(k >= 1 for k in ks) else "every k must be a whole number >= 1"


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    target: str
    """A run directory (its checkpoints/last.pt) or a checkpoint file (ours or the released DeepCluster layout)."""
    data: str | None = option(
        None, "labelled images for the k-NN memory and probe training (default: the run's)", flag="--data"
    )
    split: str | None = option(None, "split of --data (default: its training split)", flag="--split")
    test_data: str | None = option(
        None, "labelled test images (default: a 20% hold-out of --data)", flag="--test-data"
    )
    test_split: str | None = option(None, "split of the test data, e.g. test", flag="--test-split")
    input_size: int | None = option(
        None, "network input size of a checkpoint file (default 224)", flag="--input-size"
    )
    knn_ks: tuple[int, ...] = option(
        (20, 200),
        "neighbours of the k-NN (default 20 200)",
        flag="--knn-k",
        metavar="KNN_K",
        check=_every_k_positive,
    )
    temperature: float = option(0.07, "temperature of the weighted k-NN")
    probe_epochs: int = option(
        10, "epochs of each linear probe (default 10; 0: none)", flag="--probe-epochs", check=whole(0)
    )
    probe_batch_size: int = option(256, "batch of the linear probes")
    probe_lr: float = option(0.01, "learning rate of the linear probes")
    baseline: bool = option(
        True,
        "evaluate the same architecture at random initialisation too, as a baseline",
        flag="--no-baseline",
    )
    seed: int = option(0, "random seed (the hold-out, the probes, the random baseline)", flag="--seed")
    batch_size: int = option(256, "batch of the embedding passes")
    device: str = option("cpu", "cpu or cuda", flag="--device")
    progress: bool = option(True, "progress bars")
    out: str | None = option(
        None, "JSON output (default: RUN/evaluation.json, or beside a checkpoint file)", flag="--out"
    )
    trust_checkpoint: bool = option(
        False,
        "also load checkpoints that need a full unpickle (older formats; it can run code from the file)",
    )
