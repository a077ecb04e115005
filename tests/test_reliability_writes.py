"""Writes that fail for real, in a `deepcluster train --resume` process: a file-size limit, a full disk (a small
tmpfs), a folder made read-only. Each ends the run with exit 1 and one line naming the file; the previous
checkpoint and the earlier outputs stay as they were, and a resume once the fault is gone ends where an unbroken
run ends."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.engine.loop import Trainer
from deepcluster.storage import load_checkpoint, read_header
from synthetic import (
    assert_same_run,
    same_threads,
    small_config,
    without_permission_override,
    write_pattern_npz,
)

WRITTEN_ON = "what was written before (the previous checkpoint included) is intact"


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


@pytest.fixture(scope="module")
def stopped(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_config stopped (as by a kill) at epoch 1, step 3: last.pt holds (1, 2), previous.pt (1, 0); the
    next write of the resume is the checkpoint of step 4."""
    out = tmp_path_factory.mktemp("stopped") / "run"

    def stop(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (1, 3):
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(small_config(npz_data, out), on_step=stop).fit()
    return out


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes), the lock file aside (emptied by every clean exit)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def assert_kept(run: Path, before: dict[str, bytes], listing=contents) -> None:
    """Every file of `run` (as `listing` gives them) as it was (`before`), but for the lines the resume added to
    its log, config.yaml, written again with the run's new place (run.out: the test works on a copy), and a new
    TensorBoard events file."""
    now = listing(run)
    assert now["train.log"].startswith(before["train.log"])
    old_config, new_config = (yaml.safe_load(files["config.yaml"]) for files in (before, now))
    old_config["run"].pop("out"), new_config["run"].pop("out")
    assert new_config == old_config
    unchanged = set(before) - {"train.log", "config.yaml"}
    assert {name: now[name] for name in unchanged} == {name: before[name] for name in unchanged}
    new = {name for name in set(now) - set(before) if not name.startswith("tensorboard/")}
    assert not new  # no temporary file left either


def resume_in_child(run: Path, **popen: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deepcluster", "train", "--resume", str(run), "-q"]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=300, env=same_threads(), **popen
    )


def assert_one_line_naming(done: subprocess.CompletedProcess[str], file: Path, reason: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"deepcluster: error: could not write {file}: {reason}; {WRITTEN_ON}")


