"""Our method beside a peer library at the same CPU minutes: lightly's SwAV on the same images, backbone and
crops, with the same threads, for as long as our run trained. Prints one table.

The peer is lightly's own loss (`SwaVLoss`: swapped prediction with online Sinkhorn codes), projection head
(`SwaVProjectionHead`) and prototypes (`SwaVPrototypes`, normalised after every step), trained with Adam at 1e-3 as
lightly's CIFAR-10 benchmark does. Both are judged the same way: weighted k-NN (k 20, T 0.07, cosine, leave-one-out
over the images) on the backbone's embedding, beside the same backbone at random initialisation, and NMI to the
classes of a k-means (k of our run) of the PCA-whitened embedding.

    pip install lightly          # a benchmark-only extra: pip install -e '.[bench]'
    python benchmarks/peer.py --method deepcluster-v2 --minutes 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from deepcluster import preset_config
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.samplers import shuffled_sample
from deepcluster.engine.device import machine_description
from deepcluster.evaluate.results import format_table
from deepcluster.methods import METHODS
from deepcluster.models import build_backbone, channels_last
from deepcluster.seeding import derive_seed, seed_everything, torch_generator
from learns import measure, train_and_decode


def train_lightly_swav(config, images: torch.Tensor, seconds: float, prototypes: int, lr: float, precision):
    """lightly's SwAV on `images` for `seconds`, at our run's precision (bf16 autocast where ours used it);
    returns (backbone, steps)."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

    seed_everything(config.run.seed)
    backbone = build_backbone(config.model.arch, sobel=config.model.sobel, input_size=config.data.input_size)
    backbone = backbone.to(memory_format=torch.channels_last)
    head = SwaVProjectionHead(backbone.feature_dim, 2048, 128)
    protos = SwaVPrototypes(128, n_prototypes=prototypes)
    criterion = SwaVLoss()
    parameters = [*backbone.parameters(), *head.parameters(), *protos.parameters()]
    optimizer = torch.optim.Adam([p for p in parameters if p.requires_grad], lr=lr)
    view = METHODS.build(config).train_view()  # our multi-crop view: the same crops as our method sees
    n_large = view.n_large
    batch = config.optim.batch_size
    started, steps, epoch = time.perf_counter(), 0, 0
    backbone.train()
    while time.perf_counter() - started < seconds:
        order = shuffled_sample(len(images), len(images), derive_seed(config.run.seed, "peer", epoch))
        for first in range(0, len(order) - batch + 1, batch):
            if time.perf_counter() - started >= seconds:
                break
            crops = view(images[torch.as_tensor(order[first : first + batch])], torch_generator(steps))
            outputs = []
            with precision.autocast():
                for crop in crops:
                    z = torch.nn.functional.normalize(head(backbone(channels_last(crop))).float(), dim=1)
                    outputs.append(protos(z).float())
            loss = criterion(outputs[:n_large], outputs[n_large:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            protos.normalize()
            steps += 1
        epoch += 1
    return backbone, steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="deepcluster-v2")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of our run")
    parser.add_argument(
        "--epochs", type=int, default=6, help="epochs our schedule spans (the budget may cut it)"
    )
    parser.add_argument("--prototypes", type=int, default=512, help="lightly's prototypes (its benchmark's)")
    parser.add_argument("--peer-lr", type=float, default=1e-3, help="Adam learning rate of the peer")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    overrides = parse_set(args.set)
    run = {
        "seed": args.seed,
        "epochs": args.epochs,
        "max_minutes": args.minutes,
        "progress": False,
        "report": False,
    }
    overrides.setdefault("run", {}).update(
        run, out=str(Path(tempfile.mkdtemp(prefix="deepcluster-peer-")) / "run")
    )
    config = apply_overrides(preset_config("default", method=args.method), overrides, origin="benchmark")
    result, ours_seconds, resolved, images, truth, precision = train_and_decode(config)
    peer, steps = train_lightly_swav(resolved, images, ours_seconds, args.prototypes, args.peer_lr, precision)
    seed_everything(resolved.run.seed)
    random_net = build_backbone(
        resolved.model.arch, sobel=resolved.model.sobel, input_size=resolved.data.input_size
    )
    rows = []
    for name, net, seconds, detail in (
        ("random init", random_net, 0.0, "-"),
        (f"ours: {resolved.method}", result.backbone, ours_seconds, f"{len(result.history)} epochs"),
        ("lightly SwAV", peer, ours_seconds, f"{steps} steps"),
    ):
        scores = measure(net.to(memory_format=torch.channels_last), resolved, images, truth, precision)
        rows.append({"network": name, "training s": round(seconds), "trained for": detail,
                     "knn20 embedding": scores["knn20_embedding"], "knn20 best layer": scores["knn20_best_layer"],
                     "nmi k-means": scores["nmi_kmeans"]})  # fmt: skip
    print(f"\nmachine: {machine_description(precision.name)}; arch {resolved.model.arch}, batch "
          f"{resolved.optim.batch_size}, k {resolved.cluster.k}, {len(truth)} images")  # fmt: skip
    print(format_table(rows))


if __name__ == "__main__":
    main()
