# Config -> paths. The study is validated by vlmswap.study (the JSON schema in
# workflow/schemas/experiments.schema.yaml plus cross-reference checks); the rules only wire paths.
import os
import re
import sys
from pathlib import Path

import yaml

from vlmswap.analysis.figures import figure_names
from vlmswap.provenance import canonical_json, eval_settings, model_spec
from vlmswap.sections import JobResources
from vlmswap.study import BENCHMARK_COLUMNS, LOC_COLUMNS, VQA_COLUMNS, ConfigError, load_study, read_yaml
from vlmswap.train.launch import job_environment, train_resources

CONFIG_FILE = str(workflow.configfiles[-1])
try:
    STUDY = load_study(CONFIG_FILE)
except ConfigError as error:
    sys.exit(f"vlmswap: config error: {error}")
if read_yaml(CONFIG_FILE) != config:
    sys.exit(
        f"vlmswap: the rules read the study from {CONFIG_FILE}; --config overrides do not reach them. "
        "Put the change in a copy of the config file and pass it with --configfile."
    )

RES = f"resources/{STUDY.name}"
OUT = f"results/{STUDY.name}"
LOGS = f"logs/{STUDY.name}"
IS_MINI = STUDY.mini is not None
# Every rule's shell calls `vlmswap` by name: the console script of the environment that runs
# Snakemake (its bin folder goes first on PATH), or of the rule's conda env under `--sdm conda`.
# The study config reaches the jobs through VLMSWAP_CONFIG. Neither the interpreter's path nor
# the GPU count is part of any rule's text or params, so moving the venv or changing the GPUs
# reruns nothing; `vlmswap train|evaluate --gpus N` starts torchrun / srun itself (train/launch.py).
job_environment(CONFIG_FILE)


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    cell=_alternatives(STUDY.cell_ids),
    benchmark=_alternatives(STUDY.benchmarks),
    table=_alternatives(STUDY.tables) if STUDY.tables else "$^",
    backbone=_alternatives(STUDY.backbones),
    objective=_alternatives(STUDY.objectives),
    dataset=_alternatives(config.get("diagnostics", {}).get("linear_probe", {}).get("datasets", [])) or "$^",


# ------------------------------------------------------------------------------------ paths


def world_flag():
    return f"{RES}/world/world.json"


def checkpoint_file(backbone, objective):
    return f"{RES}/checkpoints/{backbone}@{objective}.ckpt"


def cell_checkpoints(wildcards):
    cell = STUDY.cell(wildcards.cell)
    backbone = STUDY.backbones[cell.backbone]
    if backbone.members:
        return [checkpoint_file(m, o) for m in backbone.members for o in STUDY.backbones[m].checkpoints]
    return [checkpoint_file(cell.backbone, cell.objective)]


def model_dir(cell):
    return f"{OUT}/models/{cell}"


def eval_json(cell, benchmark):
    return f"{OUT}/evals/{cell}/{benchmark}.json"


def eval_group_json(cell, group):
    """What one evaluation job made: the sha256 of each of its results. Rules that read many results
    depend on these, one per job, rather than on every result file: the paper grid then plans
    with half the input files (benchmarks/dryrun.py), and a rerun evaluation still reruns them."""
    return f"{OUT}/evals/{cell}/{group}.group.json"


def eval_groups(cells, benchmarks):
    """The evaluation jobs' records behind `cells` x `benchmarks`."""
    wanted = set(benchmarks)
    return [eval_group_json(c, g) for c in cells for g, bs in EVAL_GROUPS.items() if wanted & set(bs)]


def data_folder(benchmark):
    """RefCOCO+ and RefCOCOg live in RefCOCO's REFER folder; every other benchmark in its own."""
    return {"refcoco+": "refcoco", "refcocog": "refcoco"}.get(benchmark, benchmark)


def benchmark_root(benchmark):
    """Where a benchmark's official files live: the mini world, or the study's data folder."""
    return f"{RES}/world/{data_folder(benchmark)}" if IS_MINI else f"{RES}/data/{data_folder(benchmark)}"


def instruct_paths():
    if IS_MINI:
        return f"{RES}/world/llava/llava_v1_5_mix665k.json", f"{RES}/world/llava"
    return f"{RES}/data/llava-v1.5-instruct/llava_v1_5_mix665k.json", f"{RES}/data/llava-v1.5-instruct"


def table_benchmarks(table):
    """The benchmarks whose results a table shows or averages: a VQA table needs no localization
    run; a localization or full table also shows the overall average, which needs every benchmark."""
    wanted = set(VQA_COLUMNS) if STUDY.tables[table].columns == "vqa" else set(VQA_COLUMNS + LOC_COLUMNS)
    return [b for b in STUDY.benchmarks if wanted & set(BENCHMARK_COLUMNS[b])]


