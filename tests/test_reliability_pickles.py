"""A planted pickle is refused by every loader, without running it: a file that needs a full unpickle (here one
that would write a marker file, as malicious code would do its work) placed where a run keeps its checkpoints,
its assigner or its search index. Every command that reads the file refuses it with one line (exit 2) that
names --trust-checkpoint; the marker never appears and nothing of the run changes."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deepcluster
from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.storage import RunDir, UntrustedCheckpoint, load_checkpoint, save_checkpoint
from synthetic import Payload, small_config, write_pattern_npz

LAYOUTS = ("current format", "older format")


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


@pytest.fixture(scope="module")
def finished(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run: checkpoints, labels.csv, assigner.pt, and its search index (RUN/index/)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(small_config(npz_data, out, run={"epochs": 1}))
    assert main(["index", str(out), "--no-progress", "-q"]) == 0
    return out


def plant(path: Path, marker: Path, layout: str) -> None:
    """A checkpoint holding an object that only a full unpickle reads: in the current format (a valid header
    and checksum around the pickle) or as an older file (a plain torch.save)."""
    evil = {"model": Payload(marker), "config": {}, "loop": {}, "heads": None, "n_classes": 8}
    if layout == "current format":
        save_checkpoint(path, evil, info={})
    else:
        torch.save(evil, path)


@pytest.fixture(scope="module", params=LAYOUTS)
def planted(request: pytest.FixtureRequest, finished: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the finished run whose last.pt and previous.pt are planted pickles, the marker they write, and
    their layout."""
    root = tmp_path_factory.mktemp("planted")
    run, marker = shutil.copytree(finished, root / "run"), root / "marker"
    for name in ("last.pt", "previous.pt"):
        plant(run / "checkpoints" / name, marker, request.param)
    return run, marker, request.param


def outputs(run: Path) -> dict[str, bytes]:
    """The run's files but its log and config.yaml (a resume appends to the one and writes the other again
    with the run's place) and the lock (emptied by every clean exit)."""
    skip = {"train.log", "config.yaml", ".lock"}
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def first_image(run: Path) -> str:
    return RunDir(run).read_labels().names[0]


COMMANDS = {  # a command's arguments, given the run and a folder for what it would write
    "train --resume": lambda run, out: ["train", "--resume", str(run)],
    "evaluate": lambda run, out: ["evaluate", str(run), "--out", str(out / "evaluation.json")],
    "evaluate a checkpoint file": lambda run, out: ["evaluate", str(run / "checkpoints" / "last.pt")],
    "report": lambda run, out: ["report", str(run)],
    "embed": lambda run, out: ["embed", str(run), "--out", str(out / "e.npy"), "--no-progress"],
    "assign": lambda run, out: ["assign", str(run), "--out", str(out / "a.csv"), "--no-progress"],
    "index": lambda run, out: ["index", str(run), "--rebuild", "--no-progress"],
    "search": lambda run, out: ["search", str(run), first_image(run), "--html", str(out / "s.html")],
    "duplicates": lambda run, out: ["duplicates", str(run), "--out", str(out / "d.csv")],
    "export": lambda run, out: ["export", str(run), "--format", "state_dict", "--out", str(out / "m.pt")],
    "export a checkpoint file": lambda run, out: [
        "export",
        str(run / "checkpoints" / "last.pt"),
        "--format",
        "state_dict",
        "--out",
        str(out / "m.pt"),
    ],  # fmt: skip
}
READ_THE_ASSIGNER = ("embed", "assign", "index", "search", "duplicates")
"""The commands on a trained run that load RUN/assigner.pt (all of `deepcluster.load`'s)."""


