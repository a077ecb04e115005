"""Issue 29, target 5: where a training step of the default configuration spends its time.

    python benchmarks/step_profile.py                          # the embedded data, --precision auto
    python benchmarks/step_profile.py --precision fp32 --steps 20 --out benchmarks/results/step-profile-X.md
    python benchmarks/step_profile.py --set deepcluster_v2.n_small=8   # any overrides of the default

Builds the run as `deepcluster train` would (the default configuration of --method, the embedded CIFAR-10 split
unless --data names other images), makes its first heads, then runs --warmup untimed and --steps timed training
steps as the engine does (the run's train view on fresh rows each step, forward and loss under the run's
precision, backward, the optimiser step, the method's `observe`), on random labels (the step's cost does not
depend on them). Each timed step is split into its phases (augment: the multi-crop view; forward: networks and
loss; backward; optimiser), and the same steps run under `torch.profiler` for the operators that take the most
self time (with their input shapes, so each crop size shows on its own). Prints both, with the CPU line, the
precision and the threads; --out also writes them as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from deepcluster import preset_config
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.stream import batches
from deepcluster.engine.loop import Trainer
from deepcluster.seeding import torch_generator
from machine import cpu_line

PHASES = ("augment", "forward", "backward", "optimiser")


@contextlib.contextmanager
def ready_trainer(config, section: str) -> Iterator[tuple[Trainer, torch.Tensor, torch.Tensor]]:
    """The run `config` describes, set up as `deepcluster train` would (data decoded, first layer, networks),
    its first heads made, in train mode at the full learning rate; with random labels (one per image and
    prototype set of the v2 method `section`: the step's cost does not depend on them) and a seeded order of
    the images. Closes the run's resources after."""
    trainer = Trainer(config)
    try:
        trainer.setup()
        trainer.nets.first_heads(0)
        trainer.nets.train()
        trainer.nets.set_lr(1.0)
        cfg, n = trainer.config, len(trainer.data.indices)
        labels = torch.randint(cfg.cluster.k, (n, cfg.section(section).n_sets), generator=torch_generator(1))
        order = torch.as_tensor(np.random.default_rng(cfg.run.seed).permutation(n))
        yield trainer, labels, order
    finally:
        trainer.resources.close(True)


def batch_rows(order: torch.Tensor, batch: int, count: int) -> list[torch.Tensor]:
    """`count` batches of `batch` images, in `order` (wrapping around)."""
    return [order[(i * batch + torch.arange(batch)) % len(order)] for i in range(count)]


def run_steps(trainer: Trainer, rows: list[torch.Tensor], labels: torch.Tensor) -> list[dict[str, float]]:
    """One engine step per entry of `rows` (the images of each batch); each step's phase seconds."""
    nets, method, precision = trainer.nets, trainer.method, trainer.precision
    optimizers = [nets.optimizer] + ([nets.head_optimizer] if nets.head_optimizer is not None else [])
    feed = batches(trainer.data.images, iter(rows))
    times = []
    for i, batch in enumerate(rows):
        t0 = time.perf_counter()
        generator = trainer.generator("augment", 0, i)  # one stream for the view and forward, as the engine's
        x = trainer.train_view(next(feed).to(precision.device), generator)
        t1 = time.perf_counter()
        with precision.autocast():
            outputs, targets = method.forward(
                nets.train_backbone, nets.train_heads, x, labels[batch], generator
            )
        loss = method.loss(outputs, targets)
        float(loss.detach())
        t2 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.step()
        method.observe(batch, outputs, trainer.procs)
        t4 = time.perf_counter()
        times.append(dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True)))
    feed.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="deepcluster-v2", help="deepcluster-v2 or sela-v2")
    parser.add_argument("--data", help="images (default: the embedded CIFAR-10 split)")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (and profiled steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--top", type=int, default=15, help="operators in the profile's table")
    parser.add_argument("--set", action="append", default=[], help="overrides (section.option=value)")
    parser.add_argument("--out", help="also write the result to this Markdown file")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="deepcluster-step-profile-"))
    sets = [f"run.precision={args.precision}", f"run.out={out / 'run'}", "run.progress=false", *args.set]
    if args.data:
        sets.append(f"data.data={args.data}")
    config = apply_overrides(preset_config("default", args.method), parse_set(sets))
    try:
        with ready_trainer(config, args.method.replace("-", "_")) as (trainer, labels, order):
            batch = trainer.batch_size
            rows = batch_rows(order, batch, args.warmup + 2 * args.steps)
            run_steps(trainer, rows[: args.warmup], labels)
            timed = run_steps(trainer, rows[args.warmup : args.warmup + args.steps], labels)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                run_steps(trainer, rows[args.warmup + args.steps :], labels)
            precision = trainer.precision.name
    finally:
        shutil.rmtree(out, ignore_errors=True)

    step = [sum(t.values()) for t in timed]
    mean = statistics.fmean(step)
    lines = [
        f"machine: {cpu_line()}; torch threads {torch.get_num_threads()}; precision {precision}",
        f"method {args.method}, overrides: {' '.join(args.set) or 'none'}; batch {batch}; {args.warmup} warm-up "
        f"steps, {args.steps} timed",
        f"step: {mean:.3f} s mean, {statistics.median(step):.3f} s median",
        "",
        "| phase | s per step (mean) | share |",
        "| --- | --- | --- |",
    ]
    for phase in PHASES:
        seconds = statistics.fmean(t[phase] for t in timed)
        lines.append(f"| {phase} | {seconds:.3f} | {seconds / mean:.0%} |")
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total",
        row_limit=args.top,
        max_name_column_width=40,
        max_shapes_column_width=60,
    )
    text = (
        "\n".join(lines)
        + f"\n\nOperators by self CPU time ({args.steps} profiled steps):\n\n```\n{table}\n```\n"
    )
    print(text)
    if args.out:
        command = " ".join(["python", *sys.argv])
        Path(args.out).write_text(f"# Where a training step's time goes\n\n`{command}`\n\n{text}")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
