"""Issue 29: which configuration learns most in the same minutes? Trains every configuration of a YAML list with
the same time budget (run.max_minutes) on two selection data sets and ranks them.

    python benchmarks/sweep.py                                      # benchmarks/sweep.yaml, its minutes
    nohup python benchmarks/sweep.py --seeds 0,1 > sweep.log 2>&1 &  # unattended; the same command resumes
    python benchmarks/sweep.py --only default,k30 --minutes 2 --datasets cifar10-train-10k --out /tmp/try
    python benchmarks/sweep.py --table-only --out benchmarks/results/sweep-2026-12-07   # the table again

Data sets (train splits only: selection never sees a test split), from --data-dir (../shared/datasets):
  * cifar10-train-10k: a seeded random 10,000 images of CIFAR-10's train split (32 px), written once into
    --cache as an archive of the same layout;
  * imagenette-train-64: Imagenette's train split (9,469 images), decoded at 64 px (data.input_size=64).

Every (data set, configuration, seed) trains in a fresh process (so a crash is one failed entry, and the peak
RSS is the run's own) with run.max_minutes, then `benchmarks/learns.py`'s `measure`: weighted k-NN (k=20,
T=0.07, cosine, leave-one-out) on the embedding and on every conv tap (the best: `knn20_best_layer`), NMI of a
k-means of the embedding (with the default configuration's k and PCA size for every run, so the figures
compare) and NMI of the run's own final labels. The same measures for the random initialisation (same seed) of
the configuration's architecture and of the default configuration's network (once per data set and seed).
A configuration that fails (e.g. an option this tree does not have) is recorded as failed with its error's
first line, and the sweep goes on.

Records are appended to PREFIX.jsonl (default benchmarks/results/sweep-<date>) as they come; (data set,
configuration, seed) entries already there are skipped, so a stopped sweep resumes, and configurations
appended to the YAML later run next time (--retry-failed runs failed entries again; the minutes are not part
of the key: use another --out for another budget). The entry being trained when the sweep is stopped runs again
from the start; stop the sweep with Ctrl-C or by killing its process group (the run is a child process).
After the list: ranks by the trained k-NN on the embedding averaged over the data sets, trains the best three
with every further seed of --seeds, and writes PREFIX.md (one row per configuration; the CPU, precision,
minutes and command above).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import resource
import shlex
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from deepcluster import preset_config
from deepcluster.config import apply_overrides
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.engine.device import machine_description
from deepcluster.engine.loop import Trainer
from deepcluster.models import build_backbone
from deepcluster.seeding import seed_everything
from deepcluster.storage import RunDir
from jpeg_archives import archive_rows
from learns import measure, train_and_decode
from machine import cpu_line
from sweep_table import ranking, read_records, summary, write_table

HERE = Path(__file__).resolve().parent
DATASETS = {  # name: (archive, images of its train split to keep (None: all), the data set's own overrides)
    "cifar10-train-10k": ("cifar10_jpegbytes.npz", 10_000, {}),
    "imagenette-train-64": ("imagenette_jpegbytes.npz", None, {"data": {"input_size": 64, "resize": 64}}),
}
SUBSET_SEED = 29
TOP = 3


# ----------------------------------------------------------------------------------------------- set-up
def dataset_file(name: str, data_dir: Path, cache: Path) -> Path:
    """The archive a data set trains on: the shared one, or a seeded subset of its train split (written once)."""
    archive_name, images, _ = DATASETS[name]
    source = data_dir / archive_name
    if images is None:
        return source
    target = cache / f"{name}.npz"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with np.load(source) as archive:
            count = len(archive["off_train"]) - 1
            rows = np.sort(np.random.default_rng(SUBSET_SEED).permutation(count)[:images])
            subset = {**archive_rows(archive, "train", rows), "classes": archive["classes"]}
        partial = cache / f"{name}.partial.npz"
        np.savez(partial, **subset)
        partial.rename(target)
    return target


def nested(flat: dict) -> dict:
    """{"optim.lr": 0.1, "method": "sela-v2"} -> {"optim": {"lr": 0.1}, "method": "sela-v2"}."""
    out: dict = {}
    for key, value in (flat or {}).items():
        section, dot, option = str(key).partition(".")
        if dot:
            out.setdefault(section, {})[option] = value
        else:
            out[key] = value
    return out


def build_config(job: dict, out: Path | None):
    """The job's configuration: the default preset, the data set's overrides, `common`, the entry's, then the
    sweep's run settings."""
    layers: dict = {"data": {"data": job["data"], "split": "train"}}
    for layer in (DATASETS[job["dataset"]][2], nested(job["common"]), nested(job["overrides"])):
        for key, value in layer.items():
            layers[key] = {**layers.get(key, {}), **value} if isinstance(value, dict) else value
    run = {"seed": job["seed"], "max_minutes": job["minutes"], "report": False, "progress": False}
    layers["run"] = {**layers.get("run", {}), **run, "knn_monitor": 0, "out": str(out) if out else None}
    method, preset = layers.pop("method", None), layers.pop("preset", "default")
    return apply_overrides(
        preset_config(preset, method=method), layers, origin=f"sweep entry {job['config']}"
    )


