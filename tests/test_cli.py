"""`deepcluster train` as a user runs it: exit codes and messages, and a real process stopped for real (SIGKILL
mid-epoch and mid-write, Ctrl-C, before its run directory exists), then resumed to the unbroken run's result."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from deepcluster import load_config
from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.storage import load_checkpoint
from synthetic import assert_same_run, small_config, write_pattern_npz

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
    run = tmp_path / "run"
    train(small_config(npz_data, run, run={"epochs": 1}))
    before = {
        name: (run / name).read_bytes() for name in ("config.yaml", "checkpoints/last.pt", "labels.csv")
    }
    for change in (["--method", "sela"], ["--lr", "0.1"]):
        assert main(["train", "--resume", str(run), *change, "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"--resume: {change[0]} cannot be changed when resuming" in err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert load_config(run / "config.yaml").method == "deepcluster"


# ---------------------------------------------------------------- a real process, stopped for real
KILLABLE = [*SMALL_RUN, *SMALL_SET, "--checkpoint-every", "1", "--threads", "1", "-q"]
"""A run of 2 epochs of 10 steps, a checkpoint after every step, on one torch thread (the same float results in
every process that runs it)."""


def _as_from_a_terminal() -> None:
    """In the child, before exec: Ctrl-C at its default, as in a terminal's foreground job. A suite started in
    the background by a shell without job control (`nohup ... &`, some CI runners) ignores SIGINT, every child
    inherits that, and Python then installs no KeyboardInterrupt handler (the Ctrl-C tests' runs went on to
    the end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(npz_data: Path, out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "deepcluster", "train", "--data", str(npz_data), "--out", str(out)]
    return subprocess.Popen(
        [*command, *KILLABLE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )


def resume_child(out: Path) -> None:
    command = [sys.executable, "-m", "deepcluster", "train", "--resume", str(out), "--no-progress", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def unbroken(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    _, stderr = start(npz_data, out).communicate(timeout=300)
    assert (out / "labels.csv").is_file(), stderr
    return out


def _wait_for(condition, process: subprocess.Popen[str], what: str) -> None:
    """Poll `condition` until it holds; the run must still be going (else its error output is shown)."""
    deadline = time.monotonic() + 300
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {process.returncode}) before {what}: {process.stderr.read()}"
            )
        assert time.monotonic() < deadline, f"no {what} within 300 s"
        time.sleep(0.002)


def test_sigkill_mid_epoch_then_resume_gives_the_unbroken_result(
    npz_data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    process = start(npz_data, out)
    checkpoint = out / "checkpoints" / "last.pt"
    try:
        _wait_for(lambda: (out / "labels" / "epoch_001.npy").exists(), process, "epoch 1")
        saves: set[int] = set()

        def two_more_saves() -> bool:
            with contextlib.suppress(FileNotFoundError):  # a save moves it aside for a moment
                saves.add(checkpoint.stat().st_mtime_ns)
            return len(saves) >= 3

        _wait_for(two_more_saves, process, "mid-epoch checkpoints")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stopped = load_checkpoint(checkpoint)["loop"]
    assert stopped["epoch"] == 1 and 0 < stopped["step"] < 10  # killed mid-epoch (10 steps per epoch)
    resume_child(out)
    assert_same_run(unbroken, out)


def _writing(checkpoints: Path) -> list[str]:
    """The temporary files of checkpoint saves in progress (storage/files.py's `.last.pt.*.tmp`)."""
    with contextlib.suppress(FileNotFoundError):
        return [name for name in os.listdir(checkpoints) if name.startswith(".last.pt.")]
    return []


def _freeze_mid_write(process: subprocess.Popen[str], checkpoints: Path) -> list[str]:
    """Freeze the run (SIGSTOP) whenever a checkpoint is being written, until it is frozen with the temporary file
    still there (mid-write, for sure); its name(s)."""
    while True:
        _wait_for(lambda: bool(_writing(checkpoints)), process, "a checkpoint being written")
        os.kill(process.pid, signal.SIGSTOP)
        if left := _writing(checkpoints):
            return left
        os.kill(process.pid, signal.SIGCONT)  # the save ended between the two looks: wait for the next


def test_sigkill_during_a_checkpoint_write_then_resume_gives_the_unbroken_result(
    npz_data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    process = start(npz_data, out)
    try:
        left = _freeze_mid_write(process, checkpoints)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert _writing(checkpoints) == left
    resume_child(out)  # the half-written file left by the kill plays no part
    assert_same_run(unbroken, out)


def _ctrl_c_when_frozen(process: subprocess.Popen[str], out: Path, freeze: Callable[[], object]) -> None:
    """`freeze()` stops the run at a chosen point (SIGSTOP); then a Ctrl-C, which must end it with 130 and the
    one line that says how to resume, before the end of the run."""
    try:
        freeze()
        os.kill(process.pid, signal.SIGINT)
        os.kill(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["deepcluster: interrupted; resume with --resume RUN_DIR"]
    assert not (out / "labels.csv").exists()  # it stopped before the end


def test_ctrl_c_during_a_checkpoint_write_completes_the_write_then_exits_130(
    npz_data: Path, unbroken: Path, tmp_path: Path
) -> None:
    """Interrupted inside torch.save, its zip writer raised its own error over the interrupt (a traceback, exit
    1), or the first checkpoint was lost; the write now completes and the interrupt is raised after it."""
    out = tmp_path / "interrupted"
    checkpoints = out / "checkpoints"
    process = start(npz_data, out)
    _ctrl_c_when_frozen(process, out, lambda: _freeze_mid_write(process, checkpoints))
    assert _writing(checkpoints) == []
    load_checkpoint(checkpoints / "last.pt")  # complete
    resume_child(out)
    assert_same_run(unbroken, out)


def test_ctrl_c_exits_130_and_resume_gives_the_unbroken_result(
    npz_data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    process = start(npz_data, out)

    def after_the_first_checkpoint() -> None:  # frozen, so that the Ctrl-C comes mid-run on a loaded machine
        _wait_for((out / "checkpoints" / "last.pt").exists, process, "a checkpoint")
        os.kill(process.pid, signal.SIGSTOP)

    _ctrl_c_when_frozen(process, out, after_the_first_checkpoint)
    resume_child(out)
    assert_same_run(unbroken, out)


def test_a_loss_that_becomes_nan_exits_3_naming_the_last_good_checkpoint(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(npz_data), "--out", str(out), *SMALL_RUN, *SMALL_SET, "--epochs", "1"]
    assert main([*argv, "--lr", "1e12", "--checkpoint-every", "1", "-q"]) == 3  # the weights explode
    err = capsys.readouterr().err.strip()
    checkpoint = out / "checkpoints" / "last.pt"
    assert len(err.splitlines()) == 1 and err.startswith("deepcluster: training diverged: "), err
    assert f"the last good checkpoint is {checkpoint}. Lower --lr (now 1000000000000.0)" in err
    match = re.search(r"(the training loss became nan|became NaN or infinite) at epoch 0, step (\d+);", err)
    assert match, err
    # A checkpoint after every step: a NaN loss is seen at the start of a step, whose checkpoint (the state
    # after the step before) is the last; weights that went bad are seen by the save, before it writes them.
    at = int(match.group(2)) - (0 if match.group(1).startswith("the training loss") else 1)
    saved = load_checkpoint(checkpoint)
    assert (saved["loop"]["epoch"], saved["loop"]["step"]) == (0, at)
    tensors = [*saved["model"].values(), *(saved["heads"] or {}).values()]
    assert all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())
    assert not (out / "labels.csv").exists()


def test_killed_before_its_run_directory_exists_it_starts_again_with_the_same_command(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    process = start(npz_data, out)
    process.kill()  # Python is still starting: importing torch alone takes longer than this
    process.wait()
    assert not out.exists()
    assert main(["train", "--resume", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"deepcluster: error: --resume {out}: no such run directory (give the --out of a training run; one "
        "stopped before it began leaves none: start it again with its train command)"
    )
    argv = ["train", "--data", str(npz_data), "--out", str(out), *KILLABLE]
    assert main([*argv, "--epochs", "1", "--checkpoint-every", "0"]) == 0
    assert (out / "labels.csv").is_file() and load_checkpoint(out / "checkpoints" / "last.pt")["loop"][
        "epoch"
    ] == 1
