"""Localization collapse, measured: where along vision -> connector -> LLM does object position
stop being decodable?

The paper (Sec. 4, stabilization) names two hypotheses without measuring them: a transmission
bottleneck (the connector loses spatial information) and a utilization bottleneck (the LLM does
not use it). For a trained cell this module fits light linear probes that decode, per visual token,
whether the token lies inside the referred object's box (RefCOCO val, the box letterboxed exactly
as the model sees the image), from
  (a) `tap`: the frozen backbone's tapped tokens,
  (b) `connector`: the projector's outputs (the LLM's input embeddings at the visual positions),
  (c) `llm-L`: the LLM's hidden states at the visual positions after layer L (`llm_layers`).
The visual tokens come before the text in the causal sequence [BOS, visual, text], so their hidden
states do not depend on the prompt: the LLM sees [BOS, visual] here.

Every probe is a logistic regression (scikit-learn, standardised features, C = 1.0 for all
stages, balanced class weights) trained on the tokens of 70% of the images and scored on the
tokens of the other 30% by ROC AUC. A `position-prior` row gives the AUC of the same probe on the
token's grid position alone (one-hot): what is decodable without any image content.

Diagnosis per cell (`diagnose`), with a drop threshold of 0.05 AUC:
- tap AUC within 0.05 of the prior: the encoder's tokens carry little position signal (neither
  interface hypothesis applies: the features are the bottleneck);
- tap -> connector drop > 0.05: transmission bottleneck;
- connector -> deepest probed LLM layer drop > 0.05: the signal fades inside the LLM;
- otherwise the signal reaches the LLM's visual positions intact, so a low grounding score points
  to a utilization bottleneck (the LLM does not read it out).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlmswap.atomic import atomic_path, read_csv_rows, write_csv, write_text
from vlmswap.diagnostics.settings import collapse_settings
from vlmswap.image import Geometry
from vlmswap.study import Cell, Study

DROP = 0.05
TRAIN_FRACTION = 0.7


@dataclass
class ProbeRow:
    cell: str
    stage: str       # position-prior | tap | connector | llm-<L>
    order: int       # position along the pipeline (0 = prior)
    dim: int         # feature width
    auc: float       # held-out ROC AUC
    n_train_tokens: int
    n_test_tokens: int
    positive_rate: float  # share of tokens inside the box


def token_grid(n_tokens: int, geometry: Geometry) -> tuple[int, int]:
    """(rows, cols) of a row-major token map of `n_tokens` for `geometry` (aspect ratio kept)."""
    rows = round(math.sqrt(n_tokens * geometry.height / geometry.width))
    for r in (rows, rows - 1, rows + 1):
        if r > 0 and n_tokens % r == 0:
            return r, n_tokens // r
    raise ValueError(f"{n_tokens} tokens do not form a grid for {geometry}")


def letterboxed_box(box: list[float], size: tuple[int, int], geometry: Geometry) -> tuple[float, ...]:
    """A box normalised by the original image size -> normalised in the letterboxed frame (image.letterbox)."""
    w, h = size
    if geometry.square:
        m = max(w, h)
        pad_w, pad_h = int((m - w) / 2), int((m - h) / 2)
    else:
        target = geometry.width / geometry.height
        pad_w, pad_h = (int((round(h * target) - w) / 2), 0) if w / h < target else (0, int((round(w / target) - h) / 2))
    pw, ph = w + 2 * pad_w, h + 2 * pad_h
    x1, y1, x2, y2 = box
    return ((x1 * w + pad_w) / pw, (y1 * h + pad_h) / ph, (x2 * w + pad_w) / pw, (y2 * h + pad_h) / ph)


def inside_map(box: tuple[float, ...], grid: tuple[int, int]) -> np.ndarray:
    """1 for every token whose cell centre lies inside the (normalised) box, row-major."""
    rows, cols = grid
    ys, xs = (np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols
    inside_y = (ys >= box[1]) & (ys <= box[3])
    inside_x = (xs >= box[0]) & (xs <= box[2])
    return (inside_y[:, None] & inside_x[None, :]).reshape(-1).astype(np.int64)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Held-out ROC AUC of a standardised, class-balanced logistic regression (C = 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(train_y.tolist())) < 2 or len(set(test_y.tolist())) < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=500))
    probe.fit(train_x, train_y)
    return float(roc_auc_score(test_y, probe.decision_function(test_x)))


@torch.no_grad()
def stage_features(vlm, pixels: torch.Tensor, layers: list[int]) -> dict[str, torch.Tensor]:
    """(B, K, C) features of every probed stage for a batch of images."""
    tap = vlm.features(pixels)
    visual = vlm.head.projector(tap)
    llm = vlm.head.llm
    bos = torch.full((pixels.shape[0], 1), vlm.tokenizer.bos_token_id, dtype=torch.long, device=pixels.device)
    embeds = torch.cat([llm.get_input_embeddings()(bos), visual], dim=1)
    out = llm(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=pixels.device),
              output_hidden_states=True, use_cache=False)
    features = {"tap": tap, "connector": visual}
    for layer in layers:
        if layer >= len(out.hidden_states):
            raise ValueError(f"llm_layers: layer {layer} does not exist; the LLM has {len(out.hidden_states) - 1} "
                             "layers (hidden state 0 is the input embeddings)")
        features[f"llm-{layer}"] = out.hidden_states[layer][:, 1:]
    return {k: v.float().cpu() for k, v in features.items()}


def probe_cell(study: Study, cell: Cell, vlm, index_path: Path, out_csv: Path,
               log: Callable[[str], None] = print, batch_size: int = 16) -> list[ProbeRow]:
    """Fit the position probes of one trained cell and write its CSV.

    1. Read the benchmark index; keep one example per (image, box), at most `max_images`, in a
       seeded order; split the images 70/30 into probe-train and probe-test.
    2. Letterbox each image as the model sees it, map the referred box into that frame, and label
       every token inside / outside it.
    3. Run the model once per batch: tap tokens, connector outputs, LLM hidden states at the
       visual positions after each probed layer.
    4. Fit one probe per stage (and the position prior) and score it on the held-out images.
    5. Write the CSV atomically.
    """
    from PIL import Image

    from vlmswap.evaluate.runner import read_index

    settings = collapse_settings(study)
    device = next(vlm.head.parameters()).device
    dtype = next(vlm.head.parameters()).dtype

    # 1. examples and the image split
    _, _, examples, _ = read_index(index_path)
    seen, chosen = set(), []
    for example in examples:
        key = (str(example.image), tuple(example.target))
        if key not in seen:
            seen.add(key)
            chosen.append(example)
    random.Random(study.raw.get("seed", 0)).shuffle(chosen)
    chosen = chosen[: settings["max_images"]]
    images = sorted({str(e.image) for e in chosen})
    random.Random(1).shuffle(images)
    train_images = set(images[: int(len(images) * TRAIN_FRACTION)])

    # 2.-3. labels and features, batch by batch
    stages: dict[str, list[np.ndarray]] = {}
    labels, is_train, positions = [], [], []
    grid = None
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start:start + batch_size]
        pixels, maps = [], []
        for example in batch:
            with Image.open(example.image) as image:
                size = image.size
                pixels.append(vlm.vision.pixels(image, cell.geometry))
            maps.append(letterboxed_box(list(example.target), size, cell.geometry))
        features = stage_features(vlm, torch.stack(pixels).to(device, dtype), settings["llm_layers"])
        n_tokens = features["tap"].shape[1]
        grid = grid or token_grid(n_tokens, cell.geometry)
        for i, example in enumerate(batch):
            labels.append(inside_map(maps[i], grid))
            is_train.append(np.full(n_tokens, str(example.image) in train_images))
            positions.append(np.arange(n_tokens))
            for name, value in features.items():
                stages.setdefault(name, []).append(value[i].numpy())
        log(f"{cell.id}: features of {min(start + batch_size, len(chosen))}/{len(chosen)} examples")

    # 4. one probe per stage
    y, train = np.concatenate(labels), np.concatenate(is_train)
    position = np.concatenate(positions)
    prior = np.eye(grid[0] * grid[1], dtype=np.float32)[position]
    rows = []
    ordered = [("position-prior", prior)] + [(name, np.concatenate(parts)) for name, parts in stages.items()]
    for order, (name, x) in enumerate(ordered):
        auc = fit_probe(x[train], y[train], x[~train], y[~train])
        rows.append(ProbeRow(cell.id, name, order, int(x.shape[1]), round(auc, 4), int(train.sum()),
                             int((~train).sum()), round(float(y.mean()), 4)))
        log(f"{cell.id}: {name} AUC {auc:.3f}")

    # 5. the CSV
    write_csv(out_csv, (asdict(r) for r in rows), list(asdict(rows[0])))
    return rows


# ----------------------------------------------------------------------------------------------
# Findings over all probed cells


def diagnose(rows: list[dict]) -> tuple[str, str]:
    """(verdict, reason) for one cell's probe rows (module docstring)."""
    auc = {r["stage"]: float(r["auc"]) for r in rows}
    llm = sorted((int(s.split("-")[1]), v) for s, v in auc.items() if s.startswith("llm-"))
    prior, tap, connector = auc["position-prior"], auc["tap"], auc["connector"]
    deepest_layer, deepest = llm[-1] if llm else (None, connector)
    if tap - prior <= DROP:
        return ("features", f"the tap tokens decode position barely better than the grid prior "
                            f"(AUC {tap:.3f} vs {prior:.3f}): little spatial signal to transmit")
    if tap - connector > DROP:
        return ("transmission", f"AUC drops {tap - connector:.3f} across the connector "
                                f"({tap:.3f} -> {connector:.3f})")
    if connector - deepest > DROP:
        return ("fades in the LLM", f"AUC drops {connector - deepest:.3f} from the connector to LLM layer "
                                    f"{deepest_layer} ({connector:.3f} -> {deepest:.3f})")
    return ("utilization", f"position stays decodable through the connector and LLM layer {deepest_layer} "
                           f"(AUC {tap:.3f} -> {connector:.3f} -> {deepest:.3f}); if grounding is poor, the LLM "
                           "does not use a signal it has")


