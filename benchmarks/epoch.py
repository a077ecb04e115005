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
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from deepcluster.engine.device import resolve_device, resolve_precision
from epoch_runs import (
    PHASES,
    matmul_rate,
    model_flops,
    repeated_archive,
    run_fast,
    run_reference,
    write_image_files,
)
from machine import cpu_line

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CASES = {
    "cifar10": {"archive": "cifar10_jpegbytes.npz", "split": "train", "arch": "alexnet_small", "size": 32},
    "imagenette": {"archive": "imagenette_jpegbytes.npz", "split": "train", "arch": "alexnet", "size": 224},
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
def machine_rates(device: torch.device) -> dict[str, float]:
    """The dense matrix-multiply rate (FLOP/s) at each precision a run may use on `device`."""
    rates = {"fp32": matmul_rate(device, torch.float32)}
    if resolve_precision("auto", device) == "bf16":  # else bf16 is emulated, slow, and never used by a run
        rates["bf16"] = matmul_rate(device, torch.bfloat16)
    return rates


def phase_rows(result: dict, flops: dict[str, float], rates: dict[str, float]) -> list[dict]:
    """Per phase: seconds, images/s, share of the epoch, FLOP floor and efficiency (floor / measured), at the
    rate measured around the path's own run when it has one (`rates` otherwise)."""
    total = sum(result["seconds"].values())
    rate = result.get("rates", rates)[result["precision"]]
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
    measured = result.get("rates_measured")
    drift = (f", matmul {measured['before'][result['precision']] / 1e9:.0f} GFLOP/s before and "
             f"{measured['after'][result['precision']] / 1e9:.0f} after" if measured else "")  # fmt: skip
    print(f"\n{name} ({result['precision']}{drift}): epoch {total:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB"
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
    parser.add_argument(
        "--preset",
        default="default",
        help="the fast path's preset (paper: crop and flip only, as the official code and the reference train)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the reference pipeline")
    parser.add_argument(
        "--caches",
        help="comma-separated data.cache values (memory, stream, disk): the fast path once with each, compared",
    )
    parser.add_argument(
        "--cpu-conv",
        default="onednn",
        help="run.cpu_conv of the fast path (onednn, nnpack, measure or a list)",
    )
    parser.add_argument(
        "--cpu-convs", help="semicolon-separated run.cpu_conv values: the fast path once with each, compared"
    )
    parser.add_argument("--scaling", help="comma-separated N: fast path at each size, growth fitted")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        before = machine_rates(resolve_device(spec["device"]))
        result = run_fast(spec) if args.child == "fast" else run_reference(spec)
        after = machine_rates(resolve_device(spec["device"]))
        # this machine's rate drifts (shared cores): the floor uses the better of the two, measured around the run
        result["rates"] = {p: max(before[p], after[p]) for p in before}
        result["rates_measured"] = {"before": before, "after": after}
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
    rates = machine_rates(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(
        f"machine: {cpu_line()}, {gpu or 'no GPU'}; "
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
            "workers": args.workers, "preset": args.preset, "cpu_conv": args.cpu_conv,
        }  # fmt: skip

    report: dict = {"case": args.case, "flops": flops, "rates": rates, "device": str(device), "gpu": gpu}
    spec = spec_for(args.n, args.train_images, "fast")
    print(f"data: {spec['data']} ({spec['n']:,} images, split {split})", flush=True)
    listed = args.scaling or args.caches or args.cpu_convs
    if not (listed and args.no_reference):  # else only the sizes / caches / kernels it lists
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
    variants = [("cache", "caches", v) for v in (args.caches.split(",") if args.caches else [])]
    variants += [("cpu_conv", "cpu_convs", v) for v in (args.cpu_convs.split(";") if args.cpu_convs else [])]
    for key, group, value in variants:
        run = in_child(
            "fast", {**spec, key: value, "out": str(work / f"fast-{group}-{len(report.get(group, {}))}")}
        )
        run["phases"] = phase_rows(run, flops, rates)
        print_table(f"fast path, {key}={value}", run, run["phases"])
        report.setdefault(group, {})[value] = run
    for group in ("caches", "cpu_convs"):
        if group not in report:
            continue
        print(f"\nfast path by {group[:-1]} (same images, same run):")
        print(f"  {'value':<12} {'extract s':>9} {'train s':>8} {'epoch s':>8} {'decode+setup s':>15} "
              f"{'peak RSS GB':>12}")  # fmt: skip
        for value, run in report[group].items():
            sec = run["seconds"]
            print(f"  {value:<12} {sec['extract']:9.1f} {sec['train']:8.1f} {sum(sec.values()):8.1f} "
                  f"{run['decode_and_setup_seconds']:15.1f} {run['peak_rss_gb']:12.2f}", flush=True)  # fmt: skip
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