def table_inputs(wildcards):
    return eval_groups(STUDY.tables[wildcards.table].cells, table_benchmarks(wildcards.table))


def table_baselines(wildcards):
    return [f"{OUT}/baselines/{b}.json" for b in table_benchmarks(wildcards.table)]


def table_spec(wildcards):
    """What a table's text depends on besides its inputs: its config entry and each row's labels."""
    table = STUDY.tables[wildcards.table]
    rows = []
    for cell_id in table.cells:
        cell = STUDY.cell(cell_id)
        backbone = STUDY.backbones[cell.backbone]
        rows.append([cell_id, STUDY.objectives[cell.objective].display, backbone.display, backbone.params,
                     backbone.family, dict(cell.paper), backbone.checkpoints.get(cell.objective, {}).get("in1k_acc")])
    # the stage-ablation table is made from diagnostics.stage_ablation (vlmswap.study), not `tables`
    entry = config["tables"].get(wildcards.table) or config["diagnostics"]["stage_ablation"]
    return canonical_json({"table": entry, "rows": rows, "columns": STUDY.columns})


def cell_spec(wildcards):
    """Everything the config says that determines a trained cell (vlmswap.provenance.model_spec)."""
    return canonical_json(model_spec(STUDY, STUDY.cell(wildcards.cell)))


def pretrain_spec(wildcards):
    """What a mini backbone's pretraining depends on: the member, its tap, the world's image size."""
    backbone = STUDY.backbones[wildcards.backbone]
    taps = sorted({c.tap for c in STUDY.cells if c.backbone == wildcards.backbone and c.objective == wildcards.objective})
    mini = STUDY.mini.written if STUDY.mini else {}  # as written: a default made explicit would rerun it
    return canonical_json({
        "family": backbone.family, "arch": backbone.arch, "taps": taps,
        "source": backbone.checkpoints[wildcards.objective],
        "objective": STUDY.objectives[wildcards.objective].as_dict(),
        "image_size": mini.get("image_size"), "pretrain_epochs": mini.get("pretrain_epochs"),
        "seed": STUDY.seed,
    })


def eval_resources():
    """Snakemake resources of an evaluation job (mapped by the SLURM plugin to sbatch flags);
    `eval_gpus` is ours: the shell passes it to `vlmswap evaluate --gpus`."""
    return STUDY.eval_resources.slurm(runtime_min=60, mem_mb=8000, gpus_key="eval_gpus")


# column group -> the study's benchmarks that fill it: one evaluation job per cell and group
EVAL_GROUPS = {
    group: [b for b in STUDY.benchmarks if set(BENCHMARK_COLUMNS[b]) <= set(columns)]
    for group, columns in (("vqa", VQA_COLUMNS), ("loc", LOC_COLUMNS))
}
EVAL_GROUPS = {g: bs for g, bs in EVAL_GROUPS.items() if bs}


def index_sources(benchmark):
    """The annotation files the benchmark's index is read from, under its root."""
    from vlmswap.evaluate.registry import get_benchmark

    return [f"{benchmark_root(benchmark)}/{name}" for name in get_benchmark(benchmark).annotation_files]


def _mini_index_sources(benchmark):
    # the mini world writes one layout: where a benchmark accepts several, the first one listed
    from vlmswap.evaluate.registry import get_benchmark

    names = get_benchmark(benchmark).annotation_files
    return [f"{benchmark_root(benchmark)}/{name}" for name in (names[:1] if benchmark == "vizwiz" else names)]


def _built_input(source, built):
    return [built] if ("mini" in source) else []


def _index_inputs(wildcards):
    if IS_MINI:
        return [world_flag()] + _mini_index_sources(wildcards.benchmark)
    # RefCOCO+ and RefCOCOg read the files fetched for RefCOCO (one REFER folder)
    inputs = [f"{RES}/data/{data_folder(wildcards.benchmark)}.fetched.json"]
    fetched = STUDY.benchmark_inputs.get(data_folder(wildcards.benchmark))
    if not (fetched and fetched.files):
        # files placed by hand exist before any job: declared as they are (a fetched file is not a
        # rule's declared output, so it is tracked through the fetch record instead)
        inputs += [f for f in index_sources(wildcards.benchmark) if os.path.exists(f)]
    return inputs


def all_evals():
    return [eval_json(c, b) for c in STUDY.cell_ids for b in STUDY.benchmarks]


def all_eval_groups():
    return eval_groups(STUDY.cell_ids, STUDY.benchmarks)


def all_targets():
    # every result is a target itself, so that a deleted one is rebuilt even though the tables
    # that were made from it are newer than everything else (Snakemake reruns a job for a missing
    # output only when that output is requested: the tables ask for the jobs' .group.json)
    targets = all_evals() + [f"{OUT}/tables/{t}.md" for t in STUDY.tables]
    if len(STUDY.cells) >= 3:  # a Pearson r over fewer cells says nothing (analysis/correlation.py)
        targets += [f"{OUT}/correlation.csv", f"{OUT}/correlation.png"]
    return targets + diagnostics_targets()


