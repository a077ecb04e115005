"""Kill each method with SIGKILL at random moments, resume it, and check it ends as the unbroken run did.

    python benchmarks/kill_resume.py [--trials 20] [--methods deepcluster sela ...] [--jobs 2]
    python benchmarks/kill_resume.py --signal TERM     # pre-emption: SIGTERM, then the unchanged command

With `--signal TERM` (or USR1) each trial is sent that signal instead (a cluster pre-empting the job): the run
must stop by itself with exit code 75 (or 0 when it had finished), and the *unchanged* command, which carries
`--auto-resume`, is run again until the run ends.

For every method: one unbroken run (the reference), then `--trials` runs of the same seeded config, each killed
with `kill -9` once (and, one trial in four, killed a second time during its resume), then resumed to the end
(`--resume`; a trial killed before its run directory held config.yaml, i.e. while Python was still starting,
is started again with its own command, which is what there is to do then, and says so).
The moments rotate over: a checkpoint being written (a temporary file in checkpoints/), a label update (the
log's last line says which: before "labels assigned"), the report being built, and a random time of the run.
A trial counts as bit-identical when `same_run.compare` finds no difference (labels.csv, metrics without
timings, every per-epoch label file, every checkpoint tensor including RNG and optimiser states). Prints
"k/N resumed bit-identical" per method; every miss is listed with its difference. Runs are small (400 images
spread over the embedded CIFAR-10 split, 32 px, 3 epochs, report on) and one torch thread each, `--jobs` at a time.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deepcluster.data.sources import open_source
from deepcluster.engine.stop import PREEMPTED_EXIT
from machine import cpu_line
from same_run import compare

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "src" / "deepcluster" / "data" / "embedded" / "cifar10_test.npz"
BASE = ["--epochs", "3", "--batch-size", "64", "--seed", "5", "--threads", "1", "--no-progress", "--k", "10"]
BASE += ["--set", "run.checkpoint_every=2", "--set", "run.knn_monitor=200"]
METHODS = {
    "deepcluster": ["--set", "cluster.pca_dim=32"],
    "sela": ["--set", "sela.heads=2"],
    "deepercluster": ["--set", "cluster.pca_dim=32", "--set", "deepercluster.super_clusters=2"],
    "deepcluster-v2": ["--set", "deepcluster_v2.n_small=2"],
    "sela-v2": ["--set", "sela_v2.n_small=2", "--set", "sela_v2.labels_from=bank"],
}
MOMENTS = ("checkpoint write", "label update", "report", "random time")


def command(data: Path, out: Path, method: str, resume: bool, requeue: bool = False) -> list[str]:
    """The train command (with `requeue`: the one command a requeued job runs again, with --auto-resume), or
    the `--resume` of its run."""
    cli = [sys.executable, "-m", "deepcluster", "train", "-q"]
    if resume and not requeue:
        return [*cli, "--resume", str(out)]
    train = [*cli, "--method", method, "--data", str(data), "--out", str(out), *BASE, *METHODS[method]]
    return [*train, "--auto-resume"] if requeue else train


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")


def started(out: Path, moment: str, due: float, begun: float) -> bool:
    """Is it the moment to kill?"""
    if moment == "checkpoint write":
        folder = out / "checkpoints"
        return folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())
    if moment == "label update":
        log = out / "train.log"
        if not log.is_file():
            return False
        lines = log.read_text().splitlines()
        last = lines[-1].split(" ", 3)[-1] if lines else ""
        return last.startswith("run ") or (last.startswith("epoch ") and " done: " in last)
    if moment == "report":
        return (out / "report").is_dir()
    return time.monotonic() - begun >= due


def kill_during(
    cmd: list[str],
    out: Path,
    moment: str,
    due: float,
    timeout: float,
    lag: float = 0.0,
    how: int = signal.SIGKILL,
) -> str:
    """Start `cmd`, send it `how` (kill -9 by default) `lag` seconds after `moment` begins; what happened
    ("killed ..." or "finished before the moment"). A signal other than SIGKILL must make the run stop by itself
    with exit code 75 ("stopped ..."; else an error is raised)."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    begun = time.monotonic()
    armed: float | None = None
    try:
        while process.poll() is None:
            if armed is None and started(out, moment, due, begun):
                armed = time.monotonic() + lag
            if armed is not None and time.monotonic() >= armed:
                os.kill(process.pid, how)
                at = f"at {time.monotonic() - begun:.1f} s ({moment})"
                if how == signal.SIGKILL:
                    return f"killed {at}"
                code = process.wait(timeout=timeout)
                if code not in (PREEMPTED_EXIT, 0):
                    raise RuntimeError(
                        f"{signal.Signals(how).name} {at}: exit code {code}, not {PREEMPTED_EXIT}"
                    )
                return f"killed by {signal.Signals(how).name} {at}, exit {code}"
            if time.monotonic() - begun > timeout:
                os.kill(process.pid, signal.SIGKILL)
                return f"killed at the timeout ({timeout:.0f} s)"
            time.sleep(0.002)
        return "finished before the moment"
    finally:
        process.wait()


