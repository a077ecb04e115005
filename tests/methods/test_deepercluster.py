"""DeeperCluster: hierarchical k-means, rotation targets, the grouped sub-class heads, and whole runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from deepcluster import load_config
from deepcluster.api import resume, train
from deepcluster.cli import main
from deepcluster.cluster import assign, kmeans, kmeans_on_sample, pca_torch
from deepcluster.cluster.hierarchical import hierarchical_kmeans
from deepcluster.data.rotations import decode_targets, encode_targets, rotate_quarter_turns
from deepcluster.data.samplers import hierarchical_cluster_sample, uniform_cluster_sample
from deepcluster.engine.loop import Trainer
from deepcluster.methods import DeepCluster, DeeperCluster
from deepcluster.methods.clustering import pca_device
from deepcluster.methods.deepercluster import hierarchical_loss
from deepcluster.models import HierarchicalHead
from deepcluster.storage import load_checkpoint
from synthetic import small_config, write_pattern_npz

N_IMAGES = 160


def blobs(n_per: int = 60, n_blobs: int = 4, dim: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(n_blobs, dim))
    return np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)


def faiss_fit(points: np.ndarray, k: int, seed: int):
    return kmeans(points, k, n_iter=10, seed=seed)


def deeper_config(data: Path | str, out: Path, **sections: dict):
    config = small_config(
        data, out, deepercluster={"super_clusters": 2, **sections.pop("deepercluster", {})}, **sections
    )
    config.method = "deepercluster"
    return config


# ---------------------------------------------------------------- hierarchical k-means


def test_every_sub_cluster_lies_in_one_super_cluster_and_every_id_is_used() -> None:
    x = blobs()
    result = hierarchical_kmeans(x, n_super=2, k_total=8, seed=3, fit=faiss_fit)
    assert result.k_sub == 4 and result.labels.shape == (240,)
    assert np.array_equal(result.labels // 4, result.super_labels)
    assert np.array_equal(result.labels % 4, result.sub_labels)
    for cluster in range(8):
        assert len(np.unique(result.super_labels[result.labels == cluster])) == 1
    assert np.array_equal(np.unique(result.labels), np.arange(8))
    stats = result.stats()
    assert stats["n_empty"] == 0 and stats["smallest"] >= 1 and stats["largest"] + 7 <= 240
    # The super level alone: 2-means of all rows with the given seed.
    assert np.array_equal(result.super_labels, faiss_fit(x, 2, 3).labels)
    again = hierarchical_kmeans(x, n_super=2, k_total=8, seed=3, fit=faiss_fit)
    assert np.array_equal(again.labels, result.labels)


def test_one_super_cluster_is_flat_kmeans() -> None:
    x = blobs(seed=1)
    result = hierarchical_kmeans(x, n_super=1, k_total=6, seed=9, fit=faiss_fit)
    flat = faiss_fit(x, 6, 9)
    assert np.array_equal(result.labels, flat.labels)
    assert result.stats()["kmeans_loss_sub"] == pytest.approx(flat.loss)


def test_a_super_cluster_smaller_than_k_sub_gets_one_sub_cluster_per_point() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(60, 4)), 1000.0 + rng.normal(size=(2, 4))]).astype(np.float32)
    result = hierarchical_kmeans(x, n_super=2, k_total=8, seed=0, fit=faiss_fit)
    far = int(result.super_labels[-1])
    assert result.short == {far: 2}
    assert sorted(result.sub_labels[-2:]) == [0, 1]
    assert result.stats()["n_empty"] == 2 and result.stats()["n_short_super"] == 1
    assert np.isnan(result.centroids[far * 4 + 2 :][:2]).all()


def test_kmeans_on_a_sample_labels_every_row() -> None:
    x = blobs(n_per=100)
    seen: list[int] = []

    def fit(rows: np.ndarray):
        seen.append(len(rows))
        return kmeans(rows, 4, n_iter=10, seed=7)

    result = kmeans_on_sample(x, 4, 60, seed=7, fit=fit)
    assert seen == [60] and result.labels.shape == (400,)
    rows = np.sort(np.random.default_rng(7).choice(400, size=60, replace=False))
    trained = kmeans(x[rows], 4, n_iter=10, seed=7)
    assert result.n_empty == 0 and result.loss == trained.loss
    np.testing.assert_array_equal(result.centroids, trained.centroids)
    np.testing.assert_array_equal(result.labels, assign(x, trained.centroids)[0])
    np.testing.assert_array_equal(kmeans_on_sample(x, 4, 60, seed=7, fit=fit).labels, result.labels)
    whole = kmeans_on_sample(x, 4, None, seed=7, fit=fit)
    assert seen[-1] == 400 and np.array_equal(whole.labels, kmeans(x, 4, n_iter=10, seed=7).labels)
    with pytest.raises(ValueError, match="smaller than k"):
        kmeans_on_sample(x, 4, 3, seed=7, fit=fit)


# ---------------------------------------------------------------- rotations and targets


@pytest.mark.parametrize("n_rotations", [4, 1])
def test_targets_round_trip_for_every_cluster_and_turn(n_rotations: int) -> None:
    k, k_sub = 12, 4
    clusters, turns = torch.meshgrid(torch.arange(k), torch.arange(n_rotations), indexing="ij")
    clusters, turns = clusters.flatten(), turns.flatten()
    super_class, sub_class = encode_targets(clusters, turns, k_sub, n_rotations)
    assert int(super_class.max()) == 3 * n_rotations - 1 and int(sub_class.max()) == k_sub - 1
    assert torch.equal(super_class // n_rotations, clusters // k_sub)
    assert len({(int(a), int(b)) for a, b in zip(super_class, sub_class, strict=True)}) == k * n_rotations
    back, back_turns = decode_targets(super_class, sub_class, k_sub, n_rotations)
    assert torch.equal(back, clusters) and torch.equal(back_turns, turns)


def test_quarter_turns_are_counter_clockwise_and_four_make_identity() -> None:
    square = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    turned = rotate_quarter_turns(square, torch.tensor([1]))
    assert turned.view(2, 2).tolist() == [[2.0, 4.0], [1.0, 3.0]]
    images = torch.randn(7, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    turns = torch.tensor([0, 1, 2, 3, 3, 1, 2])
    out = rotate_quarter_turns(images, turns)
    for i in range(7):
        assert torch.equal(out[i], torch.rot90(images[i], int(turns[i]), dims=(-2, -1)))
    x = images
    for _ in range(4):
        x = rotate_quarter_turns(x, turns)
    assert torch.equal(x, images) and torch.equal(rotate_quarter_turns(images, torch.full((7,), 4)), images)
    with pytest.raises(ValueError, match="square"):
        rotate_quarter_turns(torch.zeros(1, 3, 4, 5), torch.zeros(1, dtype=torch.int64))


class Seen(nn.Module):
    """A backbone that keeps what it is given (and gives it back flattened)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return x.flatten(1)


