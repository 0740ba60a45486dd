"""Study -> tables, correlation and report pages: labels each cell as the paper does, calls
tables/correlation, and renders the HTML pages of the Snakemake report (tables, findings, and each
cell's provenance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from vlmswap.analysis.correlation import TooFewRuns, correlation_matrix, write_correlation
from vlmswap.analysis.table_text import write_table
from vlmswap.analysis.tables import ResultFileError, Row, build_table, collect
from vlmswap.atomic import write_text
from vlmswap.study import Cell, Study, UnknownIdError


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
        "Pretrained": study.objectives[cell.objective].display,
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
            try:
                summaries[cell_id] = json.loads(path.read_text()) if path.is_file() else None
            except ValueError as error:  # cut short or not UTF-8
                raise ResultFileError(f"{path}: not a training record ({error}); retrain the cell (delete "
                                      f"{path.parent} and rerun snakemake)") from None
        return result_staleness(result, summaries[cell_id])

    return check


def study_table(study: Study, table_id: str, results_dir: Path):
    """(the built table, its title, its notes) for one table of the study: what `write_study_table`
    writes and the table figure plots."""
    if table_id not in study.tables:
        raise UnknownIdError(study, "tables", "table", table_id, study.tables)
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
            scores_text = ", ".join(f"{c} {v:.2f}" for c, v in b["columns"].items())
            notes.append(f"Trivial baseline on {name}: {scores_text} ({b['baseline']}).")
    return table, spec.title, notes


def write_study_table(study: Study, table_id: str, results_dir: Path, out_csv: Path, out_md: Path,
                      log: Callable[[str], None] = print, out_tex: Path | None = None) -> None:
    table, title, notes = study_table(study, table_id, results_dir)
    write_table(table, out_csv, out_md, title, notes, out_tex)
    log(f"table {table_id}: {len(table)} rows -> {out_md}")


def write_study_correlation(study: Study, results_dir: Path, out_csv: Path, out_png: Path,
                            log: Callable[[str], None] = print) -> None:
    scores = collect(results_dir, study.cell_ids, study.benchmarks, staleness_against(results_dir))
    columns = study.columns
    try:
        matrix = correlation_matrix(scores, columns)
    except TooFewRuns as error:
        raise TooFewRuns(f"{results_dir}: {error}; finish more cells' evaluations first") from None
    n_runs = matrix.attrs["n_runs"]
    write_correlation(matrix, out_csv, out_png, f"Pearson r between benchmarks ({study.name} study)", n_runs)
    log(f"correlation over {n_runs} cells x {len(columns)} benchmarks -> {out_csv}")


# ----------------------------------------------------------------------------------------------
# Pages for the Snakemake HTML report (`snakemake --report report.html`): the report shows HTML
# results inline and offers anything else as a download, so tables, findings and provenance are
# rendered from the Markdown the study already writes (one source of text, two formats).

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 13px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f0f0f0; }
td { text-align: right; }
td:first-child, td:nth-child(2), td:nth-child(3) { text-align: left; }
code, pre { background: #f6f6f6; font-size: 12px; }
pre { padding: 6px; overflow-x: auto; }
"""