# ------------------------------------------------------------------------------- diagnostics


DIAGNOSTICS = config.get("diagnostics", {})


def diagnostic_cells(name):
    """The cells a diagnostic (`profile`, `collapse`) runs on; none when the config has no such block."""
    return list(DIAGNOSTICS.get(name, {}).get("cells", []))


def diagnostic_resources(name):
    """Snakemake resources of one diagnostic job (as eval_resources; `diag_gpus` is ours, for the message)."""
    spec = JobResources.parse(DIAGNOSTICS.get(name, {}).get("resources"))
    return spec.slurm(runtime_min=30, mem_mb=4000, gpus_key="diag_gpus")


def profile_spec(wildcards):
    """What one cell's profile depends on: the sweep settings and the cell's model spec."""
    from vlmswap.diagnostics.settings import profile_settings

    return canonical_json({"profile": profile_settings(STUDY), "model": model_spec(STUDY, STUDY.cell(wildcards.cell))})


def collapse_spec():
    from vlmswap.diagnostics.settings import collapse_settings

    return canonical_json(collapse_settings(STUDY)) if "collapse" in DIAGNOSTICS else ""


def collapse_index():
    benchmark = DIAGNOSTICS.get("collapse", {}).get("benchmark", "refcoco")
    return f"{RES}/prepared/{benchmark}.json"


def probe_datasets():
    return list(DIAGNOSTICS.get("linear_probe", {}).get("datasets", []))


def probe_root(dataset):
    """Where a probe dataset lives: the mini world's classification set, or a fetched torchvision folder."""
    return f"{RES}/world/classify" if dataset == "mini-classify" else f"{RES}/probe-data/{dataset}"


def probe_data_inputs(wildcards):
    return [world_flag() if d == "mini-classify" else f"{RES}/probe-data/{d}.fetched.json" for d in probe_datasets()]


def probe_spec():
    from vlmswap.diagnostics.probes import C_GRID, VAL_SHARE, probe_settings

    if "linear_probe" not in DIAGNOSTICS:
        return ""
    return canonical_json({**probe_settings(STUDY), "C_grid": list(C_GRID), "val_share": VAL_SHARE})


def figure2_benchmark():
    return DIAGNOSTICS.get("figure2", {}).get("benchmark", "refcoco")


def figure2_spec():
    from vlmswap.diagnostics.settings import figure2_settings

    return canonical_json(figure2_settings(STUDY)) if "figure2" in DIAGNOSTICS else ""


def diagnostics_targets():
    targets = []
    if diagnostic_cells("figure2"):
        targets.append(f"{OUT}/diagnostics/figure2.png")
    if diagnostic_cells("linear_probe"):
        targets += [f"{OUT}/diagnostics/probes.csv", f"{OUT}/diagnostics/probes.md", f"{OUT}/diagnostics/probes.png"]
    if diagnostic_cells("profile"):
        targets += [f"{OUT}/diagnostics/profile.csv", f"{OUT}/diagnostics/profile.png"]
    if diagnostic_cells("collapse"):
        targets += [f"{OUT}/diagnostics/collapse.csv", f"{OUT}/diagnostics/collapse.png",
                    f"{OUT}/diagnostics/collapse.md"]
    return targets


# ------------------------------------------------------------------- findings, figures, report
# (rules in report.smk)
def analysis_spec():
    """What findings and figures depend on besides the results: each cell's labels, encoder size,
    IN1K accuracy and paper numbers, the table groups, and the findings settings."""
    cells = []
    for cell in STUDY.cells:
        backbone = STUDY.backbones[cell.backbone]
        cells.append([cell.id, backbone.family, backbone.display, backbone.params,
                      STUDY.objectives[cell.objective].as_dict(), dict(cell.paper),
                      backbone.checkpoints.get(cell.objective, {}).get("in1k_acc")])
    tables = {t: [spec.title, list(spec.cells)] for t, spec in STUDY.tables.items()}
    return canonical_json({"cells": cells, "tables": tables, "findings": config.get("findings", {}),
                           "columns": STUDY.columns})


def figure_files(kind):
    names = figure_names(STUDY)
    chosen = {
        "study": [n for n in names if Path(n).parent == Path(".") and not n.startswith("correlation-")],
        "correlation": [n for n in names if n.startswith("correlation-")],
        "tables": [n for n in names if n.startswith("tables/")],
    }[kind]
    return [f"{OUT}/figures/{n}" for n in chosen]


def report_targets():
    return ([f"{OUT}/findings.md", f"{OUT}/findings.json", f"{OUT}/findings.html"]
            + figure_files("study") + figure_files("correlation") + figure_files("tables")
            + [f"{OUT}/provenance/{c}.html" for c in STUDY.cell_ids])
