"""Appendix G: single-device inference profiling of one cell's VLM across square resolutions.

For each resolution of `diagnostics.profile.resolutions`, ascending, the cell's vision encoder is
rebuilt at that square size (random weights: latency and memory do not depend on the values, and
no checkpoint is needed), the same projector and LLM are attached, and a full multimodal forward
runs under `torch.inference_mode()` on synthetic inputs (batch `batch_size`, `text_tokens` random
text tokens after BOS), `iterations` times; the first `warmup` are discarded and the mean of the
rest is reported. The sweep stops at the first out-of-memory resolution (a row with status `oom`).

The six metrics of the paper's Fig. 4 (paper App. G.1):
- host_vision_ms: wall clock of the vision stage (backbone + projector) as the host sees it, no
  device synchronisation inside the stage (kernel launches, not their completion, on a GPU);
- host_llm_ms: wall clock of the language stage (input preparation: text embeddings, splice,
  attention mask; then the LLM forward), same convention;
- gpu_vision_ms, gpu_llm_ms: CUDA-event time of the two stages (GPU only; empty on the CPU);
- e2e_ms: wall clock of one whole forward, synchronised at its end;
- peak_mem_mb: peak allocated GPU memory of the resolution's iterations (torch.cuda), or on the
  CPU the process's peak resident set size so far (getrusage; monotone, hence the ascending sweep).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from vlmswap.atomic import atomic_path, read_csv_rows, write_csv
from vlmswap.diagnostics.settings import profile_settings
from vlmswap.image import Geometry
from vlmswap.study import Cell, Study


@dataclass
class ProfileRow:
    cell: str
    family: str
    resolution: int
    visual_tokens: int
    device: str
    iterations: int
    warmup: int
    host_vision_ms: float | str
    host_llm_ms: float | str
    gpu_vision_ms: float | str
    gpu_llm_ms: float | str
    e2e_ms: float | str
    peak_mem_mb: float | str
    peak_mem_kind: str
    status: str  # "ok" | "oom"


COLUMNS = [f.name for f in fields(ProfileRow)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()  # the CPU allocator says "can't allocate memory" in a plain RuntimeError
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text


def _forward_once(vision, head, pixels, input_ids, mask, cuda: bool) -> dict[str, float]:
    """One multimodal forward, timed per stage (host wall clock; CUDA events on a GPU)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
    start = time.perf_counter()
    if cuda:
        events[0].record()
    visual = head.projector(vision(pixels).to(pixels.dtype))
    after_vision = time.perf_counter()
    if cuda:
        events[1].record()
    text = head.llm.get_input_embeddings()(input_ids)
    embeds = torch.cat([text[:, :1], visual.to(text.dtype), text[:, 1:]], dim=1)
    attention = torch.cat([mask[:, :1], mask.new_ones(mask.shape[0], visual.shape[1]), mask[:, 1:]], dim=1)
    head.llm(inputs_embeds=embeds, attention_mask=attention, use_cache=False)
    after_llm = time.perf_counter()
    if cuda:
        events[2].record()
        torch.cuda.synchronize()
    end = time.perf_counter()
    timing = {"host_vision_ms": (after_vision - start) * 1e3, "host_llm_ms": (after_llm - after_vision) * 1e3,
              "e2e_ms": (end - start) * 1e3}
    if cuda:
        timing["gpu_vision_ms"] = events[0].elapsed_time(events[1])
        timing["gpu_llm_ms"] = events[1].elapsed_time(events[2])
    return timing


