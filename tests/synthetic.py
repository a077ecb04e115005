"""Small synthetic image data and run configurations shared by the tests."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepcluster import preset_config
from deepcluster.config import TrainConfig, apply_overrides

SIZE = 16


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A width x height RGB image of uniform noise, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def write_pattern_npz(path: Path, n: int = 160) -> Path:
    """An .npz of `n` pattern images with their labels (the ArraySource layout)."""
    images, labels = pattern_images(n)
    np.savez(path, images=images, labels=labels)
    return path


def pattern_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 16x16 RGB images of four kinds (horizontal, vertical, diagonal stripes, checkers) with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    labels = np.arange(n) % 4
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, kind in enumerate(labels):
        period, phase = rng.integers(3, 6), rng.integers(0, 6)
        coordinate = [y, x, x + y, (x // 4 + y // 4) * period][kind]
        base = ((coordinate + phase) // period) % 2 * 160 + 40
        colour = rng.uniform(0.6, 1.0, size=3)
        noise = rng.normal(0, 12, size=(SIZE, SIZE, 3))
        images[i] = np.clip(base[..., None] * colour + noise, 0, 255).astype(np.uint8)
    return images, labels


def small_config(
    data_path: Path | str, out: Path, method: str = "deepcluster", **sections: dict
) -> TrainConfig:
    """A run of `method` (DeepCluster by default) that takes seconds: 16 px, k=8, batch 32, 2 epochs,
    checkpoint every 2 steps, no k-NN monitor, on the small AlexNet's conv layers with global pooling
    (`alexnet_small_gap`, whose checkpoints are 30 MB where the 4096-wide FC layers of `alexnet_small` make
    200 MB: those took half of a run's time and, kept, filled CI's disk). Tests of the FC network pass
    `model={"arch": "alexnet_small"}`."""
    overrides = {
        "data": {"data": str(data_path)},
        "model": {"arch": "alexnet_small_gap"},
        "cluster": {"k": 8, "pca_dim": 16},
        "optim": {"batch_size": 32},
        "run": {
            "epochs": 2,
            "out": str(out),
            "progress": False,
            "checkpoint_every": 2,
            "seed": 3,
            "report": False,
            "knn_monitor": 0,  # an extra pass each epoch; the tests of the monitor turn it on
        },
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return apply_overrides(preset_config("default", method=method), overrides)


def _load_by_path(name: str, path: Path) -> ModuleType:
    """The module at `path` (a file outside the importable packages), imported once under `name`."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SAME_RUN = _load_by_path(
    "_deepcluster_same_run", Path(__file__).resolve().parents[1] / "benchmarks" / "same_run.py"
)
"""benchmarks/same_run.py, imported by its path (it works whichever folder the tests run from)."""


def run_differences(a: Path, b: Path, settings_may_differ: tuple[str, ...] = ()) -> list[str]:
    """Where two run directories differ (benchmarks/same_run.py's `compare`: labels.csv byte for byte,
    metrics.jsonl apart from timings, every per-epoch label file, and every key and tensor of the last
    checkpoint: networks, optimisers, RNG states of every process, sampler and loop state, the method's state,
    the settings). `settings_may_differ` names settings ("run.threads") that the two runs were given
    differently on purpose."""
    ignored = {f"checkpoint.config.{name}" for name in settings_may_differ}
    return [d for d in SAME_RUN.compare(a, b) if d not in ignored]


def assert_same_run(a: Path, b: Path, settings_may_differ: tuple[str, ...] = ()) -> None:
    """Two finished runs are the same run: everything `run_differences` compares is equal."""
    differences = run_differences(a, b, settings_may_differ)
    assert not differences, f"{a} and {b} differ: {', '.join(differences[:20])}"


