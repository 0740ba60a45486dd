"""Study -> tables and correlation: labels each cell as the paper does, then calls tables/correlation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from vlmswap.analysis.correlation import correlation_matrix, write_correlation
from vlmswap.analysis.tables import Row, build_table, collect, write_table
from vlmswap.study import Cell, Study


def in1k_accuracy(study: Study, cell: Cell) -> float | None:
    """The IN1K top-1 accuracy of the cell's checkpoint as the paper prints it (config `in1k_acc`)."""
    if study.backbones[cell.backbone].members:
        return None
    value = study.checkpoint_source(cell.backbone, cell.objective).get("in1k_acc")
    return None if value is None else float(value)


def row_for(study: Study, cell: Cell, results_dir: Path, in1k_column: bool = False) -> Row:
    """The paper's label columns (with the checkpoint's IN1K accuracy where the paper's table shows
    it), the cell's paper numbers and its row group (the family); the token count comes from the
    cell's training record."""
    backbone = study.backbones[cell.backbone]
    summary = results_dir / "models" / cell.id / "train.json"
    tokens = json.loads(summary.read_text()).get("visual_tokens", "") if summary.exists() else ""
    labels = {
        "Pretrained": study.raw["objectives"][cell.objective]["display"],
        "Visual Encoder": backbone.display + ("(f)" if cell.connector == "mlp3" else ""),
        "Encoder Size": backbone.params,
    }
    if in1k_column:
        acc = in1k_accuracy(study, cell)
        labels["IN1K Acc"] = "" if acc is None else f"{acc:g}"
    labels["Image Size"] = f"{cell.geometry.width}x{cell.geometry.height}"
    labels["Vision Token #"] = str(tokens)
    return Row(cell.id, labels, paper=dict(cell.paper), group=backbone.family)


def staleness_against(results_dir: Path):
    """`collect`'s check: a result is current only if it evaluated the cell's current model."""
    from vlmswap.provenance import result_staleness

    summaries: dict[str, dict | None] = {}

    def check(cell_id: str, result: dict) -> str | None:
        if cell_id not in summaries:
            path = results_dir / "models" / cell_id / "train.json"
            summaries[cell_id] = json.loads(path.read_text()) if path.is_file() else None
        return result_staleness(result, summaries[cell_id])

    return check


def write_study_table(study: Study, table_id: str, results_dir: Path, out_csv: Path, out_md: Path,
                      log: Callable[[str], None] = print, out_tex: Path | None = None) -> None:
    if table_id not in study.tables:
        raise KeyError(f"{study.path}: no table {table_id!r} (tables: {', '.join(study.tables)})")
    spec = study.tables[table_id]
    cells = study.cells_of_table(table_id)
    scores = collect(results_dir, [c.id for c in cells], study.benchmarks, staleness_against(results_dir))
    rows = [row_for(study, c, results_dir, spec.in1k_column) for c in cells]
    table = build_table(rows, scores, spec.columns, study.columns)
    notes = [f"Study `{study.name}` ({study.path}); scores in percent; weighted columns average the study's "
             f"benchmarks by sample count ({', '.join(study.columns)})."]
    if spec.paper:
        notes.append(f"Reproduces {spec.paper} of the paper.")
    for name in study.benchmarks:  # the baselines of the benchmarks this table planned
        baseline = results_dir / "baselines" / f"{name}.json"
        if baseline.exists():
            b = json.loads(baseline.read_text())
            scores = ", ".join(f"{c} {v:.2f}" for c, v in b["columns"].items())
            notes.append(f"Trivial baseline on {name}: {scores} ({b['baseline']}).")
    write_table(table, out_csv, out_md, spec.title, notes, out_tex)
    log(f"table {table_id}: {len(cells)} rows -> {out_md}")


def write_study_correlation(study: Study, results_dir: Path, out_csv: Path, out_png: Path,
                            log: Callable[[str], None] = print) -> None:
    scores = collect(results_dir, study.cell_ids, study.benchmarks, staleness_against(results_dir))
    columns = study.columns
    matrix = correlation_matrix(scores, columns)
    n_runs = matrix.attrs["n_runs"]
    write_correlation(matrix, out_csv, out_png, f"Pearson r between benchmarks ({study.name} study)", n_runs)
    log(f"correlation over {n_runs} cells x {len(columns)} benchmarks -> {out_csv}")
