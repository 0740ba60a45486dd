"""Linear probing of frozen backbones, and whether probe accuracy predicts the VLM's scores.

For each cell of `diagnostics.linear_probe.cells` the cell's backbone (its official checkpoint,
tap and geometry, exactly as the VLM sees images) encodes every image of each probe dataset; the
tapped tokens are mean-pooled into one vector per image. A logistic regression (scikit-learn,
standardised features, multinomial) is fitted on the dataset's training split; its inverse
regularization C is chosen from `C_GRID` by accuracy on a seeded 20% validation split of the
training images, then refitted on the whole training split and scored on the test split (top-1).

Datasets: `mini-classify` (the mini world's 12-class shape x colour set: train.jsonl -> train,
val.jsonl -> test; val.jsonl is never used by backbone pretraining) and, on the paper config,
torchvision's dataset classes (`TORCHVISION`), downloaded by the `fetch_probe_dataset` rule.

The summary answers the paper's question with numbers: the Spearman rank correlation, across the
probed cells, between mean probe accuracy and each VLM score column of the study.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0)
VAL_SHARE = 0.2

# id -> (torchvision class, train kwargs, test kwargs); EuroSAT has no split: seeded 80/20 of its images
TORCHVISION: dict[str, tuple[str, dict, dict]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "oxford-pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "eurosat": ("EuroSAT", {}, {}),
}
DATASETS = ("mini-classify", *TORCHVISION)


def probe_settings(study) -> dict:
    spec = study.raw["diagnostics"]["linear_probe"]
    return {"datasets": list(spec["datasets"]), "max_train": int(spec.get("max_train", 10000)),
            "max_test": int(spec.get("max_test", 10000))}


def fetch_torchvision_dataset(name: str, root: Path) -> None:
    """Download one torchvision probe dataset into `root` (both splits)."""
    import torchvision.datasets as tvd

    cls, train_kw, test_kw = TORCHVISION[name]
    for kwargs in (train_kw, test_kw):
        getattr(tvd, cls)(str(root), download=True, **kwargs)


def _load_split(name: str, root: Path, split: str, limit: int, seed: int) -> list[tuple[Callable, int]]:
    """(image opener, label) pairs of one split, at most `limit`, in a seeded order."""
    from PIL import Image

    if name == "mini-classify":
        rows = [json.loads(x) for x in (root / f"{'train' if split == 'train' else 'val'}.jsonl").read_text().splitlines()
                if x.strip()]
        items = [((lambda p=root / r["image"]: Image.open(p).convert("RGB")), int(r["label"])) for r in rows]
    else:
        import torchvision.datasets as tvd

        cls, train_kw, test_kw = TORCHVISION[name]
        data = getattr(tvd, cls)(str(root), download=False, **(train_kw if split == "train" else test_kw))
        indices = list(range(len(data)))
        if name == "eurosat":  # no official split
            random.Random(0).shuffle(indices)
            cut = int(0.8 * len(indices))
            indices = indices[:cut] if split == "train" else indices[cut:]
        items = [((lambda i=i: data[i][0].convert("RGB")), None) for i in indices]
        items = [(opener, int(data[i][1]) if label is None else label) for (opener, label), i in zip(items, indices)]
    random.Random(seed).shuffle(items)
    return items[:limit]


def pooled_features(vision, items, geometry, device, dtype, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled tap tokens (N, C) and labels (N,)."""
    import torch

    feats, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            pixels = torch.stack([vision.pixels(opener(), geometry) for opener, _ in batch]).to(device, dtype)
            feats.append(vision(pixels).float().mean(dim=1).cpu().numpy())
            labels += [label for _, label in batch]
    return np.concatenate(feats), np.asarray(labels)


