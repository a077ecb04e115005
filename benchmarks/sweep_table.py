"""The records of `benchmarks/sweep.py` (PREFIX.jsonl): reading, ranking, one line per entry, the Markdown table.

Each line of the JSONL is one entry: `kind` "random" (the default network at random initialisation, once per data
set and seed: `random`) or "run" (a trained configuration: `trained`, `random_own`, steps, seconds, ...), with
`dataset`, `config`, `seed` and `status` ("ok" or "failed: <first line of the error>").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHORT = {"cifar10-train-10k": "C10", "imagenette-train-64": "IN64"}
HEAD = [
    "kNN emb",
    "vs def. random",
    "vs own random",
    "best layer",
    "NMI labels",
    "NMI k-means",
    "steps",
    "s/step",
]
LEGEND = (
    "- kNN emb: weighted k-NN accuracy (k=20, T=0.07, cosine, leave-one-out) on the embedding; vs def. random / "
    "vs own random: minus the same at random initialisation (same seed) of the default configuration's network / "
    "of this configuration's architecture; best layer: the best k-NN of the embedding and every conv tap "
    "(average-pooled to about 2,048 values); NMI labels: the run's own final labels (first set); NMI k-means: a "
    "k-means of the embedding (the default's k for every run); steps and s/step: training steps and training "
    "seconds per step (label updates not counted)"
)


def read_records(path: Path) -> dict[tuple, dict]:
    """The records by (kind, data set, configuration, seed); a later record replaces an earlier one."""
    records: dict[tuple, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[(record["kind"], record["dataset"], record["config"], record["seed"])] = record
    return records


def ok(records: dict, kind: str, dataset: str, name: str, seed: int) -> dict | None:
    record = records.get((kind, dataset, name, seed))
    return record if record and record["status"] == "ok" else None


def ranking(records: dict, datasets: list[str], seed: int, names: list[str]) -> list[tuple[float, str]]:
    """(mean over `datasets` of the trained k-NN on the embedding, name) of the configurations ok on all of
    them, best first."""
    ranked = []
    for name in names:
        found = [ok(records, "run", dataset, name, seed) for dataset in datasets]
        if all(found):
            ranked.append((float(np.mean([r["trained"]["knn20_embedding"] for r in found])), name))
    return sorted(ranked, key=lambda item: -item[0])


def cells(records: dict, dataset: str, name: str, seed: int) -> list[str]:
    """The table's cells (HEAD) of one configuration on one data set."""
    record = ok(records, "run", dataset, name, seed)
    if record is None:
        return ["-"] * len(HEAD)
    trained = record["trained"]
    knn, per_step = trained["knn20_embedding"], record["seconds_per_step"]
    default = ok(records, "random", dataset, "default", seed)
    return [
        f"{knn:.3f}",
        f"{knn - default['random']['knn20_embedding']:+.3f}" if default else "-",
        f"{knn - record['random_own']['knn20_embedding']:+.3f}",
        f"{trained['knn20_best_layer']:.3f} {record['best_layer']}",
        f"{trained['nmi_labels']:.3f}",
        f"{trained['nmi_kmeans']:.3f}",
        str(record["steps"]),
        f"{per_step:.2f}" if per_step else "-",
    ]