def profile_cell(study: Study, cell: Cell, llm_dir: Path, out_csv: Path,
                 log: Callable[[str], None] = print) -> list[ProfileRow]:
    """Profile one cell's VLM over the configured resolutions and write its CSV.

    1. Load the tokenizer and the LLM once (bf16 on a GPU, fp32 on the CPU).
    2. For each resolution, ascending: build the encoder at that square geometry and a projector
       for its width (seeded), make the synthetic batch.
    3. Run `iterations` timed forwards under inference mode; average those after `warmup`.
    4. On out-of-memory: record an `oom` row and stop the sweep.
    5. Write the CSV atomically.
    """
    from vlmswap.language import load_llm, load_tokenizer
    from vlmswap.vision.registry import build_backbone
    from vlmswap.vlm import VLMHead, backbone_arch, inference_placement

    settings = profile_settings(study)
    placement, dtype = inference_placement()
    device = torch.device(placement)
    cuda = device.type == "cuda"
    family = study.backbones[cell.backbone].family

    # 1. the LLM, once
    tokenizer = load_tokenizer(llm_dir)
    llm = load_llm(llm_dir, tokenizer, dtype=dtype).to(device).eval()
    vocab = llm.get_input_embeddings().num_embeddings

    rows: list[ProfileRow] = []
    for resolution in settings["resolutions"]:
        geometry = Geometry(resolution, resolution)
        status, timings, tokens = "ok", [], 0
        try:
            # 2. encoder at this resolution + projector; synthetic inputs
            torch.manual_seed(0)
            vision = build_backbone(family, backbone_arch(study, cell), cell.tap, geometry).to(device, dtype).eval()
            head = VLMHead(cell.connector, vision.embed_dim, llm).eval()
            head.projector.to(device)  # the LLM is placed already; `.to(dtype)` would round its RoPE buffer
            tokens = vision.num_tokens(resolution, resolution)
            b, n = settings["batch_size"], settings["text_tokens"]
            pixels = torch.randn(b, vision.in_channels, resolution, resolution, device=device, dtype=dtype)
            input_ids = torch.randint(0, vocab, (b, n), device=device)
            input_ids[:, 0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
            mask = torch.ones_like(input_ids)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            # 3. timed forwards
            with torch.inference_mode():
                for _ in range(settings["iterations"]):
                    timings.append(_forward_once(vision, head, pixels, input_ids, mask, cuda))
        except (RuntimeError, MemoryError) as error:
            if not _is_oom(error):
                raise
            status = "oom"  # 4. stop the sweep here
        finally:
            vision = head = None
        measured = timings[settings["warmup"]:]
        def mean(key: str) -> float | str:
            values = [t[key] for t in measured if key in t]
            return round(sum(values) / len(values), 4) if values and status == "ok" else ""
        peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()) if status == "ok" else ""
        row = ProfileRow(cell.id, family, resolution, tokens, device.type, settings["iterations"], settings["warmup"],
                         mean("host_vision_ms"), mean("host_llm_ms"), mean("gpu_vision_ms"), mean("gpu_llm_ms"),
                         mean("e2e_ms"), round(peak, 1) if peak != "" else "",
                         "cuda max_memory_allocated" if cuda else "cpu peak rss", status)
        rows.append(row)
        log(f"{cell.id} @ {resolution}: {status}, {tokens} tokens, e2e {row.e2e_ms} ms, peak {row.peak_mem_mb} MB")
        if status == "oom":
            break

    # 5. the CSV
    write_csv(out_csv, (asdict(r) for r in rows), COLUMNS)
    return rows


# ----------------------------------------------------------------------------------------------
# The six-panel figure (the paper's Fig. 4 layout) over every profiled cell

PANELS = [("host_vision_ms", "(a) Host-side vision latency (ms)"), ("host_llm_ms", "(b) Host-side LLM latency (ms)"),
          ("gpu_vision_ms", "(c) GPU vision latency (ms)"), ("gpu_llm_ms", "(d) GPU LLM latency (ms)"),
          ("e2e_ms", "(e) End-to-end VLM latency (ms)"), ("peak_mem_mb", "(f) Peak memory (MB)")]


def write_profile_summary(csv_files: list[Path], out_csv: Path, out_png: Path, title: str) -> list[dict]:
    """Concatenate the per-cell CSVs and draw the six panels (one line per cell, x = resolution;
    an out-of-memory resolution is marked with an x on the resolution axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict] = read_csv_rows(csv_files)
    write_csv(out_csv, rows, COLUMNS)

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    for ax, (key, label) in zip(axes.flat, PANELS):
        for i, cell in enumerate(cells):
            mine = [r for r in rows if r["cell"] == cell]
            ok = [(int(r["resolution"]), float(r[key])) for r in mine if r["status"] == "ok" and r[key] != ""]
            color = f"C{i}"
            if ok:
                ax.plot(*zip(*ok), marker="o", color=color, label=cell.split("@")[0])
            for r in mine:
                if r["status"] == "oom":
                    ax.plot(int(r["resolution"]), 0, marker="x", color=color, markersize=10)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("input resolution (px, square)")
        if key.startswith("gpu") and not any(r[key] for r in rows):
            ax.text(0.5, 0.5, "no GPU: CUDA-event timings\nare measured on GPU runs only", ha="center",
                    va="center", transform=ax.transAxes, color="gray")
        if key == "peak_mem_mb" and rows:
            ax.set_title(f"{label[:-5]} ({rows[0]['peak_mem_kind']}, MB)", fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return rows