def weighted_knn_reference(
    memory: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the weighted k-NN classifier by brute force in NumPy (float64), written from its
    definition (Wu et al. 2018), independently of `deepcluster.cluster.knn`: rows L2-normalised, the k most
    cosine-similar memory rows vote for their label with weight exp(similarity / T), the class with the largest
    vote wins (ties: the smallest class); without queries, leave-one-out over the memory."""
    memory = np.asarray(memory, dtype=np.float64)
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    own = queries is None
    queries = memory if own else np.asarray(queries, dtype=np.float64)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.asarray(labels if own else query_labels)
    correct = 0
    for q, query in enumerate(queries):
        similarity = memory @ query
        if own:
            similarity[q] = -np.inf
        nearest = np.argsort(-similarity, kind="stable")[: min(k, len(memory) - int(own))]
        votes = np.zeros(int(np.max(labels)) + 1)
        for row in nearest:
            votes[labels[row]] += np.exp(similarity[row] / temperature)
        correct += int(np.argmax(votes) == truth[q])
    return correct / len(queries)


def evaluation_knn_reference(target: Path | str, images: np.ndarray, labels: np.ndarray, config: Any) -> dict:
    """The k-NN scores `deepcluster evaluate` (EvalConfig `config`, no --test-data) must give for the network of
    `target` on the uint8 images [N, H, W, 3] of its own data with their true labels, {"knn<k>": accuracy}:
    the hold-out split drawn here (a seeded 80/20 permutation), the networks' embeddings in fp32 as evaluate
    computes them, and the k-NN by `weighted_knn_reference`."""
    from deepcluster.data.views import ClusterView
    from deepcluster.engine.device import Precision
    from deepcluster.engine.features import extract_features
    from deepcluster.models.loading import load_model

    order = np.random.default_rng(config.seed).permutation(len(labels))
    test, train = np.sort(order[: len(order) // 5]), np.sort(order[len(order) // 5 :])
    model = load_model(target)
    backbone = model.backbone.eval()
    view = ClusterView(model.input_size, model.mean, model.std)
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    precision = Precision(torch.device("cpu"), "fp32")
    embedding = {
        part: extract_features(backbone, pixels[rows], view, config.batch_size, precision)
        for part, rows in (("train", train), ("test", test))
    }
    return {
        f"knn{k}": weighted_knn_reference(
            embedding["train"], labels[train], embedding["test"], labels[test], k, config.temperature
        )
        for k in config.knn_ks
    }


class Payload:
    """A pickle that writes `marker` when it is unpickled: a checkpoint that would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def same_threads() -> dict[str, str]:
    """The environment for a child `deepcluster` process that computes on as many torch threads as this one
    (one under the suite's xdist workers), so that its float results are this process's bit for bit."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))


def without_permission_override() -> None:
    """For `subprocess.Popen(preexec_fn=...)`: a child that obeys file permissions even when run by root (which
    may write into a read-only folder). It leaves its capability bounding set without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so the program it runs gets neither; a process that is not root has neither already."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@contextlib.contextmanager
def forward_calls(kind: type = torch.nn.Module) -> Iterator[list[tuple[bool, int, torch.Tensor | None]]]:
    """Every forward call of a `kind` module in this process while inside, in order: (training mode, rows of its
    first input, its output as float32 on the host for a call in eval mode, else None). torch's global forward
    hook: an observation of what ran, nothing of ours replaced."""
    calls: list[tuple[bool, int, torch.Tensor | None]] = []

    def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(module, kind):
            return
        first = inputs[0] if inputs else None
        rows = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0
        kept = None
        if not module.training and isinstance(output, torch.Tensor):
            kept = output.detach().float().flatten(1).cpu()
        calls.append((module.training, rows, kept))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`deepcluster train ARGS` under `torchrun --standalone --nproc_per_node=2` (gloo, one torch thread per
    process), which must succeed; a failure shows the processes' error lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "deepcluster", "train", *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    marks = ("Error", "error:", "terminate", "Traceback", "Signal")
    why = "\n".join([line for line in done.stderr.splitlines() if any(m in line for m in marks)][:30])
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-2000:]}\n{why}\n{done.stderr[-2000:]}"
    return done
