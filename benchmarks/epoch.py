"""Time each phase of one DeepCluster epoch, fast path beside the reference pipeline, against the FLOP floor.

An epoch has three phases: a forward pass over every image (cluster view), PCA + k-means, and a training pass
(train view). For each phase this prints images per second, its share of the epoch and its efficiency, the
FLOP floor divided by the measured time, where the floor is the model's counted FLOPs for that phase
(`torch.utils.flop_counter`: forward for the features pass, forward + backward for training) at this machine's
dense matrix-multiply rate, measured in the same run at the precision the phase runs in. Peak memory too.

  * fast path: `deepcluster train` itself for one epoch (decode once to uint8 tensors, batched views,
    channels-last, the configured precision, our PCA, faiss or torch k-means);
  * reference: the reference implementation's pipeline, a torch DataLoader over image files with per-image PIL
    transforms, contiguous fp32, faiss's PCAMatrix and faiss k-means; same model, batch size and k.

Each path runs in a child process of its own, so peak memory is the path's own. Cases (from ../shared/datasets):

    python benchmarks/epoch.py --case cifar10                 # 50,000 images, 32 px, small AlexNet
    python benchmarks/epoch.py --case imagenette              # 9,469 images, 224 px, AlexNet
    python benchmarks/epoch.py --case cifar10 --scaling 10000,50000,100000 --no-reference
    python benchmarks/epoch.py --data src/deepcluster/data/embedded/cifar10_test.npz --split test --n 50000

`--n` repeats the images cyclically to reach N (for scaling). `--train-images` caps the images drawn by the
training pass (time per image is what the scaling table needs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster.config import default_resize
from deepcluster.engine.device import resolve_device, resolve_precision
from jpeg_archives import archive_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CASES = {
    "cifar10": {"archive": "cifar10_jpegbytes.npz", "split": "train", "arch": "alexnet_small", "size": 32},
    "imagenette": {"archive": "imagenette_jpegbytes.npz", "split": "train", "arch": "alexnet", "size": 224},
}
PHASES = ("extract", "assign", "train")


# ----------------------------------------------------------------------------------------------- data
def repeated_archive(path: Path, split: str, n: int | None, folder: Path) -> tuple[Path, int]:
    """A JPEG-bytes archive of `split` with its images repeated cyclically to `n` (or as is); (path, count)."""
    with np.load(path) as archive:
        offsets = archive[f"off_{split}"]
        count = len(offsets) - 1
        if n is None or n == count:
            return path, count
        rows = np.arange(n) % count
        out = {**archive_rows(archive, split, rows), "classes": archive["classes"]}
        # repeat r of file f is named f#r, so names stay unique
        repeat = np.arange(n) // count
        out[f"files_{split}"] = np.array(
            [f"{f}#{r}" for f, r in zip(out[f"files_{split}"], repeat, strict=True)]
        )
    target = folder / f"{path.stem}_{split}_{n}.npz"
    np.savez(target, **out)
    return target, n


def write_image_files(archive: Path, split: str, folder: Path) -> Path:
    """The archive's images as ordinary files (`class/NNNNNN.jpg`), byte for byte: what the reference reads."""
    with np.load(archive) as data:
        offsets, blob, labels = data[f"off_{split}"], data[f"jpeg_{split}"], data[f"y_{split}"]
        classes = [str(c) for c in data["classes"]]
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(offsets) - 1):
        (folder / classes[labels[i]] / f"{i:07d}.jpg").write_bytes(
            blob[offsets[i] : offsets[i + 1]].tobytes()
        )
    return folder


# ----------------------------------------------------------------------------------------------- rates
def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best dense matrix-multiply rate (FLOP/s) of this device at `dtype`, square products, ~`seconds` long."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def model_flops(arch: str, size: int, k: int, sobel: bool = True) -> dict[str, float]:
    """Counted FLOPs per image: forward of the backbone (features pass) and forward + backward of backbone and
    a k-way head (training step)."""
    from torch.utils.flop_counter import FlopCounterMode

    from deepcluster.models import ClassifierHead, build_backbone

    backbone = build_backbone(arch, sobel=sobel, input_size=size)
    head = ClassifierHead(backbone.feature_dim, k)
    x = torch.randn(8, 3, size, size)
    backbone.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone(x)
    forward = counter.get_total_flops() / 8
    backbone.train()
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(head(backbone(x)), torch.zeros(8, dtype=torch.long))
        loss.backward()
    return {"forward": forward, "train": counter.get_total_flops() / 8}


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (GB) and peak CUDA memory allocated (GB, when on a GPU)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    gpu = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0
    return {"peak_rss_gb": rss, "peak_gpu_gb": gpu}