def summary(record: dict, records: dict, seconds: float) -> str:
    """One line for a finished entry."""
    where = f"{record['dataset']} {record['config']} seed {record['seed']}"
    if record["status"] != "ok":
        return f"{where}: {record['status']} ({seconds:.0f} s)"
    if record["kind"] == "random":
        scores = record["random"]
        return (
            f"{where}: random init kNN emb {scores['knn20_embedding']:.3f}, best layer "
            f"{scores['knn20_best_layer']:.3f}, NMI k-means {scores['nmi_kmeans']:.3f} ({seconds:.0f} s)"
        )
    c = cells(records, record["dataset"], record["config"], record["seed"])
    return (
        f"{where}: kNN emb {c[0]} ({c[1]} vs default random, {c[2]} vs own), best layer {c[3]}, NMI labels "
        f"{c[4]}, k-means {c[5]}; {c[6]} steps, {c[7]} s/step, {record['epochs']} epochs, "
        f"{record['label_updates']} label updates, peak RSS {record['peak_rss_gb']:.1f} GB ({seconds:.0f} s in all)"
    )


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def write_table(records: dict, path: Path, jsonl: Path, top: int) -> None:
    """PREFIX.md: a header (machine, precision, minutes, dates, commands), then one row per configuration of
    the first seed, ranked, and the rows of the further seeds; the default network's random init under each."""
    runs = [r for key, r in records.items() if key[0] == "run"]
    if not runs:
        print(f"no runs in {jsonl}", flush=True)
        return
    found = {r["dataset"] for r in runs}
    datasets = [d for d in SHORT if d in found] + sorted(found - set(SHORT))
    seeds = sorted({r["seed"] for r in runs})
    names = list(dict.fromkeys(r["config"] for r in runs if r["seed"] == seeds[0]))
    ranked = [name for _, name in ranking(records, datasets, seeds[0], names)]
    columns = ["rank", "configuration", "overrides", "mean kNN emb"]
    lines = [row(columns + [f"{SHORT.get(d, d)} {h}" for d in datasets for h in HEAD])]
    lines.append("|" + " --- |" * (len(columns) + len(datasets) * len(HEAD)))
    for seed in seeds:
        order = ranked + [name for name in names if name not in ranked]
        if seed != seeds[0]:
            order = [name for name in order if any(("run", d, name, seed) in records for d in datasets)]
        for rank, name in enumerate(order, 1):
            mine = [r for r in runs if r["config"] == name and r["seed"] == seed]
            overrides = ", ".join(f"{k}={v}" for k, v in mine[0]["overrides"].items()) or "-"
            mean = ranking(records, datasets, seed, [name])
            failures = [r["status"] for r in mine if r["status"] != "ok"]
            first = [str(rank) if name in ranked and seed == seeds[0] else "-"]
            first += [name if seed == seeds[0] else f"{name} (seed {seed})", overrides]
            first.append(f"{mean[0][0]:.3f}" if mean else "; ".join(f[:90] for f in failures) or "-")
            lines.append(row(first + [c for d in datasets for c in cells(records, d, name, seed)]))
        random = ["-", f"random init, default network (seed {seed})", "-", "-"]
        for dataset in datasets:
            default = ok(records, "random", dataset, "default", seed)
            scores = default["random"] if default else {}
            value = [
                f"{scores[k]:.3f}" if k in scores else "-" for k in ("knn20_embedding", "knn20_best_layer")
            ]
            kmeans = f"{scores['nmi_kmeans']:.3f}" if scores else "-"
            random += [value[0], "", "", value[1], "", kmeans, "0", ""]
        lines.append(row(random))
    done = [r for r in runs if r["status"] == "ok"] or [{}]
    text = [
        f"# Configurations at equal minutes (issue 29): {jsonl.stem}",
        "",
        f"- machine: {done[0].get('cpu', '?')}; precision {done[0].get('precision', '?')}",
        f"- budget: {', '.join(str(m) for m in sorted({r['minutes'] for r in runs}))} minutes of training per run "
        f"(run.max_minutes); seed {seeds[0]} for every configuration, "
        + (f"seeds {', '.join(map(str, seeds[1:]))} for the best {top}" if len(seeds) > 1 else "one seed"),
        f"- dates: {', '.join(sorted({r['date'] for r in runs}))}; records: `{jsonl.name}`",
        *[f"- command: `{command}`" for command in sorted({r["command"] for r in runs})],
        "- data sets (train splits): " + "; ".join(f"{SHORT.get(d, d)} = {d}" for d in datasets),
        LEGEND,
        f"- ranked by the mean over the data sets of the trained kNN emb (seed {seeds[0]}); failed entries last",
        "",
        *lines,
        "",
    ]
    path.write_text("\n".join(text))
    print(f"table: {path}", flush=True)
