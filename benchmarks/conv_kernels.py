"""Forward and training-step time of each backbone with oneDNN for every convolution against the kernels
`run.cpu_conv=measure` picks on this CPU (oneDNN or NNPACK per layer), in fp32, channels-last as in a run.

    python benchmarks/conv_kernels.py                        # AlexNet at 224 px and the small networks
    python benchmarks/conv_kernels.py --cases alexnet:224:128,vgg16:224:16 --rounds 3

Each case is ARCH:SIZE:BATCH. The two settings are timed alternately, `--rounds` times each, and the median is
kept (this machine's speed drifts); forward is the features pass (eval, no grad), step is forward + backward of
the sum of the outputs (train mode). The ratio is oneDNN time / measured-kernels time, from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deepcluster.engine.conv_kernels import conv_layers, measure_kernels, use_kernels  # noqa: E402
from deepcluster.models import build_backbone  # noqa: E402
from machine import cpu_line  # noqa: E402

CASES = "alexnet:224:128,alexnet_small:32:256,vgg16_small:32:64,resnet18_small:32:64,resnet18:224:32"


def _seconds(call: object) -> float:
    start = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - start


def time_case(arch: str, size: int, batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    backbone = build_backbone(arch, input_size=size).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    kernels = measure_kernels(backbone, size, batch)
    measure_seconds = time.perf_counter() - started

    def forward() -> None:
        with torch.no_grad():
            backbone.eval()(x)

    def step() -> None:
        backbone.train()(x).sum().backward()
        backbone.zero_grad(set_to_none=True)

    times: dict[str, dict[str, list[float]]] = {"onednn": {"forward": [], "step": []}}
    times["measured"] = {"forward": [], "step": []}
    for _ in range(rounds):
        for setting in ("onednn", "measured"):
            handles = use_kernels(backbone, kernels) if setting == "measured" else []
            forward()  # warm-up after a switch
            step()
            times[setting]["forward"].append(_seconds(forward) / batch)
            times[setting]["step"].append(_seconds(step) / batch)
            for handle in handles:
                handle.remove()
    median = {s: {p: statistics.median(v) for p, v in phases.items()} for s, phases in times.items()}
    return {
        "arch": arch, "size": size, "batch": batch, "convolutions": len(conv_layers(backbone)),
        "kernels": kernels, "measure_seconds": measure_seconds, "ms_per_image": {
            s: {p: 1e3 * t for p, t in phases.items()} for s, phases in median.items()
        },
        "ratio": {p: median["onednn"][p] / median["measured"][p] for p in ("forward", "step")},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default=CASES, help="comma-separated ARCH:SIZE:BATCH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    print(
        f"machine: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads, precision fp32"
    )
    print(
        f"{'case':<24} {'kernels (n = NNPACK)':<22} {'measure s':>9} {'forward ms/img':>22} {'step ms/img':>22}"
    )
    print(f"{'':<24} {'':<22} {'':>9} {'onednn  chosen  ratio':>22} {'onednn  chosen  ratio':>22}")
    results = []
    for case in args.cases.split(","):
        arch, size, batch = case.split(":")
        r = time_case(arch, int(size), int(batch), args.rounds)
        results.append(r)
        ms = r["ms_per_image"]
        chosen = "".join("n" if k == "nnpack" else "." for k in r["kernels"])
        print(
            f"{case:<24} {chosen:<22} {r['measure_seconds']:9.1f} "
            f"{ms['onednn']['forward']:7.2f} {ms['measured']['forward']:7.2f} {r['ratio']['forward']:6.2f} "
            f"{ms['onednn']['step']:7.2f} {ms['measured']['step']:7.2f} {r['ratio']['step']:6.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_line(), "cases": results}, indent=2))


if __name__ == "__main__":
    main()
