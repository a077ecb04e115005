"""Settings the engine fills in or checks once the data and the machine are known: input size, resize, arch,
device, precision, and what the data's size allows (`fit_data_size`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import torch

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig, default_resize
from deepcluster.data.sources import ImageSource
from deepcluster.engine.device import resolve_device, resolve_precision
from deepcluster.engine.distributed import launched_by_torchrun, process_device, world_size
from deepcluster.methods import ExtractingMethod, Method

log = logging.getLogger("deepcluster")


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


def fit_data_size(
    config: TrainConfig, method: type[Method], n_images: int, feature_dim: int | None = None
) -> TrainConfig:
    """The settings `n_images` images allow: ConfigError (naming the option, its value and the fix) for those
    the data makes impossible, lowered copies (with a warning each) of those that are upper bounds, then the
    method's own (`Method.fit_to_data`).

    Called twice, before any network work: before decoding with the source's size and no `feature_dim`, where
    only refusals are made (what that many images cannot do, fewer readable ones cannot either; see
    `refuse_before_data`), and right after decoding with the readable images and the backbone's `feature_dim`,
    where the bounds are fitted too (so config.yaml records what the run used)."""
    if n_images < 2:
        raise ConfigError(f"--data: {n_images} image(s); training needs at least 2")
    processes = world_size()
    if n_images < processes:
        raise ConfigError(
            f"--data: {n_images} images cannot be shared by {processes} processes (each extracts its own "
            f"rows); start at most {n_images} processes"
        )
    optim = config.optim
    per_epoch = optim.epoch_size or n_images
    if per_epoch < processes:
        raise ConfigError(
            f"--epoch-size {per_epoch}: an epoch needs at least one image per process ({processes} processes); "
            f"use --epoch-size {processes} or more (optim.epoch_size)"
        )
    if feature_dim is not None and optim.batch_size > per_epoch:
        batch = per_epoch // processes * processes
        log.warning(
            "optim.batch_size=%d is larger than the %d images an epoch draws; using optim.batch_size=%d",
            optim.batch_size,
            per_epoch,
            batch,
        )
        config = dataclasses.replace(config, optim=dataclasses.replace(optim, batch_size=batch))
    return method.fit_to_data(config, n_images, feature_dim)


def refuse_clustering(config: TrainConfig, method: type[Method], methods: Iterable[type[Method]]) -> None:
    """Raise ConfigError when `method` does not label with `cluster.algorithm` (`Method.clusterings`), naming
    the `methods` that do."""
    algorithm = config.cluster.algorithm
    if algorithm in method.clusterings:
        return
    able = [other.name for other in methods if algorithm in other.clusterings]
    raise ConfigError(
        f"--clustering {algorithm}: --method {config.method} labels with {', '.join(method.clusterings)} only; "
        f"{algorithm} is for --method {' or '.join(able) or '(none registered)'} (DeepCluster v1, as in the "
        f"official code); drop --clustering {algorithm} (cluster.algorithm) or change the method"
    )


def refuse_before_data(config: TrainConfig, method: type[Method], n_images: int) -> None:
    """Raise ConfigError for what `n_images` images (the source's size, before decoding) make impossible, and
    for settings that only make sense under torchrun or not with `method` there."""
    fit_data_size(config, method, n_images)
    processes = world_size()
    if config.optim.batch_size % processes:
        raise ConfigError(
            f"--batch-size {config.optim.batch_size} (the total over all processes) is not a multiple of the "
            f"{processes} processes; choose a multiple of {processes} (optim.batch_size)"
        )
    if not (launched_by_torchrun() and config.cluster.distributed_kmeans):
        return
    if not (issubclass(method, ExtractingMethod) and method.assigns_sharded()):
        raise ConfigError(
            f"cluster.distributed_kmeans: --method {config.method} has no distributed assignment; "
            "its features are gathered on the first process (drop --distributed-kmeans)"
        )
    if config.cluster.kmeans_sample:
        raise ConfigError(
            "cluster.kmeans_sample trains k-means on a sample of gathered features; with "
            "cluster.distributed_kmeans every process trains on its own shard instead: drop one of the two"
        )
