"""Nothing lost, nobody in: checkpoints in a format that runs no code, the previous checkpoint standing in for a
damaged last one, the run directory's lock, the files' modes. Planted pickles refused by every loader:
test_reliability_pickles.py; writes that fail for real (file-size limit, full disk, read-only folders):
test_reliability_writes.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.engine.loop import Trainer
from deepcluster.storage import (
    DamagedCheckpoint,
    RunInUse,
    RunLock,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from synthetic import assert_same_run, same_threads, small_config, write_pattern_npz


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


@pytest.fixture(scope="module")
def unbroken(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    train(small_config(npz_data, out))
    return out


def stop_at(npz_data: Path, out: Path, epoch: int, step: int) -> Path:
    """A run of small_config stopped (as by a kill) when it reaches `step` of `epoch` (5 steps per epoch,
    a checkpoint every 2 steps and at each epoch's end)."""

    def stop(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (epoch, step):
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(small_config(npz_data, out), on_step=stop).fit()
    return out


@pytest.fixture(scope="module")
def stopped(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stopped at epoch 1, step 3: last.pt holds (1, 2), previous.pt (1, 0)."""
    return stop_at(npz_data, tmp_path_factory.mktemp("stopped") / "run", 1, 3)


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ---------------------------------------------------------------- the file format
def test_states_round_trip_without_pickled_objects(tmp_path: Path) -> None:
    layer = torch.nn.BatchNorm1d(3).state_dict()
    state = {
        "labels": np.arange(6, dtype=np.int64).reshape(2, 3),
        "big_endian": np.arange(4, dtype=">u4"),
        "flags": np.array([True, False]),
        "number": np.float32(2.5),
        "rng": ("MT19937", np.arange(624, dtype=np.uint32), 3, 0, 0.0),
        "layer": layer,
        "nested": [{"a": np.ones(2, dtype=np.float16)}, (1, "x", None)],
    }
    path = tmp_path / "ck.pt"
    save_checkpoint(path, state, info={"epoch": 4})
    loaded = load_checkpoint(path)
    assert read_header(path)["epoch"] == 4 and read_header(path)["format"] == 3
    assert np.array_equal(loaded["labels"], state["labels"]) and loaded["labels"].dtype == np.int64
    assert np.array_equal(loaded["big_endian"], np.arange(4)) and loaded["flags"].dtype == bool
    assert loaded["number"] == 2.5 and type(loaded["number"]) is float
    assert isinstance(loaded["rng"], tuple) and loaded["rng"][1].dtype == np.uint32
    assert isinstance(loaded["layer"], OrderedDict) and loaded["layer"]._metadata == layer._metadata
    assert loaded["nested"][0]["a"].dtype == np.float16 and loaded["nested"][1] == (1, "x", None)


def test_damage_is_caught_before_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.randn(1000)})
    whole = path.read_bytes()
    for cut in (0, 100, 4096, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        with pytest.raises(DamagedCheckpoint, match="damaged|not a checkpoint"):
            load_checkpoint(path)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(DamagedCheckpoint, match="checksum"):
        load_checkpoint(path)


def test_an_older_checkpoint_loads_only_when_trusted_and_is_rewritten(
    npz_data: Path, stopped: Path, unbroken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(stopped, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    torch.save(load_checkpoint(last), last)  # format 2: a plain pickle holding NumPy arrays
    assert read_header(last) is None
    assert main(["train", "--resume", str(run), "-q"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "-q", "--trust-checkpoint"]) == 0
    assert read_header(last) is not None
    assert_same_run(unbroken, run)


# ---------------------------------------------------------------- the previous checkpoint
def test_a_truncated_last_checkpoint_resumes_from_the_previous_one(
    stopped: Path, unbroken: Path, tmp_path: Path
) -> None:
    size = (stopped / "checkpoints" / "last.pt").stat().st_size
    offsets = [
        4096,
        *np.random.default_rng(0).integers(1, size, size=2).tolist(),
    ]  # the header's end, and any
    for trial, offset in enumerate(offsets):
        run = copy_run(stopped, tmp_path / f"run{trial}")
        last = run / "checkpoints" / "last.pt"
        with last.open("r+b") as handle:
            handle.truncate(offset)
        assert main(["train", "--resume", str(run), "-q"]) == 0, offset
        assert_same_run(unbroken, run)
        log = (run / "train.log").read_text()
        assert "using the previous checkpoint" in log and "(epoch 1, step 0: " in log, offset
        assert offset < 4096 or "2 step(s) back" in log  # from the damaged file's header, when it is whole
        assert (run / "checkpoints" / "damaged.pt").stat().st_size == offset


def test_a_resume_before_the_first_checkpoint_starts_the_run_again(
    npz_data: Path, unbroken: Path, tmp_path: Path
) -> None:
    run = stop_at(npz_data, tmp_path / "run", 0, 1)
    shutil.rmtree(run / "checkpoints")  # as if killed during the first label update, before its checkpoint
    assert (run / "config.yaml").is_file()
    assert main(["train", "--resume", str(run), "-q"]) == 0
    assert "starting it from the beginning" in (run / "train.log").read_text()
    assert_same_run(unbroken, run)


# ---------------------------------------------------------------- one process per run
def test_the_lock_names_its_holder_and_a_stale_one_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        RunLock(tmp_path, "train"),
        pytest.raises(RunInUse, match=f"in use by train \\(PID {os.getpid()} on "),
    ):
        RunLock(tmp_path, "report").acquire()
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: no holder left
    (tmp_path / ".lock").write_text('{"command": "train", "pid": 1, "host": "h", "since": "then"}')
    with caplog.at_level("WARNING", logger="deepcluster"), RunLock(tmp_path, "evaluate"):
        assert "took over the lock of train (PID 1 on h" in caplog.text


def test_a_second_process_is_refused_and_a_killed_holder_is_taken_over(
    stopped: Path,
    unbroken: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The holder, a resume, is frozen (SIGSTOP) as soon as it holds the run, so that it is still there for the
    refusals, and then killed wherever it stood; the resume that takes its lock over ends as if unbroken."""
    run = copy_run(stopped, tmp_path / "run")
    command = [sys.executable, "-m", "deepcluster", "train", "--resume", str(run), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=same_threads())
    try:
        while f'"pid": {process.pid}' not in (run / ".lock").read_text():
            assert process.poll() is None, process.stderr
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGSTOP)
        for command in (["train", "--resume", str(run)], ["report", str(run)]):
            assert main([*command, "-q"]) == 2
            assert f"in use by train (PID {process.pid}" in capsys.readouterr().err
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with caplog.at_level("WARNING", logger="deepcluster"):
        assert main(["train", "--resume", str(run), "-q"]) == 0
    assert f"took over the lock of train (PID {process.pid}" in caplog.text
    assert_same_run(unbroken, run)


# ---------------------------------------------------------------- file modes
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path: Path, umask: int, mode: int) -> None:
    code = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from deepcluster.storage import atomic_write_text; "
        "atomic_write_text(sys.argv[1], 'x'); print(oct(os.stat(sys.argv[1]).st_mode & 0o777))"
    )
    out = tmp_path / "out.txt"
    done = subprocess.run([sys.executable, "-c", code, str(out), oct(umask)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == oct(mode)  # mkstemp alone would give 0o600 whatever the umask