def arch_key(resolved) -> str:
    """What decides a random initialisation's measures: the model section, the input and its normalisation."""
    data = resolved.data
    return json.dumps(
        {
            "model": resolved.to_dict()["model"],
            "size": [data.input_size, data.resize],
            "norm": [data.mean, data.std],
        }
    )


def measuring_config(resolved, job: dict):
    """The resolved config with the default configuration's k and PCA size (the k-means of `measure`)."""
    default = build_config({**job, "config": "default", "overrides": {}}, None).cluster
    return apply_overrides(
        resolved, {"cluster": {"k": default.k, "pca_dim": default.pca_dim}}, origin="sweep"
    )


def random_scores(resolved, images, truth, precision, job: dict) -> dict:
    """`measure` of the configured architecture at random initialisation (the run's seed: its first weights)."""
    seed_everything(resolved.run.seed)
    model = resolved.model
    net = build_backbone(model.arch, sobel=model.sobel, input_size=resolved.data.input_size)
    net = net.to(precision.device).to(memory_format=torch.channels_last)
    return measure(net, measuring_config(resolved, job), images, truth, precision)


# ----------------------------------------------------------------------------------------------- child jobs
def describe(precision: str) -> dict:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return {
        "cpu": cpu_line(),
        "precision": precision,
        "machine": machine_description(precision),
        "peak_rss_gb": peak,
    }


def default_random_job(job: dict) -> dict:
    """The default configuration's network at random initialisation, measured without training."""
    try:
        with tempfile.TemporaryDirectory(prefix="deepcluster-sweep-") as tmp:
            session = Trainer(build_config(job, Path(tmp) / "run"))  # resolves arch and sizes; writes nothing
            resolved = session.request
            data = resolved.data
            source = open_source(data.data, root=data.data_root, split=data.split)
            decoded = decode_images(source, data.resize, progress=False, inner_size=data.input_size)
            truth = np.asarray(source.labels)[decoded.indices]
            scores = random_scores(resolved, decoded.images, truth, session.precision, job)
        return {
            **job,
            "status": "ok",
            "arch": arch_key(resolved),
            "random": scores,
            **describe(session.precision.name),
        }
    except Exception as error:
        return failed(job, error)