def trial(
    data: Path, work: Path, method: str, reference: Path, index: int, duration: float, how: int
) -> tuple[bool, str]:
    rng = random.Random(f"{method}-{index}")
    out = work / f"{method}-trial{index:02d}"
    moment = MOMENTS[index % len(MOMENTS)]
    lag = rng.uniform(0.0, 0.4) if moment == "label update" else 0.0  # into the update that follows the line
    requeue = how != signal.SIGKILL
    try:
        what = kill_during(
            command(data, out, method, False, requeue),
            out,
            moment,
            rng.uniform(0.5, duration),
            4 * duration,
            lag,
            how,
        )
        if index % 4 == 3 and what.startswith("killed"):  # and once more while it resumes
            again = kill_during(
                command(data, out, method, True, requeue),
                out,
                "random time",
                rng.uniform(0.5, 8),
                4 * duration,
                how=how,
            )
            what += f"; resume {again}"
    except RuntimeError as error:  # a stop signal that did not stop the run as it should
        return False, f"trial {index}: FAILED: {error}"
    began = (out / "config.yaml").is_file()  # written when the run directory is made, before anything else
    if not began:  # killed before the run existed (Python still starting): what a user does is start it again
        what += "; before the run began, so started again"
    try:
        run_to_end(command(data, out, method, resume=began, requeue=requeue))
        differences = compare(reference, out)
    except Exception as error:  # a resume that fails is a miss like a difference
        return False, f"trial {index}: {what}; FAILED: {error}"
    return not differences, f"trial {index}: {what}" + (
        f"; DIFFERS: {differences[:5]}" if differences else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time (one torch thread each)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--work", help="folder for the runs (default: a temporary folder, removed)")
    parser.add_argument(
        "--signal",
        default="KILL",
        choices=["KILL", "TERM", "USR1"],
        help="KILL: kill -9, then --resume; TERM or USR1: pre-emption, then the unchanged command (--auto-resume)",
    )
    args = parser.parse_args(argv)
    how = signal.Signals[f"SIG{args.signal}"]
    print(
        f"CPU: {cpu_line()}; precision auto; {args.trials} trials per method, {args.jobs} at a time, SIG{args.signal}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "images.npz"
        source = open_source(str(EMBEDDED))
        chosen = np.linspace(0, len(source) - 1, args.images).astype(int)  # the split is sorted by class
        images = np.stack([np.asarray(source.load(int(i)).convert("RGB")) for i in chosen])
        np.savez(data, images=images, labels=np.asarray(source.labels)[chosen])
        failed = 0
        for method in args.methods:
            reference = work / f"{method}-reference"
            begun = time.monotonic()
            run_to_end(command(data, reference, method, False, requeue=how != signal.SIGKILL))
            duration = time.monotonic() - begun
            with ThreadPoolExecutor(args.jobs) as pool:
                jobs = [
                    pool.submit(trial, data, work, method, reference, i, duration, how)
                    for i in range(args.trials)
                ]
                results = [job.result() for job in jobs]
            same = sum(ok for ok, _ in results)
            failed += args.trials - same
            print(f"{method}: {same}/{args.trials} resumed bit-identical (unbroken run {duration:.1f} s)")
            for _, line in results:
                print(f"    {line}")
            sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
