"""The two paths `benchmarks/epoch.py` times, each one epoch in the calling process, and what it measures them
against: the data (a JPEG-bytes archive, repeated to N, or written out as image files for the reference), the
machine's dense matrix-multiply rate and the model's counted FLOPs.

  * `run_fast`: `deepcluster train` itself for one epoch (decode once to uint8 tensors, or stream, batched
    views, channels-last, the configured precision, our PCA, faiss or torch k-means);
  * `run_reference`: the reference implementation's pipeline, a torch DataLoader over image files with
    per-image PIL transforms, contiguous fp32, faiss's PCAMatrix and faiss k-means; same model, batch and k.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster.config import default_resize
from deepcluster.engine.device import resolve_device
from jpeg_archives import archive_rows

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
    from deepcluster.api import train
    from deepcluster.config import apply_overrides

    config = apply_overrides(
        preset_config(spec.get("preset", "default"), method="deepcluster"),  # the reference's method
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
                "cpu_conv": spec.get("cpu_conv", "onednn"),
                "knn_monitor": 0,  # an evaluation extra (a forward pass over its sample): not epoch work
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
        "precision": (run := load_config(Path(result.run_dir) / "config.yaml").run).precision,
        "cpu_conv": run.cpu_conv,
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
