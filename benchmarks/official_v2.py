"""Issue 29, targets 2 and 5: our DeepCluster-v2 beside the official code (SwAV's `main_deepclusterv2.py`) ported
minimally to the CPU, on the same images, network, crops and minutes.

    python benchmarks/official_v2.py --official /tmp/official --minutes 9                # 10,000 CIFAR-10 train images
    python benchmarks/official_v2.py --official /tmp/official --minutes 5 --embedded     # the embedded test split
    python benchmarks/official_v2.py --official /tmp/official --steps-only 20            # seconds per step only
    python benchmarks/official_v2.py --official /tmp/official --minutes 0.2 --images 1000 # a quick check

What it does: writes the images once as PNG folders (`class/name.png`, cached in --cache) for the official
ImageFolder-based multi-crop dataset; runs the port for --minutes in a subprocess (its log and dump folder are
printed); loads the trunk it saved into our `alexnet_small_gap` and judges it exactly as `benchmarks/learns.py`
judges ours (`measure`: weighted k-NN, k=20, T=0.07, leave-one-out, on the embedding and every conv tap; NMI of a
k-means of the PCA-whitened embedding with our k), beside the same network at random initialisation (same seed:
the port builds its trunk first after seeding torch with it, so this is the port's starting point); then trains
ours (the default configuration, --max-minutes M, --precision fp32 unless --precision says otherwise) on the same
images and judges it the same way. One table (random, official, ours: k-NN embedding, best layer, NMI k-means,
steps, seconds per step), the CPU and the precision; --out FILE.md writes it as Markdown.

Images: a seeded (29, as benchmarks/sweep.py) subset of --images (default 10,000) of CIFAR-10's train split from
--data-dir/cifar10_jpegbytes.npz, written once as an archive of the same layout for our run (the 10,000-image one
is sweep.py's cifar10-train-10k.npz); --embedded: the embedded CIFAR-10 test split (all of it, or a seeded
--images subset). Both sides decode the same JPEG bytes with PIL: the PNG files hold our decoded pixels.

--steps-only N: only the step timing, both in fp32 (or --precision) at the same crops, batch and network: the
port times N training steps after --warmup steps (its data loader's wait included: --workers processes make the
crops beside the training, as in the official code) on a random memory bank; ours times N steps after --warmup as
`engine/budget.py`'s `time_steps` does (the run's train view, forward, loss and SGD step on the decoded images,
here on fresh rows each step). Prints both and the ratio official / ours. --warmup + N must fit in one epoch of
the port (78 steps at 10,000 images). Time on a quiet machine: the port's data workers are extra processes, which
take a larger share of a CPU that other jobs keep busy.

The port is not in this repository (none of the official code is committed here; the port's folder has the full
list of changes in CHANGES.md and as port.patch). To recreate it in a folder (default /tmp/official) from
facebookresearch/swav (commit 06b1b7c): copy `main_deepclusterv2.py` and `src/`, then
  * src/utils.py: init_distributed_mode takes RANK / WORLD_SIZE from the environment with 0 / 1 as defaults, the
    gloo backend in place of nccl (init_method from --dist_url: env:// or file://), no cuda device to set;
    restart_from_checkpoint loads onto the CPU;
  * src/logger.py: PD_Stats keeps a pickled list of rows in place of a pandas DataFrame (pandas is not needed);
  * src/resnet50.py: no `.cuda()` in ResNet.forward; a new `alexnet_small_gap` architecture: our
    `deepcluster.models.build_backbone("alexnet_small_gap", sobel=False, input_size=32)` (256-d global-pooled
    conv5, our initialisation) as the trunk (`model.trunk`) under the ResNet's own projection head (Linear 256 ->
    hidden, BatchNorm1d, ReLU, Linear -> feat_dim), L2 normalisation and MultiPrototypes, and ResNet's own
    forward (crops grouped by size) and forward_head;
  * main_deepclusterv2.py: no apex (plain torch SGD, momentum 0.9, in place of LARC; their lr schedule unchanged:
    linear warm-up over --warmup_epochs, then cosine from --base_lr to --final_lr over the epochs' steps); no SyncBN,
    no DistributedDataParallel (`model.module.prototypes` -> `model.prototypes`), no `.cuda()` anywhere, DataLoader
    pin_memory=False, `optimizer.optim.param_groups` -> `optimizer.param_groups` in the log; and three port options:
    --max_minutes M (the wall clock starts before the memory bank's first pass; training stops at the first step
    boundary after M minutes, mid-epoch if need be), --time_steps N --warmup_steps W (timing mode: a random
    unit-norm memory bank in place of init_memory's pass, then W + N steps of the first epoch, the last N timed as
    their own `batch_time`, data wait included), and --trunk_out (default dump_path/trunk.pth); at the end the
    trunk's state_dict and dump_path/summary.json (steps, training seconds and seconds per step: the steps'
    loop time with data waits, not the clustering) are written.
Their memory bank, init_memory, cluster_memory (k-means on the bank, 10 iterations, centroids as prototypes),
loss, multi-crop dataset (colour jitter, grayscale, PIL blur on every crop, their normalisation), DistributedSampler
and data loader are theirs; fp32 only (their code has no bf16 path on the CPU). This script passes our
configuration's values: --arch alexnet_small_gap --nmb_crops 2 4 --size_crops 32 16 --min_scale_crops 0.14 0.05
--max_scale_crops 1. 0.14 --nmb_prototypes 100 100 100 --feat_dim 128 --hidden_mlp 2048 --temperature 0.1
--batch_size 128 --base_lr 0.05 --final_lr 5e-5 (their ratio: base / 1000) --wd 1e-6 --warmup_epochs 0
--epochs --official-epochs (default 5, our method's run.epochs: the cosine the wall clock cuts) --workers 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import preset_config
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.engine.device import Precision
from deepcluster.engine.loop import Trainer
from deepcluster.evaluate.results import format_table
from deepcluster.models import build_backbone
from deepcluster.seeding import seed_everything
from jpeg_archives import archive_rows
from learns import measure, train_and_decode
from machine import cpu_line
from step_profile import batch_rows, ready_trainer, run_steps

HERE = Path(__file__).resolve().parent
SUBSET_SEED = 29  # benchmarks/sweep.py's: the 10,000-image subset is sweep.py's cifar10-train-10k
EMBEDDED = HERE.parent / "src" / "deepcluster" / "data" / "embedded" / "cifar10_test.npz"
METHOD = "deepcluster-v2"


# ----------------------------------------------------------------------------------------------- images
def image_set(args) -> tuple[str | None, str | None, str]:
    """(our data.data, data.split, a name for the cache) of the images the benchmark uses, writing a subset
    archive once when one is asked for."""
    if args.embedded and args.images is None:
        return None, None, "cifar10-test-embedded"
    if args.embedded:
        source, split, name = EMBEDDED, "test", f"cifar10-test-embedded-{args.images}"
    else:
        images = args.images or 10_000
        source, split = Path(args.data_dir) / "cifar10_jpegbytes.npz", "train"
        name = "cifar10-train-10k" if images == 10_000 else f"cifar10-train-{images}"
    target = Path(args.cache) / f"{name}.npz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with np.load(source) as archive:
            count = len(archive[f"off_{split}"]) - 1
            rows = np.sort(np.random.default_rng(SUBSET_SEED).permutation(count)[: args.images or 10_000])
            subset = {**archive_rows(archive, split, rows), "classes": archive["classes"]}
        partial = target.with_suffix(".partial.npz")
        np.savez(partial, **subset)
        partial.rename(target)
    return str(target), split, name


def png_folder(data: str | None, split: str | None, name: str, cache: Path) -> Path:
    """The images as an ImageFolder tree (`class/file.png`, the pixels PIL decodes from the archive's JPEG
    bytes, as our run decodes them), written once into `cache`."""
    folder = cache / "official_v2" / f"{name}-png"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    source = open_source(data, split=split)
    print(f"writing {len(source)} PNG files to {folder} (once)", flush=True)
    for index in range(len(source)):
        path = folder / Path(source.name(index)).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        source.load(index).save(path)
    (folder / ".complete").write_text(f"{len(source)} images\n")
    return folder


# ----------------------------------------------------------------------------------------------- the port
def official_arguments(resolved, epochs: int, workers: int) -> list[str]:
    """The port's arguments holding our configuration's network, crops, prototypes, batch and optimiser."""
    v2, optim = resolved.section("deepcluster_v2"), resolved.optim
    size = int(resolved.data.input_size)
    small = v2.small_size or max(8, size // 2)
    arguments = {
        "--arch": ["alexnet_small_gap"],
        "--nmb_crops": [v2.n_large, v2.n_small],
        "--size_crops": [size, small],
        "--min_scale_crops": [v2.large_scale[0], v2.small_scale[0]],
        "--max_scale_crops": [v2.large_scale[1], v2.small_scale[1]],
        "--crops_for_assign": list(range(v2.n_large)),
        "--nmb_prototypes": [resolved.cluster.k] * v2.n_sets,
        "--feat_dim": [v2.out_dim],
        "--hidden_mlp": [v2.hidden],
        "--temperature": [v2.temperature],
        "--batch_size": [optim.batch_size],
        "--base_lr": [optim.lr],
        "--final_lr": [optim.lr / 1000],  # their scripts' ratio (4.8 -> 0.0048): 0.05 -> 5e-5
        "--wd": [optim.weight_decay],
        "--warmup_epochs": [0],
        "--start_warmup": [0],
        "--epochs": [epochs],
        "--workers": [workers],
        "--seed": [resolved.run.seed],
    }
    return [str(item) for key, values in arguments.items() for item in (key, *values)]


def run_official(official: Path, pngs: Path, arguments: list[str], extra: list[str], keep: bool) -> dict:
    """Run the port in a subprocess (one process, gloo, a file store in its dump folder); returns its
    summary.json with the dump folder as `dump`."""
    script = official / "main_deepclusterv2.py"
    if not script.is_file():
        sys.exit(
            f"{script} not found: recreate the port there (see this script's docstring) or pass --official"
        )
    dump = Path(tempfile.mkdtemp(prefix="official-v2-"))
    command = [
        sys.executable,
        str(script),
        "--data_path",
        str(pngs),
        "--dump_path",
        str(dump),
        "--dist_url",
        f"file://{dump / 'dist_store'}",
        *arguments,
        *extra,
    ]
    environment = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}
    log = dump / "stdout.log"
    print(f"official: {' '.join(command)}\n  log: {log}", flush=True)
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=official, env=environment, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        print(log.read_text()[-4000:])
        sys.exit(f"the official port failed (exit {done.returncode}); its log: {log}")
    summary = json.loads((dump / "summary.json").read_text())
    summary["dump"], summary["seconds_process"] = str(dump), time.perf_counter() - began
    if not keep:
        trunk = torch.load(summary["trunk"], map_location="cpu", weights_only=True)
        shutil.rmtree(dump, ignore_errors=True)
        summary["state_dict"] = trunk
    return summary


def official_trunk(summary: dict, resolved) -> torch.nn.Module:
    """Our `alexnet_small_gap` holding the weights the port trained."""
    state = summary.get("state_dict") or torch.load(summary["trunk"], map_location="cpu", weights_only=True)
    net = build_backbone(resolved.model.arch, sobel=resolved.model.sobel, input_size=resolved.data.input_size)
    net.load_state_dict(state)
    return net


# ----------------------------------------------------------------------------------------------- ours
def our_config(args, data: str | None, split: str | None, out: Path, minutes: float | None):
    overrides = parse_set(args.set)
    run = {
        "seed": args.seed,
        "progress": False,
        "report": False,
        "precision": args.precision,
        "out": str(out),
    }
    if minutes:
        run["max_minutes"] = minutes
    overrides.setdefault("run", {}).update(run)
    overrides.setdefault("data", {}).update({"data": data, "split": split})
    config = apply_overrides(preset_config("default", method=METHOD), overrides, origin="benchmark")
    if config.method != METHOD:
        sys.exit(f"the port is DeepCluster-v2: compare it with method {METHOD}, not {config.method}")
    return config


def time_our_steps(config, steps: int, warmup: int) -> dict:
    """Seconds per training step of ours, each step as the engine runs it (`step_profile.run_steps`: the run's
    train view, forward, loss, backward, optimiser step, on the run's own networks, heads as built for the first
    labels, random labels), `warmup` untimed steps first."""
    with ready_trainer(config, "deepcluster_v2") as (trainer, labels, order):
        parts = batch_rows(order, trainer.batch_size, warmup + steps)
        timed = [sum(phases.values()) for phases in run_steps(trainer, parts, labels)][warmup:]
        return {
            "step_mean": statistics.fmean(timed),
            "step_median": statistics.median(timed),
            "timed_steps": len(timed),
            "batch": trainer.batch_size,
            "images": len(trainer.data.indices),
            "precision": trainer.precision.name,
            "threads": torch.get_num_threads(),
        }


def our_steps(history: list[dict], images: int, config) -> tuple[int, float]:
    """(steps, training seconds) of a run, from its history (as benchmarks/sweep.py counts them)."""
    per_epoch_images = config.optim.epoch_size or images
    per_epoch = max(1, per_epoch_images // min(config.optim.batch_size, per_epoch_images))
    steps = sum(int(record.get("steps", per_epoch)) for record in history)
    return steps, sum(float(record.get("seconds_train", 0.0)) for record in history)


# ----------------------------------------------------------------------------------------------- output
def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(args, head: list[str], rows: list[dict], columns: list[tuple[str, str]], tail: list[str]) -> None:
    text = format_table(rows, columns)
    print("\n" + "\n".join(head) + "\n" + text + ("\n" + "\n".join(tail) if tail else ""))
    if args.out:
        body = "\n".join(f"{line}  " for line in head) + "\n\n" + markdown(rows, columns) + "\n"
        if tail:
            body += "\n" + "\n".join(f"{line}  " for line in tail) + "\n"
        command = " ".join(["python", *sys.argv])
        Path(args.out).write_text(
            f"# Official DeepCluster-v2 (CPU port) beside ours\n\n`{command}`\n\n{body}"
        )
        print(f"written to {args.out}")


def steps_only(args, config, resolved, pngs: Path) -> None:
    extra = ["--time_steps", str(args.steps_only), "--warmup_steps", str(args.warmup)]
    official = run_official(
        Path(args.official),
        pngs,
        official_arguments(resolved, args.official_epochs, args.workers),
        extra,
        False,
    )
    ours = time_our_steps(config, args.steps_only, args.warmup)
    v2 = resolved.section("deepcluster_v2")
    rows = [
        {"code": "official (port)", "precision": "fp32", "mean": official["step_mean"],
         "median": official["step_median"], "data wait": official["data_wait_mean"],
         "steps": official["timed_steps"]},
        {"code": f"ours: {METHOD}", "precision": ours["precision"], "mean": ours["step_mean"],
         "median": ours["step_median"], "data wait": None, "steps": ours["timed_steps"]},
    ]  # fmt: skip
    columns = [("code", "code"), ("precision", "precision"), ("steps", "timed steps"),
               ("mean", "s per step (mean)"), ("median", "s per step (median)"),
               ("data wait", "of which data wait (mean)")]  # fmt: skip
    head = [
        f"machine: {cpu_line()}; torch threads {ours['threads']}, official data workers {args.workers}",
        f"{ours['images']} images, step: batch {ours['batch']}, crops {v2.n_large}x{resolved.data.input_size} + "
        f"{v2.n_small}x{v2.small_size or max(8, int(resolved.data.input_size) // 2)}, arch alexnet_small_gap, "
        f"{args.warmup} warm-up steps",
    ]
    ratio = official["step_mean"] / ours["step_mean"]
    ratio_median = official["step_median"] / ours["step_median"]
    report(args, head, rows, columns, [f"official / ours: {ratio:.2f}x (mean), {ratio_median:.2f}x (median)"])


def judged(net, resolved, images, truth, precision) -> dict:
    return measure(net.to(memory_format=torch.channels_last), resolved, images, truth, precision)


def full(args, config, resolved, precision: Precision, pngs: Path) -> None:
    arguments = official_arguments(resolved, args.official_epochs, args.workers)
    official = run_official(
        Path(args.official), pngs, arguments, ["--max_minutes", str(args.minutes)], args.keep
    )
    print(
        f"official: {official['steps']} steps in {official['seconds_train']:.0f} s of training "
        f"({official['seconds_per_step']:.3f} s per step), {official['seconds_total']:.0f} s in all",
        flush=True,
    )
    data = resolved.data
    source = open_source(data.data, root=data.data_root, split=data.split)
    decoded = decode_images(source, data.resize, progress=False, inner_size=data.input_size)
    truth = np.asarray(source.labels)[decoded.indices]
    seed_everything(resolved.run.seed)
    model = resolved.model
    random_net = build_backbone(model.arch, sobel=model.sobel, input_size=data.input_size)
    scores = {
        "random": judged(random_net, resolved, decoded.images, truth, precision),
        "official": judged(official_trunk(official, resolved), resolved, decoded.images, truth, precision),
    }
    for name in scores:
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores[name].items()), flush=True)

    result, seconds, ours_resolved, images, truth, ours_precision = train_and_decode(config)
    scores["ours"] = judged(result.backbone, ours_resolved, images, truth, ours_precision)
    steps, seconds_train = our_steps(result.history, len(images), ours_resolved)

    def best(name: str) -> str:
        taps = {k: v for k, v in scores[name].items() if k.startswith("knn20_") and k != "knn20_best_layer"}
        return max(taps, key=taps.get).removeprefix("knn20_")

    rows = []
    for name, label, trained, count, per_step in (
        ("random", "random init", "-", None, None),
        ("official", "official DC-v2 (port)", f"{official['seconds_train']:.0f} s", official["steps"],
         official["seconds_per_step"] if official["steps"] else None),
        ("ours", f"ours: {METHOD}", f"{seconds_train:.0f} s", steps, seconds_train / steps if steps else None),
    ):  # fmt: skip
        s = scores[name]
        rows.append({"network": label, "knn": s["knn20_embedding"], "best": s["knn20_best_layer"],
                     "layer": best(name), "nmi": s["nmi_kmeans"], "margin": s["knn20_embedding"] -
                     scores["random"]["knn20_embedding"], "trained": trained, "steps": count,
                     "per_step": per_step})  # fmt: skip
    columns = [("network", "network"), ("knn", "k-NN embedding"), ("margin", "vs random"),
               ("best", "k-NN best layer"), ("layer", "best layer"), ("nmi", "NMI k-means"),
               ("trained", "training"), ("steps", "steps"), ("per_step", "s per step")]  # fmt: skip
    head = [
        f"machine: {cpu_line()}; torch threads {torch.get_num_threads()}, official data workers {args.workers}",
        f"precision: official fp32 (no bf16 path on the CPU), ours {ours_precision.name}; all three judged "
        f"in {precision.name} (as benchmarks/learns.py: our run's)",
        f"{len(truth)} images ({'embedded CIFAR-10 test split' if args.embedded else 'CIFAR-10 train subset'}), "
        f"{args.minutes} minutes each, arch {model.arch}, batch {ours_resolved.optim.batch_size}, "
        f"k {ours_resolved.cluster.k}, seed {args.seed}; official cosine over {args.official_epochs} epochs "
        f"(cut by the clock), ours: {ours_resolved.run.budget_plan or 'no budget plan'}",
    ]
    report(args, head, rows, columns, [])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", default="/tmp/official", help="folder of the port")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each side")
    parser.add_argument(
        "--images", type=int, help="seeded subset size (default 10,000 train images; --embedded: all)"
    )
    parser.add_argument("--embedded", action="store_true", help="the embedded CIFAR-10 test split")
    parser.add_argument("--steps-only", type=int, metavar="N", help="only time N steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before --steps-only's")
    parser.add_argument("--precision", default="fp32", help="ours: fp32, bf16 or auto (the port: fp32)")
    parser.add_argument("--workers", type=int, default=2, help="the port's data-loading processes")
    parser.add_argument(
        "--official-epochs",
        type=int,
        default=5,
        help="epochs of the port's cosine schedule (cut by the clock)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="our overrides (section.option=value)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the port's dump folder (log, trunk)")
    parser.add_argument("--data-dir", default=str(HERE.parents[1] / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="folder of the written image sets")
    args = parser.parse_args()

    data, split, name = image_set(args)
    pngs = png_folder(data, split, name, Path(args.cache))
    out = Path(tempfile.mkdtemp(prefix="deepcluster-official-v2-"))
    try:
        minutes = None if args.steps_only else args.minutes
        config = our_config(args, data, split, out / "run", minutes)
        session = Trainer(config)  # resolves arch, sizes and precision; writes nothing
        if args.steps_only:
            steps_only(args, config, session.request, pngs)
        else:
            full(args, config, session.request, session.precision, pngs)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
