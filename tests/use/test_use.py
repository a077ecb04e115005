"""Using a trained run: `deepcluster.load`, embed (the run's own features again), assign (the run's own images
get labels.csv back, for every method), and their bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepcluster
from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.data.sources import open_source
from deepcluster.storage import RunDir
from deepcluster.use.images import to_pil
from synthetic import pattern_images, small_config, write_pattern_npz

METHODS = {
    "deepcluster": {},
    "deepercluster": {"deepercluster": {"super_clusters": 2}},
    "sela": {"sela": {"heads": 2}},
    "deepcluster-v2": {"deepcluster_v2": {"n_sets": 2, "n_small": 2, "hidden": 32}},
    "sela-v2": {"sela_v2": {"n_sets": 2, "n_small": 2, "hidden": 32}},
}


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


@pytest.fixture(scope="module")
def runs(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for method, sections in METHODS.items():
        made[method] = root / method
        run = {"save_features": True, "epochs": 1}
        train(small_config(npz_data, made[method], method=method, run=run, **sections))
    made["transfer"] = root / "transfer"
    # Transfer of the images' true kinds (4 classes), which a network learns in a few epochs whatever the
    # precision; a 1-epoch run's clusters of 160 images were too close to noise to learn reliably.
    table = RunDir(made["deepcluster"]).read_labels()
    kinds = RunDir(root / "kinds")
    kinds.root.mkdir()
    kinds.write_labels_csv(table.indices, table.names, table.true_labels, table.true_labels)
    transfer = {"labels": str(kinds.labels_csv)}
    train(small_config(npz_data, made["transfer"], method="transfer", transfer=transfer, run={"epochs": 4}))
    made["given"] = kinds.root  # the labels the transfer run was given
    return made


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", list(METHODS))
def test_assigning_the_training_images_gives_labels_csv(
    runs: dict[str, Path], tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs[method]
    out = tmp_path / "assignments.csv"
    assert main(["assign", str(run), "--out", str(out), "--no-progress", "-q"]) == 0
    assert "160 images assigned" in capsys.readouterr().out
    table = RunDir(run).read_labels()
    rows = read_rows(out)
    heads = ["cluster"] + [f"cluster_h{h}" for h in range(1, table.labels.shape[1])]
    got = np.array([[int(row[h]) for h in heads] for row in rows])
    assert [int(row["index"]) for row in rows] == table.indices.tolist()
    assert np.array_equal(got, table.labels)
    runner = np.array([[int(row[f"{h}_runner_up"]) for h in heads] for row in rows])
    assert (runner != got).all()  # a runner-up is another cluster


def test_label_transfer_keeps_its_given_labels_and_assigns_by_its_head_s_argmax(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """A label-transfer run trains on labels it is given and never changes them: its labels.csv is those labels,
    not the network's predictions, and `assign` gives the head's argmax. So the two are not the same thing: the
    exact relations are labels.csv == the given labels, and assign == the head's argmax computed here on every
    image; they agree where the head learned its labels (more often than the largest class's share)."""
    run_dir = runs["transfer"]
    given, table = RunDir(runs["given"]).read_labels(), RunDir(run_dir).read_labels()
    assert table.names == given.names and np.array_equal(table.labels, given.labels)
    out = tmp_path / "assignments.csv"
    assert main(["assign", str(run_dir), "--out", str(out), "--no-progress", "-q"]) == 0
    rows = read_rows(out)
    assigned = np.array([int(row["cluster"]) for row in rows])
    assert [int(row["index"]) for row in rows] == table.indices.tolist()
    run = deepcluster.load(run_dir)
    images, _ = pattern_images(160)  # the run's images (16 px: nothing to resize or crop)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    argmax = []
    with torch.no_grad(), run.precision.autocast():
        for start in range(0, 160, run.batch_size):  # the run's batches: the same products bit for bit
            batch = run.view(pixels[start : start + run.batch_size]).contiguous(
                memory_format=torch.channels_last
            )
            argmax.append(run.heads(run.backbone(batch)).float().argmax(dim=-1))
    assert np.array_equal(assigned, torch.cat(argmax).reshape(-1).numpy())  # one head
    prediction = run.assign(images)
    assert prediction.score_name == "probability" and np.array_equal(prediction.labels[:, 0], assigned)
    assert np.all(prediction.score > prediction.runner_score)  # a best and another, by probability
    kinds = given.labels[:, 0]
    assert (assigned == kinds).mean() > np.bincount(kinds).max() / len(kinds)


def test_embed_gives_the_features_the_run_computed(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = runs["deepcluster"]
    features = np.load(run_dir / "features.npy")  # the final update's, in the run's batches and precision
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    out = tmp_path / "emb.npy"
    assert main(["embed", str(run_dir), "--out", str(out), "--no-progress", "-q"]) == 0
    assert np.array_equal(np.load(out), expected.astype(np.float32))
    names = (tmp_path / "emb.names.txt").read_text().splitlines()
    assert names == RunDir(run_dir).read_labels().names
    run = deepcluster.load(run_dir)
    images, _ = pattern_images(160)
    # uint8 arrays, as given in Python: two of the run's batches (32), so the same products bit for bit
    assert np.array_equal(run.embed(images[:64]), expected[:64])
    conv = run.embed(list(images[:3]), layer="conv2")
    assert conv.shape[0] == 3 and np.allclose(np.linalg.norm(conv, axis=1), 1.0, atol=1e-5)


def test_images_come_as_paths_pil_arrays_and_tensors(runs: dict[str, Path], tmp_path: Path) -> None:
    run = deepcluster.load(runs["deepcluster-v2"])
    images, _ = pattern_images(3)
    path = tmp_path / "a.png"
    Image.fromarray(images[0]).save(path)
    forms = [str(path), Image.fromarray(images[0]), images[0], torch.from_numpy(images[0]).permute(2, 0, 1)]
    embeddings = run.embed(forms)
    assert np.allclose(embeddings, embeddings[0], atol=1e-6)
    assert run.assign(forms).labels.shape == (4, 2)  # one label per prototype set (n_sets=2)


def test_a_transparent_image_is_read_as_training_reads_it(tmp_path: Path) -> None:
    """A trained run reads images with transparency as its training did (composited on white), whether given as
    a file, a PIL image or an RGBA array: the same pixels as the folder source gives the run."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 40, 10)
    rgba[:4, :, 3] = 255  # top half opaque, bottom half fully transparent
    path = tmp_path / "images" / "a.png"
    path.parent.mkdir()
    Image.fromarray(rgba, mode="RGBA").save(path)
    expected = np.zeros((8, 8, 3), dtype=np.uint8)
    expected[:4] = (200, 40, 10)
    expected[4:] = 255  # white where nothing was painted
    trained_on = np.asarray(open_source(str(path.parent)).load(0))
    assert np.array_equal(trained_on, expected)
    for form in (str(path), Image.fromarray(rgba, mode="RGBA"), rgba):
        assert np.array_equal(np.asarray(to_pil(form)), expected)


def test_a_folder_with_corrupt_files_is_embedded_with_them_skipped(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    images, _ = pattern_images(12, seed=5)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img_{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "emb.parquet"
    pytest.importorskip("pyarrow")
    code = main(["embed", str(runs["sela"]), "--data", str(folder), "--out", str(out), "--no-progress"])
    assert code == 0 and "12 embeddings written" in capsys.readouterr().out
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == 12 and "broken.png" not in " ".join(table.column("image").to_pylist())
    assert len(table.column("embedding")[0].as_py()) == deepcluster.load(runs["sela"]).backbone.feature_dim


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such run directory"),
        ("no checkpoint", "has no checkpoint"),
        ("unknown layer", "--layer conv9"),
        ("bad out", "ending in .npy or .parquet"),
    ],
)
def test_bad_inputs_are_named(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    run = runs["deepcluster"]
    out, extra = tmp_path / "e.npy", []
    if case == "missing":
        run = tmp_path / "nothing"
    elif case == "no checkpoint":
        run = tmp_path / "fresh"
        run.mkdir()
        (run / "config.yaml").write_text((runs["deepcluster"] / "config.yaml").read_text())
    elif case == "unknown layer":
        extra = ["--layer", "conv9"]
    else:
        out = tmp_path / "e.txt"
    assert main(["embed", str(run), "--out", str(out), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