def run_job(job: dict, known: dict) -> dict:
    """Train one configuration within the budget, measure it and (unless `known` has it) its random init."""
    try:
        with tempfile.TemporaryDirectory(prefix="deepcluster-sweep-") as tmp:
            result, seconds, resolved, images, truth, precision = train_and_decode(
                build_config(job, Path(tmp) / "run")
            )
            own = RunDir(result.run_dir).read_labels().labels[:, 0]
            trained = measure(result.backbone, measuring_config(resolved, job), images, truth, precision, own)
        key = arch_key(resolved)
        random = known.get(key) or random_scores(resolved, images, truth, precision, job)
        history, optim = result.history, resolved.optim
        per_epoch_images = optim.epoch_size or len(images)
        per_epoch = max(1, per_epoch_images // min(optim.batch_size, per_epoch_images))
        steps = sum(int(record.get("steps", per_epoch)) for record in history)
        seconds_train = sum(float(record.get("seconds_train", 0.0)) for record in history)
        taps = {k: v for k, v in trained.items() if k.startswith("knn20_") and k != "knn20_best_layer"}
        return {
            **job,
            "status": "ok",
            "trained": trained,
            "random_own": random,
            "arch": key,
            "best_layer": max(taps, key=taps.get).removeprefix("knn20_"),
            "images": len(images),
            "epochs": len(history),
            "steps": steps,
            "seconds_per_step": seconds_train / steps if steps else None,
            "seconds_train": seconds_train,
            "seconds_run": sum(float(record.get("seconds", 0.0)) for record in history),
            "seconds_wall": seconds,
            "label_updates": sum(int(record.get("label_updates", 0)) for record in history),
            "history": history,
            **describe(precision.name),
        }
    except Exception as error:
        return failed(job, error)


def failed(job: dict, error: BaseException) -> dict:
    traceback.print_exc()
    first = (str(error).strip().splitlines() or [""])[0]
    return {**job, "status": f"failed: {type(error).__name__}: {first}"}


def in_fresh_process(function, *args) -> dict:
    """`function(*args)` in a new spawned process (its own memory, its own peak RSS)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(HERE / "sweep.yaml"), help="YAML list of configurations")
    parser.add_argument("--minutes", type=float, help="training budget of every run (default: the YAML's)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--only", help="comma-separated names of the YAML's configurations to run")
    parser.add_argument("--seeds", default="0", help="the first for all, the others for the best three")
    today = datetime.date.today().isoformat()
    parser.add_argument(
        "--out", default=str(HERE / "results" / f"sweep-{today}"), help="PREFIX of .jsonl/.md"
    )
    parser.add_argument("--table-only", action="store_true", help="only write PREFIX.md from PREFIX.jsonl")
    parser.add_argument("--retry-failed", action="store_true", help="run failed entries again")
    parser.add_argument("--data-dir", default=str(HERE.parents[1] / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="folder of the built data sets")
    args = parser.parse_args()
    jsonl, table = Path(args.out + ".jsonl"), Path(args.out + ".md")
    if args.table_only:
        write_table(read_records(jsonl), table, jsonl, TOP)
        return
    listing = yaml.safe_load(Path(args.config).read_text())
    configs = {"default": {}, **{str(k): v or {} for k, v in listing["configs"].items()}}
    minutes = args.minutes or listing["minutes"]
    datasets = args.datasets.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    names = args.only.split(",") if args.only else list(configs)
    unknown = [name for name in [*names] if name not in configs] + [d for d in datasets if d not in DATASETS]
    if unknown:
        parser.error(f"not in {args.config} or {list(DATASETS)}: {', '.join(unknown)}")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv])
    print(
        f"machine: {cpu_line()}; {len(names)} configurations x {datasets}, {minutes} min each -> {jsonl}",
        flush=True,
    )
    data = {d: dataset_file(d, Path(args.data_dir), Path(args.cache)) for d in datasets}

    def job(dataset: str, name: str, seed: int, kind: str) -> dict:
        overrides = configs[name] if kind == "run" else {}
        common = listing.get("common") or {}
        entry = {"kind": kind, "dataset": dataset, "config": name, "seed": seed, "minutes": minutes}
        return {
            **entry,
            "overrides": overrides,
            "common": common,
            "data": str(data[dataset]),
            "date": today,
            "command": command,
        }

    def append(record: dict) -> None:
        with jsonl.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def ensure(kind: str, dataset: str, name: str, seed: int) -> None:
        records = read_records(jsonl)
        previous = records.get((kind, dataset, name, seed))
        if previous and (previous["status"] == "ok" or not args.retry_failed):
            return
        started = time.perf_counter()
        spec = job(dataset, name, seed, kind)
        known = {  # random inits measured before on this data set and seed, by architecture
            r["arch"]: r.get("random_own") or r["random"]
            for key, r in records.items()
            if key[1] == dataset and key[3] == seed and r["status"] == "ok"
        }
        try:
            if kind == "random":
                record = in_fresh_process(default_random_job, spec)
            else:
                record = in_fresh_process(run_job, spec, known)
        except Exception as error:  # the process died (killed, out of memory)
            first = (str(error).strip().splitlines() or [""])[0]
            record = {**spec, "status": f"failed: the process died ({type(error).__name__}: {first})"}
        append(record)
        print(summary(record, read_records(jsonl), time.perf_counter() - started), flush=True)

    for dataset in datasets:
        ensure("random", dataset, "default", seeds[0])
    for name in names:
        for dataset in datasets:
            ensure("run", dataset, name, seeds[0])
    best = [name for _, name in ranking(read_records(jsonl), datasets, seeds[0], names)[:TOP]]
    for seed in seeds[1:]:
        print(f"seed {seed} for the best {TOP}: {', '.join(best)}", flush=True)
        for dataset in datasets:
            ensure("random", dataset, "default", seed)
        for name in best:
            for dataset in datasets:
                ensure("run", dataset, name, seed)
    write_table(read_records(jsonl), table, jsonl, TOP)


if __name__ == "__main__":
    main()
