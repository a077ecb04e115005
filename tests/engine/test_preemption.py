"""Pre-emption on a cluster: a stop signal (SIGTERM, SIGUSR1) ends a run at the next step with a checkpoint of
that step and exit code 75; the unchanged command with --auto-resume continues it to the same result as a run
that never stopped; a finished run is left as it is; other settings in that folder are refused."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deepcluster.cli import main
from deepcluster.engine.stop import PREEMPTED_EXIT, StopRequests
from deepcluster.storage import RunDir, read_header
from runs import command, environment, run
from synthetic import assert_same_run, write_pattern_npz


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("preempt-data") / "patterns.npz")


@pytest.fixture(scope="module")
def unbroken(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    done = run(command(data, out))  # --auto-resume with nothing there: it starts
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_every_stop_signal_is_noted_and_the_handlers_are_put_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequests().listening("TERM,USR1") as stops:
        assert not stops.requested
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered to this (main) thread before kill returns
        assert stops.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def _signal_when(arguments: list[str], ready: Path) -> subprocess.CompletedProcess[str]:
    """Start `arguments`, send SIGTERM as soon as `ready` exists, wait for the child."""
    child = subprocess.Popen(
        arguments, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not ready.is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=240)
    return subprocess.CompletedProcess(arguments, child.returncode, stdout, stderr)


def _catches(pid: int, number: int) -> bool:
    """Whether process `pid` has a handler of its own for signal `number` (Linux: SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (number - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the handlers from /proc")
def test_a_stop_signal_while_python_is_still_loading_ends_with_the_preemption_code(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    arguments = command(data, out)
    child = subprocess.Popen(
        arguments, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while child.poll() is None and not _catches(child.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGTERM)  # the package is still importing PyTorch (seconds): no run listens yet
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == PREEMPTED_EXIT, stderr[-2000:]  # not -15: the scheduler's requeue sees a stop
    assert "stopped by SIGTERM while starting" in stderr
    assert not out.exists()  # nothing was written: the same command starts the run afresh


def test_a_stop_signal_leaves_a_checkpoint_of_its_step_and_the_same_command_goes_on(
    data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    arguments = command(data, out)
    early = _signal_when(arguments, out / "request.yaml")  # while the images are decoded: no checkpoint yet
    assert early.returncode in (PREEMPTED_EXIT, 0), early.stderr[-2000:]
    checkpoint = out / "checkpoints" / "last.pt"
    labelled = out / "labels" / "epoch_000.npy"
    stopped = _signal_when(arguments, labelled)  # the same command goes on: its first labels are made
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr[-2000:]
    header = read_header(checkpoint)
    assert header is not None
    assert f"stopped by SIGTERM at epoch {header['epoch']}, step {header['step']}" in stopped.stderr
    assert "--auto-resume" in stopped.stderr and not (out / "labels.csv").exists()
    assert (out / ".lock").read_text() == ""  # the lock was released
    again = run(arguments)  # the requeued job's unchanged command
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(unbroken, out)
    assert RunDir(out).read_history()[-1]["epoch"] == 1


def test_auto_resume_leaves_a_finished_run_and_refuses_other_settings(
    data: Path,
    unbroken: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    shutil.copytree(unbroken, out)
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    arguments = command(data, out)[3:]  # main()'s arguments
    with caplog.at_level(logging.WARNING, logger="deepcluster"):
        assert main([*arguments, "--threads", "2"]) == 0  # a setting a resume may change may differ
    assert f"{out}: the run there has finished already (--auto-resume): nothing to do" in caplog.messages
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp  # nothing trained, nothing written
    assert main([*arguments, "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.05 -> 0.1" in err and str(out) in err
    assert main([a for a in arguments if a != "--auto-resume"]) == 2  # without it an existing run is refused
    assert "a run already exists there" in capsys.readouterr().err
