"""Peak memory of the streamed decode + view path against the number of images, on synthetic WebDataset shards.

A streamed run (`data.cache=stream`) keeps no decoded images: its memory for images should be O(batch), and what
grows with N is only the image index (the shard table: shard, offset and size of each sample, and its name). This
writes N tiny JPEGs into tar shards once (a pool of distinct pictures, each member its own file in the tar), then,
in a fresh process per N, runs what a streamed epoch does with the images, and nothing else (no network):

  1. open the shards (`ShardSource`: every tar header read once, the sample table built);
  2. find the readable images (`stream_images`: every image decoded once, nothing kept);
  3. one epoch (or its first `--epoch-images`): a seeded permutation in batches, each batch decoded by the
     prefetching stream (`data.stream.batches`) and augmented by the train view (random resized crop + flip,
     as DeepCluster trains).

It prints the peak resident memory (VmHWM) after each step and fits peak = a + b * N: b, in bytes per image, is
the index's cost; the decoded cache would cost 3 * S * S bytes per image (S = `--size`), 150 KB at 224 px.
`--cached-upto` also runs the in-memory path (`data.cache=memory`, the same decode into one tensor) for the
sizes up to that N, for contrast.

    python benchmarks/stream_memory.py --sizes 100000,300000,1000000 --work /tmp/stream-shards
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from machine import cpu_line, status_mb

PER_SHARD = 10_000


def jpeg_pool(count: int, side: int, seed: int = 0) -> list[bytes]:
    """`count` distinct small JPEGs: smooth colour gradients with noise (what a photo thumbnail compresses like)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    pool = []
    for _ in range(count):
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        mix = (ramp[:, None, None] * rng.uniform(0.3, 1)) + ramp[None, :, None] * rng.uniform(0, 0.7)
        pixels = colours[0] * (1 - mix) + colours[1] * mix + rng.normal(0, 12, (side, side, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    return pool


def write_shards(folder: Path, n: int, side: int) -> str:
    """N samples (`KEY.jpg` + `KEY.cls`) in shards of `PER_SHARD` under `folder` (made once); the brace spec."""
    count = -(-n // PER_SHARD)
    spec = str(folder / f"n{n}-{side}px-{{000000..{count - 1:06d}}}.tar")
    last = folder / f"n{n}-{side}px-{count - 1:06d}.tar"
    if last.exists():
        return spec
    folder.mkdir(parents=True, exist_ok=True)
    pool = jpeg_pool(1000, side)
    for shard in range(count):
        path = folder / f"n{n}-{side}px-{shard:06d}.tar"
        partial = path.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for index in range(shard * PER_SHARD, min(n, (shard + 1) * PER_SHARD)):
                for name, data in ((f"{index:09d}.jpg", pool[index % len(pool)]), (f"{index:09d}.cls", b"0")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        partial.replace(path)
    return spec


def child(spec: str, size: int, crop: int, batch: int, cache: str, epoch_images: int | None) -> dict:
    """Steps 1-3 of the module's notes in this process; peak MB and seconds after each."""
    import torch

    from deepcluster.data.decode import decode_images
    from deepcluster.data.sources import open_source
    from deepcluster.data.stream import batches, stream_images
    from deepcluster.data.views import TrainView

    torch.set_num_threads(2)
    out = {"start_mb": status_mb("VmHWM")}
    clock = time.perf_counter()
    source = open_source(spec)
    out.update(open_s=time.perf_counter() - clock, open_mb=status_mb("VmHWM"), n=len(source))
    clock = time.perf_counter()
    if cache == "stream":
        images = stream_images(source, size, progress=False, inner_size=crop).images
    else:
        images = decode_images(source, size, progress=False, inner_size=crop).images
    out.update(find_s=time.perf_counter() - clock, find_mb=status_mb("VmHWM"))
    view = TrainView(crop, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)[:epoch_images]
    clock, seen, checksum = time.perf_counter(), 0, 0.0
    for decoded in batches(images, (order[i : i + batch] for i in range(0, len(order), batch))):
        views = view(decoded, generator)
        seen += views.shape[0]
        checksum += float(views[:, 0, 0, 0].sum())
    out.update(epoch_s=time.perf_counter() - clock, epoch_mb=status_mb("VmHWM"), seen=seen, checksum=checksum)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepcluster-stream-shards"))
    parser.add_argument("--side", type=int, default=40, help="side of the stored JPEGs")
    parser.add_argument("--size", type=int, default=36, help="decoded size (data.resize)")
    parser.add_argument("--crop", type=int, default=32, help="train view size (model input)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cached-upto", type=int, default=300_000)
    parser.add_argument(
        "--epoch-images", type=int, help="images the epoch (step 3) draws, at most (default: all N)"
    )
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.child[0], args.size, args.crop, args.batch, args.child[1], args.epoch_images)
            )
        )
        return
    print(f"machine: {cpu_line()}; decode+view only (no network), uint8 decode, float32 views")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        clock = time.perf_counter()
        spec = write_shards(args.work, n, args.side)
        print(f"N={n:,}: shards ready in {time.perf_counter() - clock:.0f} s ({spec})", flush=True)
        for cache in ("stream", "memory") if n <= args.cached_upto else ("stream",):
            command = [sys.executable, __file__, *sys.argv[1:], "--child", spec, cache]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = {"cache": cache, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(
                f"  {cache:6s} peak MB: start {row['start_mb']:.0f}, shards open {row['open_mb']:.0f}, "
                f"images found {row['find_mb']:.0f}, after the epoch {row['epoch_mb']:.0f}; seconds: open "
                f"{row['open_s']:.1f}, find {row['find_s']:.1f}, epoch {row['epoch_s']:.1f} "
                f"({row['seen'] / row['epoch_s']:,.0f} img/s)",
                flush=True,
            )
    streamed = [r for r in rows if r["cache"] == "stream"]
    if len(streamed) >= 2:
        sizes = np.array([r["n"] for r in streamed], dtype=np.float64)
        peaks = np.array([r["epoch_mb"] for r in streamed])
        slope, intercept = np.polyfit(sizes, peaks * 1e6, 1)
        print(
            f"streamed peak RSS = {intercept / 1e6:.0f} MB + {slope:.0f} bytes x N (least squares over "
            f"N = {', '.join(f'{int(s):,}' for s in sizes)}); a decoded cache costs {3 * args.size**2:,} bytes "
            f"per image at {args.size} px, {3 * 256**2:,} at 256 px"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
