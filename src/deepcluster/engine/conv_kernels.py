"""Which kernel runs each convolution's forward pass on the CPU in fp32: oneDNN (torch's default) or NNPACK.

With oneDNN switched off for one call, torch runs a stride-1 convolution of a batch of at least 16 in NNPACK
(any other one in its im2col + GEMM kernel). On a 2-core AVX2 EPYC, NNPACK's forward of AlexNet's stride-1
layers at 224 px (5x5 on 27-px maps, 3x3 on 13-px maps) took 0.6 of oneDNN's time, while VGG-16 and ResNet
layers on larger maps ran slower in it (benchmarks/conv_kernels.py). Which wins depends on the layer and the
CPU, so `run.cpu_conv=measure` times both on each layer once, at set-up, and the run keeps the list it chose
(config.yaml): a resume continues with the same kernels, while two fresh runs may differ in the last bits,
as with cuDNN's benchmark mode. The backward pass stays in oneDNN (torch picks the backward kernel anew).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from deepcluster.config import ConfigError, TrainConfig
from deepcluster.config.run import cpu_conv_names
from deepcluster.engine.device import Precision
from deepcluster.engine.distributed import Processes
from deepcluster.models.backbone import frozen_eval

log = logging.getLogger("deepcluster")

MEASURE_BATCH = 128
"""Most images per timed call (the run's batch when smaller): NNPACK's lead grows with the batch (AlexNet's 3x3
layers at 224 px: 1.1x oneDNN's speed at 32 images, 1.5-2.8x at 128), and AlexNet measures in about 20 s."""
MARGIN = 0.85
"""NNPACK is chosen for a layer only when it takes at most this fraction of oneDNN's time: a close call, which
this machine's drift (+-10 % between identical calls) can turn either way, stays with the default."""


def conv_layers(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every `Conv2d` of `module` in definition order, with its qualified name."""
    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, nn.Conv2d)]


def resolve_cpu_conv(
    config: TrainConfig, backbone: nn.Module, procs: Processes, precision: Precision
) -> TrainConfig:
    """Hook `run.cpu_conv`'s kernels onto `backbone` on a CPU fp32 run (elsewhere oneDNN / cuDNN and autocast
    choose); `measure` is timed on the main process and shared, and the returned config holds the list."""
    value = config.run.cpu_conv
    if value != "measure" or not _applies(backbone, precision):
        use_recorded_kernels(backbone, value, precision)
        return config
    batch = config.optim.batch_size // procs.world_size
    kernels = measure_kernels(backbone, config.data.input_size, batch) if procs.is_main else None
    kernels = procs.broadcast_object(kernels)
    assert kernels is not None
    log.info("convolution forward kernels measured on this CPU (run.cpu_conv): %s", ",".join(kernels))
    use_kernels(backbone, kernels)
    run = dataclasses.replace(config.run, cpu_conv=",".join(kernels) if len(set(kernels)) > 1 else kernels[0])
    return dataclasses.replace(config, run=run)


def use_recorded_kernels(backbone: nn.Module, value: str, precision: Precision) -> None:
    """The kernels a run recorded (`run.cpu_conv` in its config.yaml) hooked onto `backbone` when it runs on the
    CPU in fp32; nothing elsewhere, nor for an unresolved `measure`."""
    if value != "measure" and _applies(backbone, precision):
        use_kernels(backbone, expand_kernels(value, len(conv_layers(backbone))))


def _applies(backbone: nn.Module, precision: Precision) -> bool:
    return precision.device.type == "cpu" and precision.dtype is None and bool(conv_layers(backbone))


def expand_kernels(value: str, count: int) -> list[str]:
    """One kernel per convolution from `run.cpu_conv` (one name for all, or a comma-separated list of
    `count` names); ConfigError naming the option when a list has another length."""
    names = cpu_conv_names(value)
    if len(names) == 1:
        return names * count
    if len(names) != count:
        raise ConfigError(
            f"--cpu-conv {value}: {len(names)} kernels for a backbone with {count} convolutions; give one name "
            f"(onednn or nnpack), {count} comma-separated names, or measure (run.cpu_conv)"
        )
    return names


def _timed(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: oneDNN's primitive cache, NNPACK's workspace
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def measure_kernels(backbone: nn.Module, input_size: int, batch: int, repeats: int = 3) -> list[str]:
    """For each convolution of `backbone`, its forward kernel: NNPACK where it beats oneDNN by `MARGIN` on the
    layer's own input at `batch` images of `input_size` px (at most `MEASURE_BATCH`), fastest of `repeats` calls
    each; consumes no global RNG state and leaves the backbone's modes and buffers as they were."""
    convs = conv_layers(backbone)
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs.setdefault(name, args[0])

        return hook

    handles = [conv.register_forward_pre_hook(keep(name)) for name, conv in convs]
    onednn = torch.backends.mkldnn.enabled
    generator = torch.Generator().manual_seed(0)
    device = next(backbone.parameters()).device
    x = torch.rand(min(batch, MEASURE_BATCH), 3, input_size, input_size, generator=generator).to(device)
    try:
        with frozen_eval(backbone), torch.no_grad():
            backbone(x.contiguous(memory_format=torch.channels_last))
            chosen = []
            for name, conv in convs:
                times = {}
                for kernel in ("onednn", "nnpack"):
                    torch.backends.mkldnn.enabled = kernel == "onednn"
                    times[kernel] = _timed(lambda conv=conv, name=name: conv(inputs[name]), repeats)
                chosen.append("nnpack" if times["nnpack"] <= MARGIN * times["onednn"] else "onednn")
    finally:
        torch.backends.mkldnn.enabled = onednn
        for handle in handles:
            handle.remove()
    return chosen


def use_kernels(backbone: nn.Module, kernels: list[str]) -> list[RemovableHandle]:
    """Run the forward of each convolution named `nnpack` in `kernels` (one entry per `conv_layers` entry) with
    oneDNN off, its output put back in the input's channels-last layout; the others are left alone. Returns
    the hooks' handles."""
    convs = conv_layers(backbone)
    if len(kernels) != len(convs):
        raise ValueError(f"use_kernels: {len(kernels)} kernels for {len(convs)} convolutions")
    handles: list[RemovableHandle] = []
    for (_, conv), kernel in zip(convs, kernels, strict=True):
        if kernel == "nnpack":
            handles += _without_onednn(conv)
    return handles


def _without_onednn(conv: nn.Conv2d) -> list[RemovableHandle]:
    previous: list[bool] = []

    def before(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        previous.append(torch.backends.mkldnn.enabled)
        torch.backends.mkldnn.enabled = False

    def after(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        torch.backends.mkldnn.enabled = previous.pop() if previous else True
        channels_last = args and args[0].is_contiguous(memory_format=torch.channels_last)
        if isinstance(output, torch.Tensor) and channels_last:
            return output.contiguous(memory_format=torch.channels_last)
        return output

    return [conv.register_forward_pre_hook(before), conv.register_forward_hook(after, always_call=True)]
