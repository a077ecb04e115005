"""`deepcluster train` as a user runs it: exit codes, messages, and a real SIGKILL followed by --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.storage import load_checkpoint
from synthetic import small_config, write_pattern_npz

SMALL_RUN = ["--method", "deepcluster", "--k", "8", "--batch-size", "16", "--epochs", "2", "--seed", "3"]
SMALL_RUN += ["--no-progress", "--arch", "alexnet_small_gap"]  # the network of synthetic.small_config
SMALL_SET = ["--set", "cluster.pca_dim=16", "--set", "run.report=false"]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("cli-data") / "patterns.npz")


def test_train_prints_the_run_directory_and_nmi(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        ["train", "--data", str(npz_data), "--out", str(out), *SMALL_RUN, "--epochs", "1", *SMALL_SET]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert f"run directory: {out}" in printed and "nmi_true=" in printed
    assert (out / "labels.csv").is_file() and (out / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--k", "500"], "--k 500 is larger than the number of images (160)"),
        (["--batch-size", "0"], "--batch-size"),
        (["--arch", "lenet"], "lenet"),
        (["--device", "tpu"], "--device tpu"),
        (["--set", "optim.nonsense=1"], "optim.nonsense"),
    ],
)
def test_bad_options_exit_2_with_a_message_naming_them(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code = main(["train", "--data", str(npz_data), "--out", str(tmp_path / "run"), "--no-progress", *argv])
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_resume_refuses_to_change_the_method(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert code == 2
    assert "--lr cannot be changed when resuming" in capsys.readouterr().err


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigkill_mid_epoch_then_resume_gives_the_unbroken_result(npz_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "deepcluster", "train", "--data", str(npz_data), "--out", str(out)]
    # The unbroken run below trains in this process: the killed one computes on as many torch threads.
    command += [
        *SMALL_RUN,
        *SMALL_SET,
        "--checkpoint-every",
        "1",
        "-q",
        "--threads",
        str(torch.get_num_threads()),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoints" / "last.pt"
    try:
        _wait_for(
            lambda: (out / "labels" / "epoch_001.npy").exists() or process.poll() is not None, 300, "epoch 1"
        )
        saves: set[int] = set()

        def two_more_saves() -> bool:
            if checkpoint.exists():
                saves.add(checkpoint.stat().st_mtime_ns)
            return len(saves) >= 3 or process.poll() is not None

        _wait_for(two_more_saves, 120, "mid-epoch checkpoints")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stopped = load_checkpoint(checkpoint)["loop"]
    assert stopped["epoch"] == 1 and 0 < stopped["step"] < 10  # killed mid-epoch (10 steps per epoch)

    resumed = subprocess.run(
        [sys.executable, "-m", "deepcluster", "train", "--resume", str(out), "--no-progress", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr

    unbroken = tmp_path / "unbroken"
    train(small_config(npz_data, unbroken, optim={"batch_size": 16}, run={"checkpoint_every": 0}))
    state_a = load_checkpoint(unbroken / "checkpoints" / "last.pt")["model"]
    state_b = load_checkpoint(checkpoint)["model"]
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert (unbroken / "labels.csv").read_text() == (out / "labels.csv").read_text()