def _rotated(
    method: DeeperCluster, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network input and targets `forward` makes of a batch (generator seeded 5)."""
    backbone = Seen()
    heads = HierarchicalHead(3 * 8 * 8, 4 * method.n_rotations, 4, generator=torch.Generator().manual_seed(0))
    (super_logits, _), targets = method.forward(
        backbone, heads, images, labels, torch.Generator().manual_seed(5)
    )
    assert super_logits.shape == (len(images), 4 * method.n_rotations)
    return backbone.inputs[0], targets


def test_forward_rotates_and_pairs_the_turn_with_the_cluster(tmp_path: Path) -> None:
    method = DeeperCluster(deeper_config(tmp_path / "unused.npz", tmp_path / "run"))
    images = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 8
    x, targets = _rotated(method, images, labels)
    assert targets.dtype == torch.int64 and targets.shape == (16, 2) and int(targets[:, 0].max()) < 8
    clusters, turns = decode_targets(targets[:, 0], targets[:, 1], 4, 4)
    assert torch.equal(clusters, labels) and len(turns.unique()) > 1
    for i in range(16):
        assert torch.equal(x[i], torch.rot90(images[i], int(turns[i]), dims=(-2, -1)))
    again, _ = _rotated(method, images, labels)
    assert torch.equal(again, x)

    method.config.deepercluster.rotations = False
    x, targets = _rotated(method, images, labels)
    assert torch.equal(x, images) and torch.equal(targets[:, 0], labels // 4)


# ---------------------------------------------------------------- heads and loss


def test_grouped_sub_heads_equal_a_per_image_computation() -> None:
    state = torch.get_rng_state()
    head = HierarchicalHead(6, 4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)  # the generator alone drives the init
    assert head.sub_weight.shape == (4, 3, 6) and torch.count_nonzero(head.sub_bias) == 0
    assert 0.003 < float(head.sub_weight.detach().std()) < 0.03
    with torch.no_grad():
        head.sub_bias.copy_(torch.randn(4, 3))
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    supers = torch.tensor([3, 0, 3, 1, 0, 3, 1])
    super_logits, sub_logits = head(x, supers)
    h = torch.relu(x)
    torch.testing.assert_close(super_logits, h @ head.super_head.weight.T + head.super_head.bias)
    for i in range(7):
        s = int(supers[i])
        torch.testing.assert_close(sub_logits[i], head.sub_weight[s] @ h[i] + head.sub_bias[s])
    sub_logits.sum().backward()
    assert torch.count_nonzero(head.sub_weight.grad[2]) == 0  # no image of super-class 2
    assert torch.count_nonzero(head.sub_weight.grad[3]) > 0


def test_the_loss_is_the_sum_of_two_cross_entropies_by_hand() -> None:
    super_logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    sub_logits = torch.tensor([[0.2, 0.1], [-0.5, 1.5]])
    targets = torch.tensor([[1, 0], [0, 1]])

    def nll(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    by_hand = (nll([1.0, 2.0, 0.5], 1) + nll([0.0, -1.0, 3.0], 0)) / 2
    by_hand += (nll([0.2, 0.1], 0) + nll([-0.5, 1.5], 1)) / 2
    loss = hierarchical_loss((super_logits.bfloat16(), sub_logits), targets)
    assert loss.dtype == torch.float32
    assert float(hierarchical_loss((super_logits, sub_logits), targets)) == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        hierarchical_loss((super_logits, sub_logits), targets[:, 0])


# ---------------------------------------------------------------- sampler


def test_every_super_cluster_gets_an_equal_share_then_its_sub_clusters() -> None:
    # k_sub = 4: super-cluster 0 has its 4 sub-clusters (sizes 50, 5, 20, 1), super-cluster 1 only cluster 5.
    labels = np.repeat([0, 1, 2, 3, 5], [50, 5, 20, 1, 30])
    draws = hierarchical_cluster_sample(labels, k_sub=4, n_samples=800, seed=0)
    counts = np.bincount(labels[draws], minlength=8)
    assert counts.tolist() == [100, 100, 100, 100, 0, 400, 0, 0]
    assert np.array_equal(draws, hierarchical_cluster_sample(labels, 4, 800, seed=0))
    odd = np.bincount(labels[hierarchical_cluster_sample(labels, 4, 7, seed=1)] // 4, minlength=2)
    assert sorted(odd.tolist()) == [3, 4]
    # No empty sub-cluster: the same draws as the uniform sampler over the global ids.
    full = np.random.default_rng(0).integers(0, 8, size=200)
    assert np.array_equal(hierarchical_cluster_sample(full, 4, 300, 2), uniform_cluster_sample(full, 300, 2))


# ---------------------------------------------------------------- the method's assignment


def test_one_super_cluster_without_rotations_assigns_deepclusters_labels(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(N_IMAGES, 32)).astype(np.float32)
    config = deeper_config(tmp_path / "unused.npz", tmp_path / "run", deepercluster={"super_clusters": 1})
    deeper = DeeperCluster(config).assign(features, None, seed=11)
    flat = DeepCluster(config).assign(features, None, seed=11)
    assert np.array_equal(deeper.labels, flat.labels) and deeper.n_classes == 8
    config.cluster.kmeans_sample = 40
    sampled = DeeperCluster(config).assign(features, None, seed=11)
    assert sampled.labels.shape == (N_IMAGES,) and sampled.stats["n_empty"] == 0
    assert not np.array_equal(sampled.labels, flat.labels)


def test_the_torch_pca_gives_the_numpy_pcas_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    features = blobs(n_per=40, n_blobs=8, dim=8, seed=1) @ rng.normal(size=(8, 48)).astype(np.float32)
    features += rng.normal(scale=0.05, size=features.shape).astype(np.float32)
    config = deeper_config(tmp_path / "unused.npz", tmp_path / "run")
    config.cluster.pca_dim = 8
    fits: list[str] = []
    torch_fit = pca_torch.torch_principal_axes
    monkeypatch.setattr(pca_torch, "torch_principal_axes", lambda *a: fits.append("torch") or torch_fit(*a))
    labels = {}
    for backend in ("numpy", "torch"):
        config.cluster.pca_backend = backend
        flat, deeper = (
            DeepCluster(config).assign(features, None, seed=5),
            DeeperCluster(config).assign(features, None, seed=5),
        )
        labels[backend] = (flat.labels, deeper.labels)
    assert fits == ["torch", "torch"]  # only pca_backend=torch fitted on the torch path, for both methods
    np.testing.assert_array_equal(labels["torch"][0], labels["numpy"][0])
    np.testing.assert_array_equal(labels["torch"][1], labels["numpy"][1])
    truth = np.repeat(np.arange(8), 40)  # and the flat k-means finds the blobs
    assert normalized_mutual_info_score(truth, labels["torch"][0]) == pytest.approx(1.0)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # auto: torch on a CUDA run only
    config.cluster.pca_backend = "auto"
    assert pca_device(config.cluster, cpu) is None and pca_device(config.cluster, cuda) == cuda


# ---------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("deeper-data") / "patterns.npz", n=N_IMAGES)


@pytest.fixture(scope="module")
def deeper_run(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deeper") / "run"
    train(deeper_config(npz_data, out))
    return out


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_deepercluster_run_writes_its_files_and_hierarchical_labels(deeper_run: Path) -> None:
    first, second = records(deeper_run)
    assert first["label_updates"] == 1 and second["label_updates"] == 0  # reclustered every 3 epochs
    assert first["n_super"] == 2 and first["kmeans_loss_sub"] > 0 and first["n_empty"] == 0
    epoch_0 = np.load(deeper_run / "labels" / "epoch_000.npy")  # the labels the first record describes
    assert first["nmi_true"] == normalized_mutual_info_score(np.arange(N_IMAGES) % 4, epoch_0)
    assert math.isfinite(second["loss"])
    with (deeper_run / "labels.csv").open() as handle:
        clusters = np.array([int(row["cluster"]) for row in csv.DictReader(handle)])
    assert clusters.shape == (N_IMAGES,) and clusters.min() == 0 and clusters.max() == 7
    ckpt = load_checkpoint(deeper_run / "checkpoints" / "last.pt")
    dim = ckpt["heads"]["super_head.weight"].shape[1]
    assert ckpt["heads"]["super_head.weight"].shape == (8, dim)  # 2 super-clusters x 4 rotations
    assert ckpt["heads"]["sub_weight"].shape == (8, 4, dim)


class Interrupt(Exception):
    """Stands for a kill."""


def test_resume_after_a_kill_reaches_the_same_weights(
    npz_data: Path, deeper_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (1, 3):  # one step after the last checkpoint
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(deeper_config(npz_data, out), on_step=kill).fit()
    resume(out)
    a = load_checkpoint(deeper_run / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    for part in ("model", "heads"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    assert [r["loss"] for r in records(deeper_run)] == [r["loss"] for r in records(out)]
    assert (deeper_run / "labels.csv").read_text() == (out / "labels.csv").read_text()


def test_method_deepercluster_from_the_command_line(npz_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        ["train", "--method", "deepercluster", "--super-clusters", "2", "--no-rotations", "--data", str(npz_data),
         "--out", str(out), "--k", "8", "--epochs", "1", "--batch-size", "32", "--set", "cluster.pca_dim=16",
         "--set", "run.report=false", "--no-progress", "-q"]
    )  # fmt: skip
    assert code == 0 and "nmi_true=" in capsys.readouterr().out
    config = load_config(out / "config.yaml")
    assert config.method == "deepercluster" and config.deepercluster.super_clusters == 2
    assert not config.deepercluster.rotations
    heads = load_checkpoint(out / "checkpoints" / "last.pt")["heads"]
    assert heads["super_head.weight"].shape[0] == 2 and heads["sub_weight"].shape[:2] == (2, 4)
    code = main(["train", "--method", "deepercluster", "--super-clusters", "3", "--k", "8",
                 "--data", str(npz_data), "--out", str(tmp_path / "bad"), "--no-progress"])  # fmt: skip
    assert code == 2 and "multiple" in capsys.readouterr().err
