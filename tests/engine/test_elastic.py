"""Elastic restarts: under `torchrun --max-restarts=2`, a worker SIGKILLed mid-epoch makes torchrun restart every
worker with the same command, which (with --auto-resume) continues from the last checkpoint and ends bit-identical
to an unbroken two-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs import command
from synthetic import assert_same_run, torchrun, write_pattern_npz


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds torchrun's workers in /proc")
def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_ends_as_if_unbroken(tmp_path: Path) -> None:
    data = write_pattern_npz(tmp_path / "patterns.npz")
    # the train command's arguments; a collective left waiting for a dead peer fails within a minute
    arguments = [*command(data, tmp_path / "unbroken")[4:], "--set=run.dist_timeout_minutes=1"]
    torchrun(arguments, tmp_path)
    out = tmp_path / "elastic"
    launch = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=2",
        "--monitor-interval=0.1", "-m", "deepcluster", "train", *command(data, out)[4:],
        "--set=run.dist_timeout_minutes=1",
    ]  # fmt: skip
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = (tmp_path / "torchrun.log").open("w")
    agent = subprocess.Popen(launch, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT)
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = {_rank_of(pid): pid for pid in _children(agent.pid)}
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-epoch: no checkpoint of its own, no goodbye
    agent.wait(timeout=300)
    log.close()
    output = (tmp_path / "torchrun.log").read_text()
    assert agent.returncode == 0, output[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in output  # the kill, seen by torchrun, which restarted
    assert_same_run(tmp_path / "unbroken", out)