def fit_linear_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> dict:
    """Choose C on a validation split of the training set, refit on all of it, score on the test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))

    order = np.random.default_rng(seed).permutation(len(train_y))
    n_val = max(1, int(VAL_SHARE * len(order)))
    val, fit = order[:n_val], order[n_val:]
    val_acc = {c: float(probe(c).fit(train_x[fit], train_y[fit]).score(train_x[val], train_y[val])) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularization
    test_acc = float(probe(best).fit(train_x, train_y).score(test_x, test_y))
    return {"accuracy": round(100 * test_acc, 2), "C": best, "val_accuracy": {str(c): round(100 * a, 2)
                                                                             for c, a in val_acc.items()},
            "n_train": int(len(train_y)), "n_test": int(len(test_y))}


def probe_cell(study, cell, checkpoint_files: list[Path], roots: dict[str, Path], out_json: Path,
               log: Callable[[str], None] = print) -> dict:
    """Probe one cell's frozen backbone on every configured dataset and write its JSON.

    1. Build the backbone at the cell's tap and geometry and load its official checkpoint.
    2. Per dataset: read both splits (seeded, capped), encode, mean-pool the tapped tokens.
    3. Fit the probe (C chosen on validation) and score the test split.
    4. Write the JSON atomically.
    """
    from vlmswap.atomic import write_json
    from vlmswap.sections import ConfigError
    from vlmswap.vlm import inference_placement, materialize_backbone

    settings = probe_settings(study)
    missing = [name for name in settings["datasets"] if name not in roots]
    if missing:  # before any image is encoded
        raise ConfigError(study.path, "diagnostics.linear_probe.datasets",
                          f"lists {missing[0]!r} but no --data {missing[0]}=FOLDER was given (given: "
                          f"{', '.join(roots) or 'none'}); pass one folder per listed dataset")
    device, dtype = inference_placement()
    vision = materialize_backbone(study, cell, checkpoint_files).to(device, dtype)  # 1.
    results = {}
    for name in settings["datasets"]:
        train = _load_split(name, roots[name], "train", settings["max_train"], seed=0)  # 2.
        test = _load_split(name, roots[name], "test", settings["max_test"], seed=1)
        train_x, train_y = pooled_features(vision, train, cell.geometry, device, dtype)
        test_x, test_y = pooled_features(vision, test, cell.geometry, device, dtype)
        results[name] = fit_linear_probe(train_x, train_y, test_x, test_y)  # 3.
        log(f"{cell.id} on {name}: {results[name]['accuracy']:.2f}% (C={results[name]['C']})")
    record = {"cell": cell.id, "pooling": "mean over the tapped tokens", "C_grid": list(C_GRID),
              "val_share": VAL_SHARE, "datasets": results}
    write_json(out_json, record)  # 4.
    return record


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (average ranks for ties); nan for fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def write_probe_summary(study, json_files: list[Path], results_dir: Path, out_csv: Path, out_md: Path,
                        out_png: Path) -> dict:
    """Cell x dataset accuracy table, and the rank correlation of mean probe accuracy with each
    VLM score column over the probed cells that have that score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlmswap.atomic import atomic_path, write_csv, write_text

    records = [json.loads(Path(p).read_text()) for p in json_files]
    datasets = list(records[0]["datasets"]) if records else []
    rows = []
    for rec in records:
        accs = [rec["datasets"][d]["accuracy"] for d in datasets]
        rows.append({"cell": rec["cell"], **{d: rec["datasets"][d]["accuracy"] for d in datasets},
                     "mean": round(sum(accs) / len(accs), 2),
                     **{f"C[{d}]": rec["datasets"][d]["C"] for d in datasets}})
    write_csv(out_csv, rows, list(rows[0]))

    scores: dict[str, dict[str, float]] = {}
    for row in rows:
        for bench in study.benchmarks:
            path = results_dir / "evals" / row["cell"] / f"{bench}.json"
            if path.exists():
                for column, value in json.loads(path.read_text())["columns"].items():
                    scores.setdefault(column, {})[row["cell"]] = float(value)
    correlations = {}
    for column, by_cell in scores.items():
        cells = [r for r in rows if r["cell"] in by_cell]
        correlations[column] = (spearman([r["mean"] for r in cells], [by_cell[r["cell"]] for r in cells]), len(cells))

    lines = ["# Linear probing of the frozen backbones", "",
             "Top-1 test accuracy (%) of a logistic-regression probe on mean-pooled tap tokens; C chosen from "
             f"{list(C_GRID)} on a {int(VAL_SHARE * 100)}% validation split of the training images.", "",
             "| cell | " + " | ".join(datasets) + " | mean |", "| --- |" + " ---: |" * (len(datasets) + 1)]
    lines += [f"| {r['cell']} | " + " | ".join(f"{r[d]:.2f}" for d in datasets) + f" | {r['mean']:.2f} |" for r in rows]
    lines += ["", "Does probe accuracy predict the VLM's scores? Spearman rank correlation of the mean probe "
                  "accuracy with each score, over the probed cells:", "", "| VLM score | Spearman rho | cells |",
              "| --- | ---: | ---: |"]
    lines += [f"| {c} | {rho:.3f} | {n} |" for c, (rho, n) in correlations.items()]
    write_text(out_md, "\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, max(1, len(scores)), figsize=(4.5 * max(1, len(scores)), 4), squeeze=False)
    for ax, (column, by_cell) in zip(axes[0], scores.items()):
        cells = [r for r in rows if r["cell"] in by_cell]
        ax.scatter([r["mean"] for r in cells], [by_cell[r["cell"]] for r in cells])
        for r in cells:
            ax.annotate(r["cell"].split("@")[0] + "@" + r["cell"].split("@")[3], (r["mean"], by_cell[r["cell"]]),
                        fontsize=6)
        ax.set_xlabel("mean linear-probe accuracy (%)")
        ax.set_ylabel(f"VLM {column} (%)")
        ax.set_title(f"{column}: Spearman rho = {correlations[column][0]:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return {"rows": rows, "correlations": correlations}
