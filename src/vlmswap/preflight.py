"""Before any download or job: what would fail later, said now.

`vlmswap preflight --config C` (and the workflow's first rule) checks
- every input that must be placed by hand (`placed_by_hand:` in the config): where it goes,
  where to get it, whether it is there;
- disk: the downloads not yet on disk (their `size_gb`) against the free space where the
  study's resources live;
- the grid's cost: GPU-hours and job counts from the config's train/eval resources (an upper
  bound: the requested wall time);
- credentials for gated hub repositories (`gated: true` sources need a Hugging Face token).
It returns a report; `problems` lists what would fail, and the command exits non-zero on any.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vlmswap.study import BENCHMARK_COLUMNS, LOC_COLUMNS, VQA_COLUMNS, Study


@dataclass
class Preflight:
    study: str
    resources: str
    hand_placed: list[dict[str, Any]] = field(default_factory=list)
    download_gb: float = 0.0
    unknown_sizes: list[str] = field(default_factory=list)
    free_gb: float = 0.0
    gpu_hours: float = 0.0
    jobs: dict[str, int] = field(default_factory=dict)
    gated: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sources(study: Study) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """(label, source, destination under resources/) of every download the study needs."""
    for backbone_id, backbone in study.backbones.items():
        for objective, source in backbone.checkpoints.items():
            yield (f"checkpoint {backbone_id}@{objective}", dict(source),
                   Path("checkpoints") / f"{backbone_id}@{objective}.ckpt")
    yield f"LLM {study.llm.id}", dict(study.llm.source), Path("llm")
    yield f"instruction set {study.instruct.id}", dict(study.instruct.source), Path("data/llava-v1.5-instruct")
    for i, f in enumerate(study.instruct.files):
        yield f"instruction images {f.get('into', i)}", dict(f), Path("data/llava-v1.5-instruct") / f.get("into", "")
    for name, inputs in study.benchmark_inputs.items():
        for f in inputs.files:
            yield f"{name} file {f.get('name') or f.get('url') or f.get('file')}", dict(f), Path("data") / name


def _has_token() -> bool:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # an unreadable token file is no token
        return False


def run_preflight(study: Study, resources: Path) -> Preflight:
    resources = Path(resources)
    report = Preflight(study.name, str(resources))

    for item in study.raw.get("placed_by_hand", []):
        path = resources / item["path"]
        present = path.is_file() or (path.is_dir() and any(path.iterdir()))
        report.hand_placed.append({**item, "where": str(path), "present": present})
        if not present:
            report.problems.append(f"missing, to place by hand: {path} ({item['what']}); get it: {item['get']}")

    for label, source, dest in _sources(study):
        if "mini" in source or "members" in source or "path" in source:
            if "path" in source and not Path(source["path"]).exists():
                report.problems.append(f"{label}: local source {source['path']} does not exist")
            continue
        if (resources / dest).exists() and any((resources / dest).iterdir() if (resources / dest).is_dir() else [1]):
            continue
        if "size_gb" in source:
            report.download_gb += float(source["size_gb"])
        else:
            report.unknown_sizes.append(label)
        if source.get("gated"):
            report.gated.append({"label": label, "hub": source.get("hub")})
    report.download_gb = round(report.download_gb, 1)
    probe = resources
    while not probe.exists():
        probe = probe.parent
    report.free_gb = round(shutil.disk_usage(probe).free / 2**30, 1)
    if report.download_gb > report.free_gb:
        report.problems.append(f"disk: the downloads need {report.download_gb} GB, {report.free_gb} GB are free "
                               f"at {probe}")
    if report.gated and not _has_token():
        names = ", ".join(g["hub"] or g["label"] for g in report.gated)
        report.problems.append(f"gated hub repositories ({names}) need a token: accept their licence on the hub, "
                               "then `huggingface-cli login` or set HF_TOKEN")

    train, evaluate = study.train_resources, study.eval_resources
    groups = [g for g, cols in (("vqa", VQA_COLUMNS), ("loc", LOC_COLUMNS))
              if any(set(BENCHMARK_COLUMNS[b]) <= set(cols) for b in study.benchmarks)]
    n_cells = len(study.cells)
    train_gpus = train.nodes * train.gpus_per_node
    report.jobs = {"train": n_cells, "evaluate": n_cells * len(groups)}
    report.gpu_hours = round(n_cells * train_gpus * (train.runtime_min or 60) / 60
                             + n_cells * len(groups) * evaluate.gpus * (evaluate.runtime_min or 60) / 60, 1)
    return report


def format_report(report: Preflight) -> str:
    lines = [f"preflight of study {report.study!r} (resources in {report.resources})"]
    if report.hand_placed:
        lines.append("inputs placed by hand:")
        for item in report.hand_placed:
            state = "ok     " if item["present"] else "MISSING"
            lines.append(f"  {state} {item['where']}: {item['what']}" + ("" if item["present"] else f"\n          get it: {item['get']}"))
    else:
        lines.append("inputs placed by hand: none")
    unknown = f" (+ {len(report.unknown_sizes)} of unstated size)" if report.unknown_sizes else ""
    lines.append(f"downloads still to fetch: {report.download_gb} GB{unknown}; free: {report.free_gb} GB")
    lines.append(f"grid: {report.jobs.get('train', 0)} training and {report.jobs.get('evaluate', 0)} evaluation jobs, "
                 f"{report.gpu_hours} GPU-hours of requested wall time, one attempt per job (a training "
                 f"stopped at its time limit continues in a retry, which adds its own)")
    if report.gated:
        lines.append("gated hub repositories: " + ", ".join(g["hub"] or g["label"] for g in report.gated))
    lines += [f"PROBLEM: {p}" for p in report.problems]
    lines.append("preflight: OK" if not report.problems else f"preflight: {len(report.problems)} problem(s)")
    return "\n".join(lines)
