# Config -> paths. The study is validated by vlmswap.study (the JSON schema in
# workflow/schemas/experiments.schema.yaml plus cross-reference checks); the rules only wire paths.
import re
import sys
from pathlib import Path

import yaml

from vlmswap.analysis.figures import figure_names
from vlmswap.provenance import canonical_json, eval_settings, model_spec
from vlmswap.study import BENCHMARK_COLUMNS, LOC_COLUMNS, VQA_COLUMNS, ConfigError, load_study
from vlmswap.train.launch import launcher, train_resources

CONFIG_FILE = str(workflow.configfiles[-1])
try:
    STUDY = load_study(CONFIG_FILE)
except ConfigError as error:
    sys.exit(f"vlmswap: config error: {error}")
with open(CONFIG_FILE) as _f:
    if yaml.safe_load(_f) != config:
        sys.exit(
            f"vlmswap: the rules read the study from {CONFIG_FILE}; --config overrides do not reach them. "
            "Put the change in a copy of the config file and pass it with --configfile."
        )

RES = f"resources/{STUDY.name}"
OUT = f"results/{STUDY.name}"
LOGS = f"logs/{STUDY.name}"
IS_MINI = "mini" in config
VLMSWAP = f"{sys.executable} -m vlmswap.cli"  # the interpreter running Snakemake: no activation needed
CFG = CONFIG_FILE
# How jobs start (interpreter, torchrun, GPU count) is not what they compute: these are globals of
# the shell text, never `params`, so moving the venv or changing the GPU count reruns nothing.
TRAIN_LAUNCHER = launcher(config.get("train_resources", {}))


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    cell=_alternatives(STUDY.cell_ids),
    benchmark=_alternatives(STUDY.benchmarks),
    table=_alternatives(STUDY.tables) if STUDY.tables else "$^",
    backbone=_alternatives(STUDY.backbones),
    objective=_alternatives(config["objectives"]),


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
    return [eval_json(c, b) for c in STUDY.tables[wildcards.table].cells for b in table_benchmarks(wildcards.table)]


def table_baselines(wildcards):
    return [f"{OUT}/baselines/{b}.json" for b in table_benchmarks(wildcards.table)]


def table_spec(wildcards):
    """What a table's text depends on besides its inputs: its config entry and each row's labels."""
    table = STUDY.tables[wildcards.table]
    rows = []
    for cell_id in table.cells:
        cell = STUDY.cell(cell_id)
        backbone = STUDY.backbones[cell.backbone]
        rows.append([cell_id, config["objectives"][cell.objective]["display"], backbone.display, backbone.params,
                     backbone.family, dict(cell.paper), backbone.checkpoints.get(cell.objective, {}).get("in1k_acc")])
    return canonical_json({"table": config["tables"][wildcards.table], "rows": rows, "columns": STUDY.columns})


def cell_spec(wildcards):
    """Everything the config says that determines a trained cell (vlmswap.provenance.model_spec)."""
    return canonical_json(model_spec(STUDY, STUDY.cell(wildcards.cell)))


def pretrain_spec(wildcards):
    """What a mini backbone's pretraining depends on: the member, its tap, the world's image size."""
    backbone = STUDY.backbones[wildcards.backbone]
    taps = sorted({c.tap for c in STUDY.cells if c.backbone == wildcards.backbone and c.objective == wildcards.objective})
    mini = config.get("mini", {})
    return canonical_json({
        "family": backbone.family, "arch": backbone.arch, "taps": taps,
        "source": backbone.checkpoints[wildcards.objective],
        "objective": config["objectives"][wildcards.objective],
        "image_size": mini.get("image_size"), "pretrain_epochs": mini.get("pretrain_epochs"),
        "seed": config.get("seed", 0),
    })


def all_evals():
    return [eval_json(c, b) for c in STUDY.cell_ids for b in STUDY.benchmarks]


def all_targets():
    # every result is a target itself, so that a deleted one is rebuilt even though the tables
    # that were made from it are newer than everything else
    targets = all_evals() + [f"{OUT}/tables/{t}.md" for t in STUDY.tables]
    targets += [f"{OUT}/correlation.csv", f"{OUT}/correlation.png"]
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
                      config["objectives"][cell.objective], dict(cell.paper),
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
