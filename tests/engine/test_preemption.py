"""Pre-emption on a cluster: a stop signal (SIGTERM, SIGUSR1) ends a run at the next step with a checkpoint of
that step and exit code 75; the unchanged command with --auto-resume continues it to the same result as a run
that never stopped; a finished run is left as it is; other settings in that folder are refused."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from deepcluster.engine.stop import PREEMPTED_EXIT
from deepcluster.storage import RunDir, read_header
from runs import assert_same_run, command, environment, run
from synthetic import write_pattern_npz


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("preempt-data") / "patterns.npz")


@pytest.fixture(scope="module")
def unbroken(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    done = run(command(data, out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _stop_mid_run(arguments: list[str], out: Path, signal_number: int) -> subprocess.CompletedProcess[str]:
    """Start `arguments`, send `signal_number` once its first checkpoint exists (the first labels are made, the
    steps are running), and wait for it."""
    child = subprocess.Popen(
        arguments, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal_number)
    stdout, stderr = child.communicate(timeout=240)
    return subprocess.CompletedProcess(arguments, child.returncode, stdout, stderr)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_stop_signal_leaves_a_checkpoint_of_its_step_and_the_same_command_goes_on(
    data: Path, unbroken: Path, tmp_path: Path, signal_number: int
) -> None:
    out = tmp_path / "run"
    arguments = command(data, out, "--auto-resume")
    stopped = _stop_mid_run(arguments, out, signal_number)
    name = signal.Signals(signal_number).name
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr[-2000:]
    header = read_header(out / "checkpoints" / "last.pt")
    assert header is not None
    where = f"stopped by {name} at epoch {header['epoch']}, step {header['step']}"
    assert where in stopped.stderr and "--auto-resume" in stopped.stderr
    assert (header["epoch"], header["step"]) != (4, 0) and not (out / "labels.csv").exists()
    assert (out / ".lock").read_text() == ""  # the lock was released
    again = run(arguments)  # the requeued job's unchanged command
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(unbroken, out)


def test_auto_resume_leaves_a_finished_run_and_refuses_other_settings(
    data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = run(command(data, out, "--auto-resume"))  # no run there yet: it starts
    assert first.returncode == 0, first.stderr[-2000:]
    assert_same_run(unbroken, out)
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    finished = run([*command(data, out, "--auto-resume"), "--threads", "2"])  # a resumable option may differ
    assert finished.returncode == 0 and "finished already" in finished.stderr + finished.stdout
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp  # nothing trained, nothing written
    other = run([*command(data, out, "--auto-resume"), "--lr", "0.1"])
    assert other.returncode == 2
    assert "optim.lr: 0.05 -> 0.1" in other.stderr and str(out) in other.stderr
    plain = run(command(data, out))  # without --auto-resume an existing run is still refused
    assert plain.returncode == 2 and "a run already exists there" in plain.stderr


def test_a_run_stopped_before_its_first_checkpoint_starts_again(
    data: Path, unbroken: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    arguments = command(data, out, "--auto-resume")
    child = subprocess.Popen(
        arguments, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while not (out / "request.yaml").is_file() and child.poll() is None:
        time.sleep(0.005)
    child.send_signal(signal.SIGTERM)  # while the images are decoded: no labels, no checkpoint yet
    child.communicate(timeout=240)
    assert child.returncode in (PREEMPTED_EXIT, 0)
    again = run(arguments)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(unbroken, out)
    assert RunDir(out).read_history()[-1]["epoch"] == 3