def markdown_page(markdown: str, title: str) -> str:
    """A standalone HTML page (tables enabled) from the Markdown the study writes."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n{body}</body></html>\n")


def write_markdown_page(markdown_file: Path, out_html: Path, title: str) -> None:
    write_text(out_html, markdown_page(Path(markdown_file).read_text(encoding="utf-8"), title))


def _json_block(value) -> str:
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n```"


def cell_provenance(study: Study, cell: Cell, results_dir: Path, resources_dir: Path) -> str:
    """One cell's provenance as Markdown: its config entry, checkpoint sources with sha256, the LLM
    snapshot, the code version, the training summary and the state of each result."""
    backbone = study.backbones[cell.backbone]
    members = list(backbone.members) or [cell.backbone]
    summary_path = results_dir / "models" / cell.id / "train.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    record = (summary or {}).get("provenance", {})
    inputs = record.get("inputs", {})
    parts = [f"# Provenance of `{cell.id}`", "",
             f"Study `{study.name}` ({study.path}); backbone family `{backbone.family}`, "
             f"{backbone.display} ({backbone.params or 'size not given'})."]

    # the recipe the model was trained with (train.json), the config's until it is trained
    parts += ["", "## Config entry", "", _json_block({
        "cell": {"backbone": cell.backbone, "objective": cell.objective, "geometry": str(cell.geometry),
                 "tap": cell.tap, "connector": cell.connector, **({"recipe": dict(cell.recipe)} if cell.recipe else {})},
        "recipe": (summary or {}).get("recipe", study.recipe(cell).as_dict()),
        "backbone": {"family": backbone.family, "arch": backbone.arch, "display": backbone.display,
                     "params": backbone.params},
    })]

    parts += ["", "## Checkpoints", "", "| backbone | objective | source | origin | sha256 |", "| --- | --- | --- | --- | --- |"]
    shas = inputs.get("backbone_sha256", [])
    i = 0
    for member in members:
        for objective, source in study.backbones[member].checkpoints.items():
            if not backbone.members and objective != cell.objective:
                continue
            fetched = resources_dir / "checkpoints" / f"{member}@{objective}.ckpt.source.json"
            origin = json.loads(fetched.read_text()).get("origin", "") if fetched.is_file() else "not fetched"
            sha = shas[i] if i < len(shas) else (json.loads(fetched.read_text()).get("sha256", "")
                                                 if fetched.is_file() else "")
            i += 1
            shown = ", ".join(f"{k}: {v}" for k, v in source.items() if k != "in1k_acc")
            parts.append(f"| {member} | {objective} | {shown} | {origin} | `{sha}` |")

    llm_record = resources_dir / "llm.source.json"
    llm_origin = json.loads(llm_record.read_text()).get("origin", "") if llm_record.is_file() else "not recorded"
    parts += ["", "## LLM and instruction set", "",
              f"- LLM `{study.llm.id}` from {json.dumps(study.llm.source)} (origin {llm_origin}); "
              f"snapshot sha256 `{inputs.get('llm_sha256', 'not trained yet')}`",
              f"- instruction set `{study.instruct.id}`; sha256 `{inputs.get('instruct_sha256', 'not trained yet')}`"]

    parts += ["", "## Code", "", f"- code version (digest of the package sources): `{record.get('code', 'not trained yet')}`",
              f"- git commit at training: `{(summary or {}).get('git', 'not trained yet')}`"]

    parts += ["", "## Training"]
    if summary is None:
        parts += ["", "Not trained yet (no train.json)."]
    else:
        keys = ["steps", "warmup_steps", "resumed_from_step", "examples", "visual_tokens", "world_size", "device",
                "loss_first", "loss_final", "loss_min", "loss_last10_mean", "wall_seconds", "tokens_per_second",
                "model_sha256"]
        parts += ["", "| field | value |", "| --- | --- |"]
        parts += [f"| {k} | {summary.get(k, '')} |" for k in keys if k in summary]
        parts += ["", f"model fingerprint `{record.get('fingerprint', '')}`"]

    parts += ["", "## Results", "", "| benchmark | scores | samples | state |", "| --- | --- | --- | --- |"]
    check = staleness_against(results_dir)
    for benchmark in study.benchmarks:
        path = results_dir / "evals" / cell.id / f"{benchmark}.json"
        if not path.is_file():
            parts.append(f"| {benchmark} | – | – | missing |")
            continue
        result = json.loads(path.read_text())
        why = check(cell.id, result)
        scores = ", ".join(f"{c} {v:.2f}" for c, v in result.get("columns", {}).items())
        parts.append(f"| {benchmark} | {scores} | {result.get('n_samples', '')} | {'stale: ' + why if why else 'current'} |")
    return "\n".join(parts) + "\n"


def write_cell_provenance(study: Study, cell_id: str, results_dir: Path, resources_dir: Path, out_html: Path) -> None:
    text = cell_provenance(study, study.cell(cell_id), results_dir, resources_dir)
    write_text(out_html, markdown_page(text, f"Provenance of {cell_id}"))