# ----------------------------------------------------------------------------------------------- paths
def run_fast(spec: dict) -> dict:
    """One epoch of `deepcluster train`; phase seconds from its metrics, decode + set-up from the wall time."""
    from deepcluster import load_config, preset_config
    from deepcluster.config import apply_overrides
    from deepcluster.engine.trainer import train

    config = apply_overrides(
        preset_config("default", method="deepcluster"),  # the paper's method, as the reference runs it
        {
            "data": {
                "data": spec["data"],
                "split": spec["split"],
                "input_size": spec["size"],
                "cache": spec.get("cache", "auto"),
            },  # fmt: skip
            "model": {"arch": spec["arch"]},
            "cluster": {"k": spec["k"]},
            "optim": {"batch_size": spec["batch_size"], "epoch_size": spec["train_images"]},
            "run": {
                "epochs": 1,
                "out": spec["out"],
                "device": spec["device"],
                "precision": spec["precision"],
                "checkpoint_every": 0,
                "progress": spec["progress"],
            },
        },
        origin="benchmark",
    )
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    record = result.history[-1]
    seconds = {phase: float(record[f"seconds_{phase}"]) for phase in PHASES}
    steps = max(1, (spec["train_images"] or spec["n"]) // spec["batch_size"])
    return {
        "seconds": seconds,
        "images": {"extract": spec["n"], "assign": spec["n"], "train": steps * spec["batch_size"]},
        "decode_and_setup_seconds": wall - sum(seconds.values()),
        "precision": load_config(Path(result.run_dir) / "config.yaml").run.precision,
        **peak_memory(),
    }


def run_reference(spec: dict) -> dict:
    """One epoch of the reference pipeline: PIL per image in a DataLoader, contiguous fp32, faiss PCAMatrix."""
    import faiss

    from deepcluster.cluster import kmeans, l2_normalize, pca_whiten
    from deepcluster.config import IMAGENET_MEAN, IMAGENET_STD
    from deepcluster.data.reference import (
        reference_cluster_transform,
        reference_loader,
        reference_train_transform,
    )
    from deepcluster.data.samplers import uniform_cluster_sample
    from deepcluster.data.sources import open_source
    from deepcluster.models import ClassifierHead, build_backbone

    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    source = open_source(spec["files"])
    size, resize = spec["size"], default_resize(spec["size"])
    backbone = build_backbone(spec["arch"], sobel=True, input_size=size).to(device)
    workers = spec["workers"]
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    backbone.eval()
    cluster_tf = reference_cluster_transform(resize, size, IMAGENET_MEAN, IMAGENET_STD)
    chunks = []
    with torch.no_grad():
        for x in reference_loader(source, cluster_tf, 256, workers=workers, pin_memory=device.type == "cuda"):
            chunks.append(backbone(x.to(device, non_blocking=True)).float().cpu().numpy())
    features = np.concatenate(chunks)
    seconds["extract"] = time.perf_counter() - started

    started = time.perf_counter()
    if features.shape[0] > features.shape[1]:
        pca = faiss.PCAMatrix(features.shape[1], 256, -0.5)
        pca.train(features)
        reduced = l2_normalize(pca.apply_py(features))
    else:  # faiss's whitening divides by the zero eigenvalues of a rank-deficient covariance
        reduced = pca_whiten(features, dim=min(256, features.shape[0] - 1))
    labels = kmeans(reduced, spec["k"], n_iter=20, seed=0).labels
    seconds["assign"] = time.perf_counter() - started

    started = time.perf_counter()
    n_train = spec["train_images"] or len(source)
    steps = max(1, n_train // spec["batch_size"])
    indices = uniform_cluster_sample(labels, steps * spec["batch_size"], seed=0)
    head = ClassifierHead(backbone.feature_dim, spec["k"]).to(device)
    optimizer = torch.optim.SGD(
        [*backbone.trainable_parameters(), *head.parameters()], lr=0.05, momentum=0.9, weight_decay=1e-5
    )
    targets = torch.as_tensor(labels)[torch.as_tensor(indices)]
    backbone.train()
    train_tf = reference_train_transform(resize, size, IMAGENET_MEAN, IMAGENET_STD, scale=(0.2, 1.0))
    loader = reference_loader(source, train_tf, spec["batch_size"], indices=indices, workers=workers)
    for step, x in enumerate(loader):
        y = targets[step * spec["batch_size"] : (step + 1) * spec["batch_size"]].to(device)
        loss = torch.nn.functional.cross_entropy(head(backbone(x.to(device, non_blocking=True))), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds["train"] = time.perf_counter() - started
    return {
        "seconds": seconds,
        "images": {"extract": len(source), "assign": len(source), "train": steps * spec["batch_size"]},
        "precision": "fp32",
        **peak_memory(),
    }


def in_child(path: str, spec: dict) -> dict:
    """Run one path in a fresh Python process (its own peak memory) and return its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        output = subprocess.run(
            [sys.executable, __file__, "--child", path, "--spec", handle.name],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    return json.loads(output.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- report
def phase_rows(result: dict, flops: dict[str, float], rates: dict[str, float]) -> list[dict]:
    """Per phase: seconds, images/s, share of the epoch, FLOP floor and efficiency (floor / measured)."""
    total = sum(result["seconds"].values())
    rate = rates[result["precision"]]
    rows = []
    for phase in PHASES:
        seconds, images = result["seconds"][phase], result["images"][phase]
        per_image = {"extract": flops["forward"], "train": flops["train"]}.get(phase)
        floor = per_image * images / rate if per_image else None
        rows.append(
            {
                "phase": phase,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "share": seconds / total,
                "floor_seconds": floor,
                "efficiency": floor / seconds if floor else None,
            }
        )
    return rows


def print_table(name: str, result: dict, rows: list[dict]) -> None:
    total = sum(result["seconds"].values())
    print(f"\n{name} ({result['precision']}): epoch {total:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB"
          + (f", peak GPU {result['peak_gpu_gb']:.2f} GB" if result["peak_gpu_gb"] else "")
          + (f", decode + set-up once {result['decode_and_setup_seconds']:.1f} s"
             if "decode_and_setup_seconds" in result else ""))  # fmt: skip
    print(f"  {'phase':<8} {'seconds':>9} {'img/s':>9} {'share':>7} {'floor s':>9} {'efficiency':>10}")
    for row in rows:
        floor = f"{row['floor_seconds']:9.1f}" if row["floor_seconds"] else f"{'-':>9}"
        eff = f"{row['efficiency']:10.2f}" if row["efficiency"] else f"{'-':>10}"
        print(
            f"  {row['phase']:<8} {row['seconds']:9.1f} {row['images_per_s']:9.0f} {row['share']:7.1%} {floor} {eff}"
        )


def fit_growth(sizes: list[int], seconds: list[float]) -> float:
    """Exponent b of seconds ~ a * N^b (least squares in log-log)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=sorted(CASES), default="cifar10")
    parser.add_argument(
        "--data", help="a JPEG-bytes .npz instead of the case's archive in ../shared/datasets"
    )
    parser.add_argument("--split", help="split of --data (default: the case's)")
    parser.add_argument("--n", type=int, help="repeat the images cyclically to this many")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, help="images drawn by the training pass (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="reference DataLoader workers"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the reference pipeline")
    parser.add_argument(
        "--caches",
        help="comma-separated data.cache values (memory, stream, disk): the fast path once with each, compared",
    )
    parser.add_argument("--scaling", help="comma-separated N: fast path at each size, growth fitted")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = run_fast(spec) if args.child == "fast" else run_reference(spec)
        print(json.dumps(result))
        return

    case = CASES[args.case]
    archive = Path(args.data) if args.data else SHARED / case["archive"]
    if not archive.is_file():
        sys.exit(
            f"{archive}: not found; pass --data PATH to a JPEG-bytes .npz (see ../shared/datasets/README.md)"
        )
    split = args.split or case["split"]
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="deepcluster-epoch-"))
    flops = model_flops(case["arch"], case["size"], args.k)
    rates = {"fp32": matmul_rate(device, torch.float32)}
    if resolve_precision("auto", device) == "bf16":  # else bf16 is emulated, slow, and never used by a run
        rates["bf16"] = matmul_rate(device, torch.bfloat16)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu or 'no GPU'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
        f"matmul rate: {', '.join(f'{p} {r / 1e9:.0f} GFLOP/s' for p, r in rates.items())}; "
        f"model {case['arch']} at {case['size']} px: forward {flops['forward'] / 1e9:.3f} GFLOP/img, "
        f"train step {flops['train'] / 1e9:.3f} GFLOP/img"
    )

    def spec_for(n: int | None, train_images: int | None, out: str) -> dict:
        data, count = repeated_archive(archive, split, n, work)
        return {
            "data": str(data), "split": split, "n": count, "size": case["size"], "arch": case["arch"],
            "k": args.k, "batch_size": args.batch_size, "train_images": train_images, "device": args.device,
            "precision": args.precision, "out": str(work / out), "progress": args.progress,
            "workers": args.workers,
        }  # fmt: skip

    report: dict = {"case": args.case, "flops": flops, "rates": rates, "device": str(device), "gpu": gpu}
    spec = spec_for(args.n, args.train_images, "fast")
    print(f"data: {spec['data']} ({spec['n']:,} images, split {split})", flush=True)
    if not (args.scaling and args.no_reference):  # a scaling-only run measures the sizes it lists
        fast = in_child("fast", spec)
        report["fast"] = {**fast, "phases": phase_rows(fast, flops, rates)}
        print_table("fast path", fast, report["fast"]["phases"])
    if not args.no_reference:
        spec["files"] = str(write_image_files(Path(spec["data"]), split, work / "files"))
        reference = in_child("reference", spec)
        report["reference"] = {**reference, "phases": phase_rows(reference, flops, rates)}
        print_table("reference pipeline", reference, report["reference"]["phases"])
        print("\nspeed-up (reference time / fast time, same run):")
        for phase in PHASES:
            print(f"  {phase:<8} {reference['seconds'][phase] / fast['seconds'][phase]:6.2f}x")
        epoch_ratio = sum(reference["seconds"].values()) / sum(fast["seconds"].values())
        with_decode = sum(reference["seconds"].values()) / (
            sum(fast["seconds"].values()) + fast["decode_and_setup_seconds"]
        )
        print(
            f"  {'epoch':<8} {epoch_ratio:6.2f}x   ({with_decode:.2f}x counting the fast path's one-off decode)"
        )
        report["speedup_epoch"] = epoch_ratio
    if args.caches:
        report["caches"] = {}
        print("\nfast path by data.cache (same images, same run):")
        print(f"  {'cache':<8} {'epoch s':>8} {'decode+setup s':>15} {'wall s':>8} {'peak RSS GB':>12}")
        for cache in args.caches.split(","):
            run = in_child("fast", {**spec, "cache": cache, "out": str(work / f"fast-{cache}")})
            epoch = sum(run["seconds"].values())
            wall = epoch + run["decode_and_setup_seconds"]
            print(f"  {cache:<8} {epoch:8.1f} {run['decode_and_setup_seconds']:15.1f} {wall:8.1f} "
                  f"{run['peak_rss_gb']:12.2f}", flush=True)  # fmt: skip
            report["caches"][cache] = run
    if args.scaling:
        sizes = [int(s) for s in args.scaling.split(",")]
        runs = [in_child("fast", spec_for(n, args.train_images, f"fast-{n}")) for n in sizes]
        print("\nscaling (fast path):")
        print(f"  {'N':>8} {'extract ms/img':>15} {'train ms/img':>13} {'assign s':>9} {'peak RSS GB':>12}")
        for n, run in zip(sizes, runs, strict=True):
            s, im = run["seconds"], run["images"]
            print(f"  {n:>8,} {1e3 * s['extract'] / im['extract']:15.3f} {1e3 * s['train'] / im['train']:13.3f} "
                  f"{s['assign']:9.2f} {run['peak_rss_gb']:12.2f}")  # fmt: skip
        growth = {}
        if len(set(sizes)) > 1:
            growth = {
                phase: fit_growth(sizes, [run["seconds"][phase] for run in runs])
                for phase in ("extract", "assign")
            }
            print(f"  fitted growth, seconds ~ N^b: extract b={growth['extract']:.2f}, "
                  f"assign b={growth['assign']:.2f} (k-means costs N x k x d per iteration: b=1 expected)")  # fmt: skip
        report["scaling"] = {"sizes": sizes, "runs": runs, "growth": growth}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
