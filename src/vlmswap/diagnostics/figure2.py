"""Figure 2: RefCOCO examples seen by two cells side by side: predicted and ground-truth boxes, and
a token-region similarity map between the referring expression and the visual tokens.

The similarity, fixed here and in the README (Diagnostics, Figure 2):
- sequence: the evaluation input, [BOS] [visual tokens] [prompt tokens after BOS], the prompt being
  the grounding prompt in the evaluation template (`eval_prompt(grounding_prompt(sentence))`);
- layer: the hidden states after decoder layer `diagnostics.figure2.layer` (hidden_states[layer];
  0 would be the input embeddings);
- text tokens: the prompt tokens whose characters overlap the referring expression itself (the
  quoted sentence, not the instruction around it); their hidden states are averaged;
- map: cosine similarity between that average and each visual token's hidden state, laid out on
  the token grid (row-major) and bilinearly upsampled over the letterboxed image the model sees.
The ground-truth box is drawn in that letterboxed frame; the predicted box as the model wrote it
(normalised coordinates of the image it sees). Predictions are read from the cell's RefCOCO
evaluation, never regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from vlmswap.diagnostics.collapse import letterboxed_box, token_grid
from vlmswap.diagnostics.settings import figure2_settings


def expression_span(prompt: str) -> tuple[int, int]:
    """Character span of the quoted referring expression inside `prompt` (its last quoted part)."""
    end = prompt.rfind('"')
    start = prompt.rfind('"', 0, end)
    if start < 0 or end <= start + 1:
        raise ValueError(f"no quoted referring expression in the prompt {prompt!r}")
    return start + 1, end


@torch.no_grad()
def similarity_map(vlm, pixels: torch.Tensor, prompt: str, layer: int) -> torch.Tensor:
    """(K,) cosine similarities (module docstring) for one image and one full evaluation prompt."""
    tokenizer, llm = vlm.tokenizer, vlm.head.llm
    encoded = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    ids = torch.tensor([encoded["input_ids"]], device=pixels.device)
    start, end = expression_span(prompt)
    in_span = [j for j, (a, b) in enumerate(encoded["offset_mapping"]) if j > 0 and a < end and b > start]
    if not in_span:
        raise ValueError(f"no token of {prompt[start:end]!r} found in the tokenized prompt")
    visual = vlm.head.projector(vlm.features(pixels[None]))
    text = llm.get_input_embeddings()(ids)
    k = visual.shape[1]
    embeds = torch.cat([text[:, :1], visual, text[:, 1:]], dim=1)
    out = llm(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=pixels.device),
              output_hidden_states=True, use_cache=False)
    if layer >= len(out.hidden_states):
        raise ValueError(f"figure2.layer {layer}: the LLM has {len(out.hidden_states) - 1} layers")
    hidden = out.hidden_states[layer][0].float()
    query = hidden[[k + j for j in in_span]].mean(dim=0)  # text token j sits at position k + j
    return torch.nn.functional.cosine_similarity(hidden[1:1 + k], query[None], dim=-1).cpu()


def figure2_cell(study, cell, vlm, index_path: Path, eval_json: Path, out_json: Path,
                 log: Callable[[str], None] = print) -> dict:
    """The similarity maps and boxes of one cell on the configured examples; writes its JSON.

    1. Read the benchmark index and the cell's predictions (from its evaluation).
    2. Per example: letterbox the image as the model sees it, map the ground truth into that frame,
       parse the predicted box, compute the similarity map.
    3. Write the JSON atomically.
    """
    from PIL import Image

    from vlmswap.atomic import write_json
    from vlmswap.evaluate.boxes import parse_box
    from vlmswap.evaluate.prompts import grounding_prompt
    from vlmswap.evaluate.runner import _read_predictions, read_index
    from vlmswap.language import eval_prompt

    settings = figure2_settings(study)
    _, _, examples, _ = read_index(index_path)  # 1.
    by_id = {e.id: e for e in examples}
    wanted = settings["examples"]
    wanted = [e.id for e in examples[:wanted]] if isinstance(wanted, int) else wanted  # N: the first N
    missing = [x for x in wanted if x not in by_id]
    if missing:
        raise ValueError(f"diagnostics.figure2.examples: {missing} are not ids of {index_path} "
                         f"(e.g. {', '.join(list(by_id)[:5])})")
    result = json.loads(eval_json.read_text())
    _, predictions = _read_predictions(eval_json.parent / result["predictions"])
    device = next(vlm.head.parameters()).device
    dtype = next(vlm.head.parameters()).dtype
    rows = []
    for example_id in wanted:  # 2.
        example = by_id[example_id]
        with Image.open(example.image) as image:
            size = image.size
            pixels = vlm.vision.pixels(image, cell.geometry).to(device, dtype)
        sentence = example.prompt[slice(*expression_span(example.prompt))]
        sims = similarity_map(vlm, pixels, eval_prompt(grounding_prompt(sentence)), settings["layer"])
        predicted = parse_box(predictions.get(example_id, "") or "")
        rows.append({"id": example_id, "image": str(example.image), "sentence": sentence,
                     "gt_box": list(letterboxed_box(list(example.target), size, cell.geometry)),
                     "pred_box": list(predicted) if predicted else None, "prediction": predictions.get(example_id),
                     "grid": list(token_grid(len(sims), cell.geometry)), "similarity": [round(float(s), 5) for s in sims]})
        log(f"{cell.id} / {example_id}: {sentence!r}, predicted {rows[-1]['pred_box']}")
    record = {"cell": cell.id, "geometry": str(cell.geometry), "layer": settings["layer"], "examples": rows}
    write_json(out_json, record)  # 3.
    return record


def write_figure2(json_files: list[Path], out_png: Path, title: str) -> None:
    """Rows = examples, columns = cells: the letterboxed image, the upsampled similarity map, the
    ground-truth (green) and predicted (red, dashed) boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    from vlmswap.atomic import atomic_path
    from vlmswap.image import Geometry, letterbox

    records = [json.loads(Path(p).read_text()) for p in json_files]
    n_rows, n_cols = len(records[0]["examples"]), len(records)
    # one colour scale for every panel (symmetric around 0), so the cells compare directly
    scale = max((abs(v) for rec in records for ex in rec["examples"] for v in ex["similarity"]), default=1.0) or 1.0
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 4.2 * n_rows), squeeze=False)
    for c, record in enumerate(records):
        geometry = Geometry.parse(record["geometry"])
        for r, ex in enumerate(record["examples"]):
            ax = axes[r][c]
            with Image.open(ex["image"]) as image:
                shown = np.asarray(letterbox(image, geometry, (124, 116, 104)))
            h, w = shown.shape[:2]
            grid = torch.tensor(ex["similarity"]).view(1, 1, *ex["grid"])
            heat = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            ax.imshow(shown)
            im = ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=-scale, vmax=scale)
            for box, color, style in ((ex["gt_box"], "lime", "-"), (ex["pred_box"], "red", "--")):
                if box:
                    x1, y1, x2, y2 = box
                    ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                                           edgecolor=color, linewidth=2, linestyle=style))
            ax.set_title(f"{record['cell']}\n\"{ex['sentence']}\"", fontsize=7)
            ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label=f"cosine similarity (LLM layer {records[0]['layer']})")
    fig.suptitle(title + "  (green: ground truth, red dashed: prediction)", fontsize=9)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