def test_a_file_size_limit_stops_the_run_with_one_line_and_keeps_the_checkpoint(
    stopped: Path, unbroken: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(stopped, tmp_path / "run")
    checkpoints = run / "checkpoints"
    before = contents(checkpoints)
    limit = (checkpoints / "last.pt").stat().st_size // 2  # the next checkpoint cannot be written

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = resume_in_child(run, preexec_fn=limited)
    assert_one_line_naming(done, checkpoints / "last.pt", "File too large")
    assert contents(checkpoints) == before  # no temporary file left either
    assert load_checkpoint(checkpoints / "last.pt")["loop"]["step"] == 2
    assert main(["train", "--resume", str(run), "-q"]) == 0  # the limit gone, the run ends as if unbroken
    assert_same_run(unbroken, run)


def test_a_full_disk_stops_the_run_with_one_line_and_the_run_resumes_elsewhere(
    stopped: Path, unbroken: Path, tmp_path: Path
) -> None:
    """The run on a tmpfs with room for its files and 8 MiB more (a checkpoint is 30 MB), mounted in a mount
    namespace of its own (`unshare`), then copied out as the fault left it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], check=False).returncode:
        pytest.skip(
            "no mount namespace here (unshare -rm): the file-size limit test covers the failing write"
        )
    mount, kept = tmp_path / "disk", tmp_path / "kept"
    mount.mkdir()
    kept.mkdir()
    size = sum(-(-p.stat().st_size // 4096) * 4096 for p in stopped.rglob("*") if p.is_file()) + (8 << 20)
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$2" && cp -a "$3" "$2/run" || exit 99\n'
        '"$5" -m deepcluster train --resume "$2/run" -q 2> "$4/stderr"\n'
        'echo $? > "$4/rc"; cp -a "$2/run" "$4/run"\n'
    )
    arguments = [str(size), str(mount), str(stopped), str(kept), sys.executable]
    setup = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *arguments], env=same_threads(), timeout=300, check=False
    )
    assert setup.returncode == 0, "the tmpfs could not be made or filled"
    done = subprocess.CompletedProcess([], int((kept / "rc").read_text()), "", (kept / "stderr").read_text())
    assert_one_line_naming(done, mount / "run" / "checkpoints" / "last.pt", "No space left on device")
    run = kept / "run"
    assert contents(run / "checkpoints") == contents(stopped / "checkpoints")  # no partial file either
    assert (run / "metrics.jsonl").read_bytes() == (stopped / "metrics.jsonl").read_bytes()
    assert (
        main(["train", "--resume", str(run), "-q"]) == 0
    )  # on a disk with room: the run ends as if unbroken
    assert_same_run(unbroken, run)


def test_a_read_only_checkpoint_folder_stops_the_run_with_one_line_and_keeps_its_files(
    stopped: Path, unbroken: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(stopped, tmp_path / "run")
    before = contents(run)
    (run / "checkpoints").chmod(0o555)
    try:
        done = resume_in_child(run, preexec_fn=without_permission_override)
    finally:
        (run / "checkpoints").chmod(0o755)
    assert_one_line_naming(done, run / "checkpoints" / "last.pt", "Permission denied")
    assert_kept(run, before)  # every earlier output, the checkpoints included
    assert main(["train", "--resume", str(run), "-q"]) == 0  # permission back: the run ends as if unbroken
    assert_same_run(unbroken, run)


def test_a_run_directory_made_read_only_mid_run_stops_it_with_one_line_and_keeps_its_files(
    stopped: Path, unbroken: Path, tmp_path: Path
) -> None:
    """The resume is frozen (SIGSTOP) while or right after it writes its checkpoint of epoch 1, step 4 (its first
    save), the run directory is made read-only, and the resume let go: its next write there, metrics.jsonl at the
    epoch's end (one step later), fails. The checkpoints/ folder stays writable."""
    run = shutil.copytree(stopped, tmp_path / "run")
    command = [sys.executable, "-m", "deepcluster", "train", "--resume", str(run), "-q"]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=same_threads(), preexec_fn=without_permission_override
    )
    try:
        while not _saving_or_saved_step_4(run) and process.poll() is None:
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGSTOP)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1, "epoch 1 ended before the stop"
        before = outside_checkpoints(run)
        run.chmod(0o555)
        os.kill(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
    finally:
        run.chmod(0o755)
        if process.poll() is None:
            process.kill()
            process.wait()
    done = subprocess.CompletedProcess(command, process.returncode, "", stderr)
    assert_one_line_naming(done, run / "metrics.jsonl", "Permission denied")
    assert_kept(run, before, outside_checkpoints)
    assert sorted(os.listdir(run / "checkpoints")) == ["last.pt", "previous.pt"]  # the save was completed
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["step"] == 4
    assert main(["train", "--resume", str(run), "-q"]) == 0  # permission back: the run ends as if unbroken
    assert_same_run(unbroken, run)


def outside_checkpoints(run: Path) -> dict[str, bytes]:
    return {name: data for name, data in contents(run).items() if not name.startswith("checkpoints/")}


def _saving_or_saved_step_4(run: Path) -> bool:
    """The resume's first save (epoch 1, step 4: 5 steps per epoch) is being written or is written."""
    try:
        saving = any(name.startswith(".last.pt.") for name in os.listdir(run / "checkpoints"))
        return saving or (read_header(run / "checkpoints" / "last.pt") or {}).get("global_step") == 5 + 4
    except OSError:  # last.pt moved aside for a moment by a save
        return False


def test_a_run_directory_read_only_from_the_start_is_refused_before_any_work(
    stopped: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(stopped, tmp_path / "run")
    before = contents(run)
    run.chmod(0o555)
    try:
        done = resume_in_child(run, preexec_fn=without_permission_override)
    finally:
        run.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"deepcluster: error: --out {run}: cannot write there (Permission denied); choose a writable folder"
    ]
    assert contents(run) == before  # not even the log was written
