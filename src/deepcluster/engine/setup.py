"""Settings the engine fills in or checks once the data and the machine are known: input size, resize, arch,
device, precision, and what the data's size allows."""

from __future__ import annotations

import dataclasses

import torch

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig, default_resize
from deepcluster.data.sources import ImageSource
from deepcluster.engine.device import resolve_device, resolve_precision
from deepcluster.engine.distributed import launched_by_torchrun, process_device
from deepcluster.methods import ExtractingMethod, Method


def infer_input_size(source: ImageSource, tries: int = 16) -> int:
    """The images' own shorter side when it is at most 96 px (small-input models), else 224."""
    for index in range(min(tries, len(source))):
        try:
            width, height = source.load(index).size
        except Exception:  # a corrupt first image must not decide anything
            continue
        side = min(width, height)
        return side if side <= SMALL_INPUT_LIMIT else 224
    raise ConfigError(f"--data: none of the first {tries} images of {source.description} could be read")


def run_device(config: TrainConfig) -> torch.device:
    """This process's device for `run.device` (under torchrun on CUDA: its own GPU); ConfigError when absent."""
    try:
        return process_device(resolve_device(config.run.device))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def resolve_config(
    config: TrainConfig, source: ImageSource, device: torch.device, method: type[Method] | None = None
) -> TrainConfig:
    """Fill every automatic setting (input size, resize, arch, device, precision) from the data and the machine;
    the arch is `method`'s choice for the input size (`Method.default_arch`)."""
    data = dataclasses.replace(config.data)
    data.input_size = data.input_size or infer_input_size(source)
    if data.resize is None:
        data.resize = default_resize(data.input_size)
    model = dataclasses.replace(config.model)
    if model.arch is None:
        model.arch = (method or Method).default_arch(data.input_size)
    run = dataclasses.replace(config.run)
    run.device = str(device)
    run.precision = resolve_precision(config.run.precision, device)
    return dataclasses.replace(config, data=data, model=model, run=run)


def check_data_size(config: TrainConfig, method: Method, n_images: int) -> None:
    """Settings that the number of (readable) images makes impossible."""
    k = config.cluster.k
    if method.uses_k and k > n_images:
        raise ConfigError(
            f"--k {k} is larger than the number of images ({n_images}); use --k {n_images} or less"
        )


def check_processes(config: TrainConfig, method: Method) -> None:
    """Settings that only make sense under torchrun, or not with this method there."""
    if not (launched_by_torchrun() and config.cluster.distributed_kmeans):
        return
    if not (isinstance(method, ExtractingMethod) and method.shards_assignment):
        raise ConfigError(
            f"cluster.distributed_kmeans: --method {config.method} has no distributed assignment; "
            "its features are gathered on the first process (drop --distributed-kmeans)"
        )
    if config.cluster.kmeans_sample:
        raise ConfigError(
            "cluster.kmeans_sample trains k-means on a sample of gathered features; with "
            "cluster.distributed_kmeans every process trains on its own shard instead: drop one of the two"
        )