def write_collapse_summary(csv_files: list[Path], results_dir: Path, out_csv: Path, out_png: Path, out_md: Path,
                           benchmark: str, title: str) -> list[dict]:
    """Concatenate the per-cell probe CSVs; draw AUC along the pipeline per cell; write the findings
    (the verdict per cell beside its grounding score, when the cell has been evaluated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict] = read_csv_rows(csv_files)
    write_csv(out_csv, rows, list(rows[0]))

    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 5.5))
    stages_seen: list[str] = []
    for i, cell in enumerate(cells):
        mine = sorted((r for r in rows if r["cell"] == cell and r["stage"] != "position-prior"),
                      key=lambda r: int(r["order"]))
        stages_seen = stages_seen if len(stages_seen) >= len(mine) else [r["stage"] for r in mine]
        ax.plot(range(len(mine)), [float(r["auc"]) for r in mine], marker="o", color=f"C{i % 10}", label=cell)
        prior = next(float(r["auc"]) for r in rows if r["cell"] == cell and r["stage"] == "position-prior")
        ax.axhline(prior, color=f"C{i % 10}", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(stages_seen)), stages_seen)
    ax.set_ylabel("held-out ROC AUC: token inside the referred box")
    ax.set_xlabel("where the visual tokens are read (dotted: each cell's grid-position prior)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)

    lines = [f"# {title}", "", "| cell | " + benchmark + " | prior | tap | connector | LLM (deepest) | verdict | why |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell]
        auc = {r["stage"]: float(r["auc"]) for r in mine}
        deepest = max((s for s in auc if s.startswith("llm-")), key=lambda s: int(s.split("-")[1]), default="connector")
        score_file = results_dir / "evals" / cell / f"{benchmark}.json"
        score = json.loads(score_file.read_text())["columns"].get(benchmark) if score_file.exists() else None
        verdict, why = diagnose(mine)
        lines.append(f"| {cell} | {'' if score is None else f'{score:.2f}'} | {auc['position-prior']:.3f} | "
                     f"{auc['tap']:.3f} | {auc['connector']:.3f} | {auc[deepest]:.3f} ({deepest}) | {verdict} | {why} |")
    lines += ["", f"Probes: logistic regression per stage, ROC AUC on held-out images, drop threshold {DROP} "
                  "(src/vlmswap/diagnostics/collapse.py). `transmission` supports the transmission-bottleneck "
                  "hypothesis; `utilization` the utilization-bottleneck hypothesis (the signal reaches the LLM); "
                  "`features` neither (the encoder's tokens carry little position signal)."]
    write_text(out_md, "\n".join(lines) + "\n")
    return rows