def assert_refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "-q"]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("deepcluster: error: ") and "refused" in err and "--trust-checkpoint" in err, err
    assert not any(out.iterdir()), "nothing is written"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_planted_checkpoint_without_running_it(
    planted: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run, marker, _ = planted
    before = outputs(run)
    assert_refused(COMMANDS[command](run, tmp_path), tmp_path, capsys)
    assert not marker.exists()
    assert (
        outputs(run) == before
    )  # no report, no evaluation.json, no index rebuilt, no checkpoint moved aside


def test_the_python_api_refuses_a_planted_checkpoint(planted: tuple[Path, Path, str], tmp_path: Path) -> None:
    run, marker, layout = planted
    with pytest.raises(UntrustedCheckpoint, match="refused.*--trust-checkpoint"):
        deepcluster.load(run)
    with pytest.raises(UntrustedCheckpoint, match="refused"):
        load_checkpoint(run / "checkpoints" / "last.pt")
    assert not marker.exists()
    # The control: the same planted file, trusted, does run its code (so the marker's absence above means it
    # was never unpickled).
    copy, control = tmp_path / "copy.pt", tmp_path / "control-marker"
    plant(copy, control, layout)
    load_checkpoint(copy, trusted=True)
    assert control.read_text() == "code ran"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_planted_assigner_is_refused_by_every_command_that_reads_it(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    run, marker, out = shutil.copytree(finished, tmp_path / "run"), tmp_path / "marker", tmp_path / "out"
    out.mkdir()
    plant(run / "assigner.pt", marker, layout)
    before = outputs(run)
    for command in READ_THE_ASSIGNER:
        assert_refused(COMMANDS[command](run, out), out, capsys)
    with pytest.raises(UntrustedCheckpoint, match=f"{run / 'assigner.pt'}: refused"):
        deepcluster.load(run)
    # export reads the checkpoint only: the planted assigner neither stops it nor runs
    assert main([*COMMANDS["export"](run, out), "-q"]) == 0
    assert not marker.exists()
    assert outputs(run) == before


def test_planted_index_files_are_never_unpickled_and_the_index_is_built_again(
    finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index's arrays load with allow_pickle=False and its faiss file is checked by its own header: a pickle
    in any of them is a damaged index, built again from the run's images."""
    run, marker = shutil.copytree(finished, tmp_path / "run"), tmp_path / "marker"
    index = run / "index"
    for name in ("vectors.npy", "rows.npy", "whitening.npz", "index.faiss"):
        good = (index / name).read_bytes()
        if name == "vectors.npy":  # a NumPy file of objects: np.load unpickles them only when allowed
            np.save(index / name, np.array([Payload(marker)], dtype=object), allow_pickle=True)
        else:
            (index / name).write_bytes(pickle.dumps(Payload(marker)))
        caplog.clear()
        with caplog.at_level("INFO", logger="deepcluster"):
            assert main(["search", str(run), first_image(run), "--k", "1", "--no-progress", "-q"]) == 0, name
        why = (
            "is not an index file written by deepcluster"
            if name == "index.faiss"
            else "its files are damaged"
        )
        assert f"building the search index of {run}: " in caplog.text and why in caplog.text, name
        assert (index / name).read_bytes() == good, name  # built again: the same index as before
        assert not marker.exists(), name


def test_train_labels_reads_a_csv_and_a_planted_checkpoint_beside_it_plays_no_part(
    npz_data: Path, planted: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """`train --labels RUN/labels.csv` reads labels.csv, a text file parsed as CSV, and nothing else of the run
    (no checkpoint, no assigner, nothing unpickled): with the run's checkpoints planted it trains as usual."""
    run, marker, _ = planted
    out = tmp_path / "moved"
    argv = ["train", "--labels", str(run / "labels.csv"), "--data", str(npz_data), "--out", str(out)]
    argv += ["--arch", "alexnet_small_gap", "--epochs", "1", "--batch-size", "32", "--no-progress", "-q"]
    assert main([*argv, "--set", "run.report=false"]) == 0
    assert not marker.exists()
    assert (out / "labels.csv").read_text() == (run / "labels.csv").read_text()
