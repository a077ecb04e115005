"""A trained run, loaded from its directory: its network in eval mode with the run's view, device and precision,
and what puts new images into its clusters (RUN/assigner.pt).

>>> run = deepcluster.load("runs/mine")                                        # doctest: +SKIP
>>> run.embed(["a.jpg", "b.png"]).shape, run.assign(["a.jpg"]).labels          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster.preprocess import l2_normalize
from deepcluster.config import ConfigError, TrainConfig, load_config
from deepcluster.data.views import ClusterView
from deepcluster.engine.conv_kernels import use_recorded_kernels
from deepcluster.engine.device import Precision, resolve_device, resolve_precision
from deepcluster.engine.features import extract_features
from deepcluster.methods import METHODS, Assignment, ExtractingMethod, Method
from deepcluster.methods.predict import Prediction, top2
from deepcluster.models import build_backbone
from deepcluster.models.backbone import Backbone
from deepcluster.seeding import torch_generator
from deepcluster.storage import RunDir, open_run_dir
from deepcluster.use.images import Batch, ImageLike, as_items, batches_of_items
from deepcluster.use.search import Hits, RunIndex, open_index


@dataclass
class TrainedRun:
    """What `load` gives: the run's settings, method, network and assigner."""

    run_dir: RunDir
    config: TrainConfig
    method: Method
    backbone: Backbone
    heads: nn.Module | None
    assigner: dict[str, Any] | None
    precision: Precision

    @property
    def view(self) -> ClusterView:
        data = self.config.data
        return ClusterView(int(data.input_size), tuple(data.mean), tuple(data.std))  # type: ignore[arg-type]

    @property
    def label_view(self) -> ClusterView:
        """The view the run's labels were made on (`cluster.label_view`: colour hidden or not)."""
        grayscale = self.config.cluster.label_view == "grayscale"
        return dataclasses.replace(self.view, grayscale=grayscale)

    @property
    def resize(self) -> int:
        return int(self.config.data.resize or self.config.data.input_size)

    @property
    def batch_size(self) -> int:
        """The run's extraction batch (the same batches give the same values, bit for bit)."""
        return int(self.config.optim.batch_size)

    def batches(self, images: ImageLike | Sequence[ImageLike]) -> Iterator[Batch]:
        """`images` decoded as the run decoded its own, a batch at a time (an unreadable one is an error)."""
        return batches_of_items(
            as_items(images), self.resize, int(self.config.data.input_size), self.batch_size
        )

    # ------------------------------------------------------------ per batch
    def _forward(self, forward: Any, images: torch.Tensor, view: ClusterView | None = None) -> np.ndarray:
        return extract_features(forward, images, view or self.view, self.batch_size, self.precision)

    def embed_batch(self, images: torch.Tensor, layer: str | None = None) -> np.ndarray:
        """float32 [B, D] L2-normalised: the backbone's embedding, or conv tap `layer` average-pooled."""
        if layer is None:
            values = self._forward(self.backbone, images)
        else:
            try:
                self.backbone.check_tap([layer])
            except ValueError as error:
                raise ConfigError(f"--layer {layer}: {error}") from None
            values = self._forward(
                lambda x: self.backbone.forward_taps(x, layer)[layer].mean(dim=(2, 3)), images
            )
        return l2_normalize(values)

    def assign_batch(self, images: torch.Tensor) -> Prediction:
        """Each image's cluster in every label set of the run, with its score and the runner-up."""
        method = self.method
        if isinstance(method, ExtractingMethod) and self.assigner is not None:
            extract = lambda x: method.extract(self.backbone, self.heads, x)  # noqa: E731
            values = self._forward(extract, images, self.label_view)
            return method.predict(values, self.assigner["state"])
        if self.heads is None:
            raise ConfigError(
                f"{self.run_dir.root}: the run kept neither an assigner nor heads to assign with"
            )
        logits = self._forward(
            lambda x: self.heads(self.backbone(x)), images
        )  # labels given: the heads' argmax
        # A head's classes: a transfer run's come from its labels.csv, not cluster.k.
        n_out = int(getattr(self.heads, "n_out", self.config.cluster.k))
        per_head = logits.reshape(len(logits), -1, n_out)
        probs = torch.softmax(torch.from_numpy(per_head).double(), dim=-1).numpy()
        return Prediction.from_columns(
            [top2(probs[:, h], largest=True) for h in range(probs.shape[1])], "probability"
        )

    # ------------------------------------------------------------ whole inputs
    def embed(self, images: ImageLike | Sequence[ImageLike], layer: str | None = None) -> np.ndarray:
        """float32 [N, D], one L2-normalised embedding per image (see `embed_batch`)."""
        parts = [self.embed_batch(batch.images, layer) for batch in self.batches(images)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def assign(self, images: ImageLike | Sequence[ImageLike]) -> Prediction:
        """Labels, scores and runners-up of every image (see `assign_batch`)."""
        parts = [self.assign_batch(batch.images) for batch in self.batches(images)]
        if not parts:
            raise ConfigError("assign: no images given")
        fields = ("labels", "score", "runner_up", "runner_score")
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        return Prediction(**joined, score_name=parts[0].score_name)

    def index(self, kind: str = "auto", rebuild: bool = False, progress: bool = False) -> RunIndex:
        """The search index over the run's own images (RUN/index/, built or rebuilt when it does not fit)."""
        return open_index(self, kind, rebuild, progress)

    def search(self, images: ImageLike | Sequence[ImageLike], k: int = 10) -> Hits:
        """The `k` images of the run most similar to each of `images` (cosine of the embeddings, best first)."""
        index, names, parts = self.index(), [], []
        for batch in self.batches(images):
            names += batch.names
            parts.append(self.embed_batch(batch.images))
        if not parts:
            raise ConfigError("search: no images given")
        return index.search(np.concatenate(parts), k, names)


def checkpoint_heads(method: Method, feature_dim: int, checkpoint: dict[str, Any]) -> nn.Module | None:
    """A run's heads as the engine built them (the method's `build_heads` for the checkpoint's labels, one head
    per label column, and classes) with the checkpoint's weights, in eval mode; None before the first labels."""
    if checkpoint.get("heads") is None:
        return None
    labels = (checkpoint.get("loop") or {}).get("labels")
    labels = np.zeros(1, dtype=np.int64) if labels is None else np.asarray(labels)
    assignment = Assignment(labels=labels, n_classes=int(checkpoint["n_classes"]))
    heads = method.build_heads(feature_dim, assignment, torch_generator(0))  # weights overwritten below
    heads.load_state_dict(checkpoint["heads"])
    return heads.eval()


def load(run_dir: str | Path, device: str = "auto", trust_checkpoint: bool = False) -> TrainedRun:
    """The trained run in `run_dir`: its network (eval mode) on `device` (auto: the run's own when present,
    else the CPU) at the run's precision, its heads and its assigner. Checkpoints load without running code
    (`trust_checkpoint` also loads older formats)."""
    run = open_run_dir(run_dir, needs_checkpoint=True)
    config = load_config(run.config, METHODS)
    chosen = resolve_device(config.run.device if device == "auto" else device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        chosen = torch.device("cpu")
    precision = Precision(chosen, resolve_precision(str(config.run.precision), chosen))
    checkpoint = run.load_checkpoint(trust_checkpoint)
    model = config.model
    backbone = build_backbone(str(model.arch), sobel=model.sobel, input_size=int(config.data.input_size))
    backbone.load_state_dict(checkpoint["model"])
    backbone = backbone.to(chosen).to(memory_format=torch.channels_last).eval()
    use_recorded_kernels(backbone, str(config.run.cpu_conv), precision)
    method = METHODS.build(config, chosen)
    heads = checkpoint_heads(method, backbone.feature_dim, checkpoint)
    heads = None if heads is None else heads.to(chosen)
    return TrainedRun(run, config, method, backbone, heads, run.read_assigner(trust_checkpoint), precision)
