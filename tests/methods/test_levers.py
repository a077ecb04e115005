"""The levers of learning within minutes (issue 29): when labels are made and from what view, online targets,
a variance term, no projection head, whitening filters for the first convolution, narrower or wider networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepcluster.config import apply_overrides
from deepcluster.data.views import ClusterView
from deepcluster.engine.loop import Trainer
from deepcluster.methods import METHODS
from deepcluster.methods.base import regular_updates
from deepcluster.methods.v2 import variance_term
from deepcluster.models import PrototypeHead
from deepcluster.models.init import random_patches, whitening_filters
from deepcluster.storage import load_checkpoint
from synthetic import small_config, write_pattern_npz


def _cluster(**values: object):
    return apply_overrides(small_config("unused", Path("unused")), {"cluster": values})


def test_labels_every_n_steps_and_held_for_the_first_part() -> None:
    assert regular_updates(_cluster(), 5, 3, 1) == [0, 5, 10]
    assert regular_updates(_cluster(), 5, 3, 2) == [0, 10]
    assert regular_updates(_cluster(label_every=4), 5, 3, 1) == [0, 4, 8, 12]
    assert regular_updates(_cluster(label_every=4, hold_labels=0.5), 5, 3, 1) == [0, 8, 12]  # 8 >= 7.5
    assert regular_updates(_cluster(hold_labels=0.9), 5, 3, 1) == [0]


def test_a_grayscale_view_hides_colour_with_the_luma_weights() -> None:
    images = torch.tensor([[[[200]], [[100]], [[10]]]], dtype=torch.uint8)  # one pixel, R G B
    colour = ClusterView(1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    gray = ClusterView(1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), grayscale=True)
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 10) / 255
    torch.testing.assert_close(colour(images).flatten(), torch.tensor([200, 100, 10]) / 255.0)
    torch.testing.assert_close(gray(images).flatten(), torch.full((3,), luma))


def test_whitening_filters_respond_with_unit_variance_and_no_correlation() -> None:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, 3, generator=generator)  # correlated colour channels
    inputs = torch.einsum("cd,ndhw->nchw", mixing, torch.randn(64, 3, 12, 12, generator=generator))
    conv = nn.Conv2d(3, 20, kernel_size=2, bias=True)
    assert whitening_filters(inputs, conv, torch.Generator().manual_seed(1)) == 2 * min(10, 12)
    patches = nn.functional.unfold(inputs, 2).transpose(1, 2).reshape(-1, 12).double().numpy()
    patches -= patches.mean(axis=0)
    responses = (
        patches @ conv.weight.detach().double().reshape(20, 12).numpy().T
    )  # independent of torch's conv
    covariance = np.cov(responses[:, :10], rowvar=False)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(patches, rowvar=False)))[::-1][:10]
    eps = 0.01 * np.linalg.eigvalsh(np.cov(patches, rowvar=False)).mean()
    np.testing.assert_allclose(np.diag(covariance), eigenvalues / (eigenvalues + eps), rtol=0.03)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=0.03)
    torch.testing.assert_close(conv.weight[10:], -conv.weight[:10])  # each direction and its negative
    assert torch.count_nonzero(conv.bias) == 0


def test_random_patches_are_the_rows_of_unfold_that_the_same_draw_picks() -> None:
    inputs = torch.randn(5, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    rows = random_patches(inputs, (3, 2), 40, torch.Generator().manual_seed(1))
    columns = nn.functional.unfold(inputs, (3, 2)).transpose(1, 2).reshape(-1, 18)
    picked = torch.randperm(len(columns), generator=torch.Generator().manual_seed(1))[:40]
    torch.testing.assert_close(rows, columns[picked], rtol=0, atol=0)
    assert len(random_patches(inputs, (3, 2), 10_000, torch.Generator())) == len(columns)  # all, when fewer


def test_the_variance_term_is_zero_when_spread_and_the_gap_when_collapsed() -> None:
    spread = torch.cat([torch.eye(4), -torch.eye(4)]).repeat(8, 1)  # +-each axis: mean 0, variance 1/4
    assert float(variance_term(spread)) == 0.0
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(32, 1)
    assert float(variance_term(collapsed)) == pytest.approx(0.5, abs=1e-3)  # 1/sqrt(4) - 0 in every dimension


def test_online_targets_are_the_nearest_prototype_of_the_large_crops_and_no_projection_is_the_embedding() -> (
    None
):
    config = small_config("unused", Path("unused"), method="deepcluster-v2")
    config = apply_overrides(config, {"deepcluster_v2": {"online": True, "n_sets": 2, "out_dim": 0}})
    config.data.input_size = 16
    method = METHODS.build(config)
    heads = PrototypeHead(6, 5, 2, out_dim=None, generator=torch.Generator().manual_seed(0))
    assert len(heads.projection) == 0
    embedding = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    z, _ = heads(embedding)
    torch.testing.assert_close(z, nn.functional.normalize(embedding, dim=1))

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    crops = [torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    (z, scores), targets = method.forward(backbone, heads, crops, torch.zeros(3, 2, dtype=torch.long), None)
    expected = torch.stack([heads(backbone(crop))[1] for crop in crops[:2]]).mean(dim=0).argmax(dim=-1)
    assert torch.equal(targets, expected) and targets.shape == (3, 2)


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("levers-data") / "patterns.npz")


def test_a_run_with_every_lever_trains_as_asked(npz_data: Path, tmp_path: Path) -> None:
    v2 = {"n_sets": 2, "n_small": 2, "hidden": 32, "out_dim": 16, "online": True, "variance_weight": 1.0}
    config = small_config(
        npz_data, tmp_path / "run", method="deepcluster-v2", deepcluster_v2=v2,
        model={"first_conv": "patches_frozen", "arch": "alexnet_small_gap_half"},
        cluster={"label_every": 3, "hold_labels": 0.5, "label_view": "grayscale"}, run={"epochs": 2},
    )  # fmt: skip
    first: list[torch.Tensor] = []

    def keep(trainer: Trainer) -> None:
        conv = trainer.backbone.features[0]
        if not first:
            first.append(conv.weight.detach().clone())
            assert not conv.weight.requires_grad and trainer.backbone.feature_dim == 128

    result = Trainer(config, on_step=keep).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 5 steps per epoch, 10 in all: updates every 3 steps [0, 3, 6, 9], those before step 5 but the first held
    assert [r["label_updates"] for r in records] == [1, 2]
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    conv_key = next(key for key in final if key.endswith("features.0.weight"))
    assert torch.equal(final[conv_key], first[0])  # frozen: the whitening filters, never trained
    assert torch.equal(
        first[0][24:], -first[0][:24]
    )  # 48 filters: 24 whitening directions and their negatives
    assert len(result.history) == 2


def test_without_a_projection_head_deepcluster_v2_has_no_head_to_train(
    npz_data: Path, tmp_path: Path
) -> None:
    v2 = {"n_sets": 2, "n_small": 2, "out_dim": 0}
    config = small_config(
        npz_data, tmp_path / "run", method="deepcluster-v2", deepcluster_v2=v2, run={"epochs": 1}
    )
    trainer = Trainer(config)
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["head_optimizer"] is None and set(checkpoint["heads"]) == {"prototypes"}
    assert checkpoint["heads"]["prototypes"].shape == (
        2,
        8,
        trainer.backbone.feature_dim,
    )  # the embedding's size
