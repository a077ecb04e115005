"""`deepcluster evaluate`: judge a run directory or a checkpoint the way the papers do, beside random init.

For the trained network and (by default) the same architecture at random initialisation: weighted k-NN on the
L2-normalised embedding (train split as memory, test split as queries) and linear probes on every conv layer.
For a run directory, also the clustering metrics of its final labels against the true labels, a cluster-to-class
table and the NMI between consecutive epochs. Results go to the terminal and to a JSON file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.cluster.knn import weighted_knn_accuracies
from deepcluster.cluster.metrics import cluster_table, clustering_report
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import DataError, ImageSource, open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision
from deepcluster.engine.features import extract_features
from deepcluster.evaluate.linear_probe import ProbeConfig, linear_probe
from deepcluster.evaluate.options import EvalConfig
from deepcluster.evaluate.results import format_table, write_json
from deepcluster.evaluate.stability import epoch_stability
from deepcluster.models import build_backbone
from deepcluster.models.backbone import Backbone
from deepcluster.models.loading import LoadedModel, load_model
from deepcluster.seeding import seed_everything
from deepcluster.storage import RunDir, RunLock


def _labelled_images(
    source: ImageSource, size: int, input_size: int, progress: bool
) -> tuple[torch.Tensor, np.ndarray]:
    if source.labels is None:
        raise DataError(f"{source.description}: has no true labels; k-NN and probes need a labelled data set")
    decoded = decode_images(source, size, progress=progress, inner_size=input_size)
    return decoded.images, np.asarray(source.labels)[decoded.indices]


def evaluation_splits(
    config: EvalConfig, model: LoadedModel
) -> tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray], str]:
    """(train images, labels), (test images, labels) and a description of where they came from."""
    data = config.data if config.data is not None else model.data
    train_source = open_source(data, split=config.split or model.split)
    train = _labelled_images(train_source, model.resize, model.input_size, config.progress)
    if config.test_data is not None or config.test_split is not None:
        test_source = open_source(
            config.test_data if config.test_data is not None else data, split=config.test_split
        )
        test = _labelled_images(test_source, model.resize, model.input_size, config.progress)
        return train, test, f"train: {train_source.description}; test: {test_source.description}"
    order = np.random.default_rng(config.seed).permutation(len(train[1]))
    cut = len(order) // 5
    test_rows, train_rows = np.sort(order[:cut]), np.sort(order[cut:])
    split = (train[0][train_rows], train[1][train_rows]), (train[0][test_rows], train[1][test_rows])
    return *split, f"{train_source.description}, 80/20 hold-out (seed {config.seed})"


def _network_scores(
    backbone: Backbone,
    model: LoadedModel,
    train: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    config: EvalConfig,
) -> dict[str, Any]:
    precision = Precision(torch.device(config.device), "fp32")
    backbone = backbone.to(precision.device).eval()
    view = ClusterView(model.input_size, model.mean, model.std)

    def embed(images: torch.Tensor) -> np.ndarray:
        return extract_features(
            backbone, images, view, config.batch_size, precision, progress=config.progress
        )

    scores: dict[str, Any] = {}
    knn = weighted_knn_accuracies(
        embed(train[0]), train[1], embed(test[0]), test[1], ks=config.knn_ks, temperature=config.temperature
    )
    scores.update({f"knn{k}": value for k, value in knn.items()})
    if config.probe_epochs > 0:
        probe_config = ProbeConfig(
            epochs=config.probe_epochs,
            batch_size=config.probe_batch_size,
            lr=config.probe_lr,
            seed=config.seed,
        )
        result = linear_probe(
            backbone, *train, *test, config=probe_config, device=config.device, progress=config.progress
        )
        scores.update({f"probe_{tap}": value for tap, value in result.top1.items()})
        scores["probe_best"] = max(result.top1.values())
    return scores


def _run_clustering(run_dir: Path) -> dict[str, Any] | None:
    run = RunDir(run_dir)
    if not run.labels_csv.is_file():
        return None
    table = run.read_labels()
    if table.true_labels is None:
        return None
    labels, true = table.labels[:, 0], table.true_labels
    return {
        "metrics": clustering_report(labels, true),
        "clusters": cluster_table(labels, true),
        "stability": [{"epoch": epoch, "nmi_prev": value} for epoch, value in epoch_stability(run_dir)],
    }


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate `config.target`; returns everything measured (also written as JSON, see `EvalConfig.out`).
    A run directory is held (its lock) while it is evaluated."""
    if RunDir(config.target).config.is_file():
        with RunLock(config.target, "evaluate"):
            return _evaluate(config)
    return _evaluate(config)


def _evaluate(config: EvalConfig) -> dict[str, Any]:
    model = load_model(config.target, config.input_size, trusted=config.trust_checkpoint)
    train, test, described = evaluation_splits(config, model)
    networks = {"trained": _network_scores(model.backbone, model, train, test, config)}
    if config.baseline:
        seed_everything(config.seed)
        random_net = build_backbone(model.arch, sobel=model.sobel, input_size=model.input_size)
        networks["random_init"] = _network_scores(random_net, model, train, test, config)
    results: dict[str, Any] = {
        "target": str(config.target),
        "arch": model.arch,
        "input_size": model.input_size,
        "data": described,
        "settings": dataclasses.asdict(config),
        "networks": networks,
    }
    if model.report is not None:
        results["checkpoint_report"] = model.report
    if model.run_dir is not None:
        results["clustering"] = _run_clustering(model.run_dir)
    out = Path(config.out) if config.out else _default_out(config.target, model)
    results["output"] = str(write_json(out, results))
    return results


def _default_out(target: str, model: LoadedModel) -> Path:
    if model.run_dir is not None:
        return model.run_dir / "evaluation.json"
    return Path(target).with_suffix(".evaluation.json")


def format_results(results: dict[str, Any]) -> str:
    """The terminal view: one table of the networks side by side, then the clustering of a run."""
    networks = results["networks"]
    measures = list(next(iter(networks.values())))
    rows = [{"measure": m, **{name: scores.get(m) for name, scores in networks.items()}} for m in measures]
    parts = [f"{results['target']} ({results['arch']}, {results['input_size']} px); {results['data']}"]
    parts.append(format_table(rows, ["measure", *networks]))
    clustering = results.get("clustering")
    if clustering:
        metrics = [{"metric": name, "value": value} for name, value in clustering["metrics"].items()]
        parts.append(format_table(metrics, ["metric", "value"], title="clusters against the true classes"))
        top = clustering["clusters"][:10]
        parts.append(format_table(top, title="largest clusters"))
    parts.append(f"written to {results['output']}")
    return "\n\n".join(parts)
