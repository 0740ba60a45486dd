"""The `vlmswap` command: one verb per workflow stage, usable by hand without Snakemake.

    vlmswap cells --config config/experiments.yaml        # list the grid
    vlmswap validate --config config/mini.yaml
    vlmswap status --config config/mini.yaml [--json]     # done/running/failed/missing/stale per cell and stage
    vlmswap preflight --config config/experiments.yaml    # hand-placed inputs, disk, credentials, GPU-hours
    vlmswap mini-world | pretrain-mini | build-mini-llm   # the mini world's own inputs
    vlmswap fetch-backbone | fetch-llm | fetch-instruct | prepare-instruct | fetch-benchmark | prepare-benchmark
    vlmswap train --config C --cell ID --checkpoint W ... --state-dir D   # W: backbone weights; D: resume state
    vlmswap evaluate --config C --cell ID --index I1 I2 --out R1 R2 ...  # one model load, several benchmarks
    vlmswap baselines | table | correlation | findings | figures | provenance
    vlmswap profile | profile-figure | probe | probe-figure | fetch-probe-dataset | collapse | collapse-figure
    vlmswap figure2 | figure2-figure
                                                          # the diagnostics (README, Diagnostics)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vlmswap.evaluate.records import PredictionsFileError
from vlmswap.study import ConfigError, UnknownIdError, load_study
from vlmswap.train.launch import TimeLimitReached as _TimeLimitReached


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _study(args):
    return load_study(args.config)


def _benchmark_inputs(study, name: str):
    if name not in study.benchmark_inputs:
        raise UnknownIdError(study, "benchmarks", "benchmark", name, study.benchmarks)
    return study.benchmark_inputs[name]


# ---------------------------------------------------------------------------------------- verbs


def cmd_validate(args) -> None:
    study = _study(args)
    for line in _check_cells(study):
        print(line)
    from vlmswap.diagnostics.stages import check_stage_tokens

    for line in check_stage_tokens(study):
        print(line)
    print(f"{args.config}: study {study.name!r} is valid: {len(study.cells)} cells, {len(study.backbones)} backbones, "
          f"{len(study.benchmarks)} benchmarks, {len(study.tables)} tables")


def _check_cells(study) -> list[str]:
    """Every cell's backbone built as its jobs will build it, at its tap and geometry, on the meta
    device (no weights; no download for timm names and config mappings). An `arch:` its family
    cannot build, a layer the model lacks (the taps of timm and hf index the model's own layers) or
    a geometry that leaves no visual token fails here, not in a pretraining or training job."""
    from vlmswap.image import Geometry
    from vlmswap.vision.base import ArchError
    from vlmswap.vlm import backbone_arch

    _check_timm_tags(study)
    written = len(study.raw["cells"])  # the cells after these are made by diagnostics.stage_ablation
    counts: dict[tuple, int] = {}  # cells that differ by connector only build the same backbone
    lines = []
    for i, cell in enumerate(study.cells):
        key = f"cells[{i}]" if i < written else "diagnostics.stage_ablation"
        family, arch = study.backbones[cell.backbone].family, backbone_arch(study, cell)
        build = (family, repr(arch), cell.tap, cell.geometry)
        try:
            if build not in counts:
                counts[build] = _visual_tokens(family, arch, cell.tap, cell.geometry)
        except ArchError as error:  # the backbone's arch or its weight tag is at fault, not the cell
            spec = study.backbones[cell.backbone]
            tagged = error.field == "weights" and "timm" in spec.checkpoints.get(cell.objective, {})
            field = f"checkpoints.{cell.objective}.timm" if tagged else "arch"
            raise ConfigError(study.path, f"backbones.{_failing_arch(study, cell)}.{field}",
                              f"{error} (building cell {cell.id})") from None
        except ValueError as error:  # a tap the model lacks
            raise ConfigError(study.path, key, f"{cell.id}: {error}") from None
        tokens = counts[build]
        if tokens < 1:
            sides = [s for s in (16, 32, 64, 128, 256, 512, 1024) if s > min(cell.geometry.width, cell.geometry.height)]
            smallest = next((s for s in sides if _tokens_or_zero(family, arch, cell.tap, Geometry(s, s))), None)
            hint = f" (the smallest square one that gives tokens: {smallest})" if smallest else ""
            raise ConfigError(study.path, f"{key}.geometry",
                              f"{cell.id}: backbone {cell.backbone!r} gives 0 visual tokens at geometry {cell.geometry} "
                              f"(tap {cell.tap!r}): the image is smaller than one patch or stride of the tapped layer; "
                              f"use a larger geometry{hint}")
        lines.append(f"{cell.id}: {tokens} visual tokens")
    return lines


def _check_timm_tags(study) -> None:
    """Every `timm:` weight tag of the study's backbones, whatever their family (vit and maxvit load
    timm tags too), is one timm knows; the build would otherwise stop on timm's RuntimeError."""
    from vlmswap.vision.base import ArchError
    from vlmswap.vision.timm_encoder import check_tag

    for spec in study.backbones.values():
        for objective, source in spec.checkpoints.items():
            if "timm" in source:
                model, _, tag = str(source["timm"]).partition(".")
                if not tag:
                    continue  # timm's default tag for the model; the build checks the model's name
                try:
                    check_tag(model, tag)
                except ArchError as error:
                    raise ConfigError(study.path, f"backbones.{spec.id}.checkpoints.{objective}.timm", str(error)) from None


def _visual_tokens(family: str, arch, tap: str, geometry) -> int:
    """The visual-token count of a backbone at `tap` and `geometry`, built on the meta device."""
    import torch

    from vlmswap.vision.registry import FAMILIES, build_backbone

    if FAMILIES[family].tap_pattern is not None:  # the generic families survey the model's own layers
        return FAMILIES[family].check(arch, tap, geometry)
    with torch.device("meta"):
        built = build_backbone(family, arch, tap, geometry)
    return built.num_tokens(geometry.width, geometry.height)


def _tokens_or_zero(family: str, arch, tap: str, geometry) -> int:
    try:
        return _visual_tokens(family, arch, tap, geometry)
    except ValueError:
        return 0


def _failing_arch(study, cell) -> str:
    """The backbone whose `arch:` its family cannot build: the cell's own, or for a fused backbone the
    first member whose tower fails alone."""
    from vlmswap.vision.base import ArchError
    from vlmswap.vlm import backbone_arch

    members = study.backbones[cell.backbone].members
    for member, tower in zip(members, backbone_arch(study, cell) if members else []):
        try:
            _visual_tokens(tower["family"], tower["arch"], tower.get("tap", cell.tap), cell.geometry)
        except ArchError:
            return member
        except ValueError:
            continue
    return cell.backbone


def cmd_cells(args) -> None:
    for cell_id in _study(args).cell_ids:
        print(cell_id)


def cmd_status(args) -> None:
    """Per cell and stage (checkpoint, train, each evaluation) and for tables, findings and figures:
    done / running / failed / missing / stale, the last lines of each failed job's log, the totals."""
    from vlmswap.status import grid_status, to_json, to_text

    status = grid_status(_study(args), Path(args.workdir), Path(args.results) if args.results else None)
    print(to_json(status) if args.json else to_text(status), end="")


def cmd_preflight(args) -> None:
    """What would fail later (hand-placed inputs, disk, credentials), and the grid's cost; exits 1 on a problem."""
    from vlmswap.atomic import write_json
    from vlmswap.preflight import format_report, run_preflight

    study = _study(args)
    report = run_preflight(study, Path(args.resources or f"resources/{study.name}"))
    print(format_report(report))
    if args.out and not report.problems:
        write_json(Path(args.out), report.as_dict())
    if report.problems:
        raise SystemExit(1)


def cmd_mini_world(args) -> None:
    from vlmswap.data.mini_world import generate

    study = _study(args)
    if study.mini is None:
        raise ConfigError(args.config, "mini", "this study has no mini world; use config/mini.yaml")
    generate(Path(args.out), **study.mini.generator_options(), log=log)


def cmd_pretrain_mini(args) -> None:
    """Pretrain a tiny backbone on the mini world for its objective; saved in the official layout."""
    from vlmswap.vision.pretrain import pretrain_mini

    summary = pretrain_mini(_study(args), args.backbone, args.objective, Path(args.world), Path(args.out), log=log)
    log(f"pretrained: {summary}")


def cmd_build_mini_llm(args) -> None:
    from vlmswap.language import build_mini_llm

    study = _study(args)
    source = study.llm.source
    if "mini" not in source:
        raise ConfigError(args.config, "llm.source", "build-mini-llm needs a `mini:` source")
    summary = build_mini_llm(Path(args.world) / "text_corpus.txt", Path(args.out), source["mini"], seed=study.seed)
    log(f"mini LLM: {summary}")


def _source_with_input(source: dict, local_input: str | None) -> dict:
    """Workflow-built sources (`mini:`) arrive as a local file produced upstream."""
    if "mini" in source or "members" in source:
        if not local_input:
            raise SystemExit("this source is built by the workflow: pass --input with the built file")
        return {"path": local_input}
    return source


def cmd_fetch_backbone(args) -> None:
    from vlmswap.hub import fetch

    study = _study(args)
    source = _source_with_input(dict(study.checkpoint_source(args.backbone, args.objective)), args.input)
    source.pop("in1k_acc", None)
    record = fetch(source, Path(args.out), mirror=study.mirror, log=log)
    log(f"fetched {args.backbone}@{args.objective}: {record.bytes / 2**20:.1f} MiB sha256 {record.sha256[:12]} "
        f"from {record.origin}")


def cmd_fetch_llm(args) -> None:
    from vlmswap.hub import fetch

    study = _study(args)
    source = _source_with_input(dict(study.llm.source), args.input)
    record = fetch(source, Path(args.out), mirror=study.mirror, log=log)
    log(f"fetched LLM {study.llm.id} from {record.origin}")


def cmd_fetch_instruct(args) -> None:
    from vlmswap.dataset_files import fetch_files
    from vlmswap.hub import fetch

    study = _study(args)

    record = fetch(study.instruct.source, Path(args.out), mirror=study.mirror, log=log)
    log(f"fetched {study.instruct.id} from {record.origin}")
    files = list(study.instruct.files)
    fetch_files(files, Path(args.out).parent, mirror=study.mirror, log=log)
    log(f"{len(files)} image archives unpacked beside it")


def cmd_prepare_instruct(args) -> None:
    import os

    from vlmswap.atomic import write_json
    from vlmswap.data.instruct import InstructError, check_instruct

    json_path, image_root, out = Path(args.json), Path(args.image_root), Path(args.out)
    log(f"checking {json_path} and the images under {image_root}")
    check = check_instruct(json_path, image_root, log=log)
    here = os.path.abspath(out.parent)  # paths relative to the report, so a copied study is self-consistent
    report = {"json": Path(os.path.relpath(os.path.abspath(json_path), here)).as_posix(),
              "image_root": Path(os.path.relpath(os.path.abspath(image_root), here)).as_posix(),
              "n_records": check.n_records, "n_multimodal": check.n_multimodal, "missing": check.missing,
              "unreadable": check.unreadable, "malformed": check.malformed}
    problems = check.missing + check.unreadable + check.malformed
    if problems:
        bad = out.with_suffix(".problems.json")
        write_json(bad, report)
        for kind in ("missing", "unreadable", "malformed"):
            for item in getattr(check, kind)[:10]:
                log(f"  {kind}: {item}")
        raise InstructError(f"{json_path}: {len(problems)} problems in the instruction set, first {problems[0]} "
                            f"(all in {bad}); fix them before training")
    write_json(out, report)
    log(f"instruction set OK: {check.n_records} records, {check.n_multimodal} with images")


def cmd_fetch_benchmark(args) -> None:
    from vlmswap.atomic import write_json
    from vlmswap.dataset_files import fetch_files

    study = _study(args)
    files = list(_benchmark_inputs(study, args.benchmark).files)
    if not files:  # no public direct download (e.g. OCID-Ref on Google Drive): placed by hand
        dest = Path(args.dest)
        if not dest.is_dir() or not any(dest.iterdir()):
            raise ConfigError(args.config, f"benchmarks.{args.benchmark}.files",
                              f"no download listed and {dest} is empty; put the official files there "
                              "(see the benchmark module's docstring for the layout) or list them under `files:`")
        write_json(Path(args.out), {"benchmark": args.benchmark, "dest": args.dest, "files": "placed by hand"})
        log(f"{args.benchmark}: using the files placed in {dest}")
        return
    records = fetch_files(files, Path(args.dest), mirror=study.mirror, log=log)
    write_json(Path(args.out), {"benchmark": args.benchmark, "dest": args.dest, "files": records})
    log(f"{args.benchmark}: {len(records)} official files in {args.dest}")


def cmd_prepare_benchmark(args) -> None:
    from vlmswap.evaluate.runner import prepare

    study = _study(args)
    prepare(args.benchmark, Path(args.root), _benchmark_inputs(study, args.benchmark).subset, Path(args.out), log=log)


def cmd_train(args) -> None:
    from vlmswap.train.launch import TimeLimit
    from vlmswap.train.loop import TrainPaths, train_cell

    study = _study(args)
    cell = study.cell(args.cell)
    paths = TrainPaths([Path(p) for p in args.checkpoint], Path(args.llm), Path(args.instruct_json), Path(args.image_root),
                       Path(args.out), Path(args.state_dir))
    train_cell(study, cell, paths, log=log, time_limit=TimeLimit.from_env(os.environ.get("VLMSWAP_TIME_LIMIT")))


def cmd_evaluate(args) -> None:
    """Evaluate one cell on several benchmarks with one model load (one job per cell and column
    group on the cluster); each benchmark keeps its own predictions, resume and result file."""
    from vlmswap.evaluate.runner import evaluate_cell
    from vlmswap.train.launch import evaluation_env
    from vlmswap.vlm import load_trained

    study = _study(args)
    cell = study.cell(args.cell)
    if not len(args.index) == len(args.out):
        raise SystemExit(f"evaluate: {len(args.index)} --index files but {len(args.out)} --out files; "
                         "give one result path per prepared index, in the same order")
    rank, world, device, dtype = evaluation_env()  # one process per GPU under torchrun: each a shard
    model_dir = Path(args.model)
    vlm = load_trained(study, cell, [Path(p) for p in args.checkpoint], Path(args.llm), model_dir, device, dtype)
    records = _predictions_records(study, model_dir, [Path(index) for index in args.index])
    for n, (index, out, record) in enumerate(zip(args.index, args.out, records), start=1):
        log(f"[{n}/{len(records)}] {cell.id} on {Path(index).stem}")
        settings = record["eval"]
        evaluate_cell(cell.id, vlm, cell.geometry, Path(index), Path(out), record,
                      batch_size=int(settings["batch_size"]), max_new_tokens=int(settings["max_new_tokens"]),
                      log=log, rank=rank, world=world)
    if args.group_record and rank == 0:
        from vlmswap.atomic import write_json
        from vlmswap.provenance import file_sha256

        # the workflow's aggregating rules depend on this one file per job instead of every result
        write_json(Path(args.group_record), {"cell": cell.id, "results": {
            Path(out).stem: file_sha256(Path(out)) for out in args.out}})


def _predictions_records(study, model_dir: Path, indexes: list[Path]) -> list[dict]:
    """What each benchmark's predictions will be made from: the model's training record, the
    weights file as it is now (hashed once per job), the evaluation settings and the prepared index."""
    from vlmswap.provenance import eval_settings, file_sha256, predictions_record

    summary_path = model_dir / "train.json"
    summary = json.loads(summary_path.read_text())
    if "provenance" not in summary:
        raise SystemExit(f"{summary_path}: no provenance (trained by an older version); retrain the cell "
                         f"(delete {model_dir} and rerun snakemake)")
    weights = file_sha256(model_dir / "model.safetensors")
    if weights != summary.get("model_sha256"):
        log(f"warning: {model_dir / 'model.safetensors'} is not the file {summary_path} records (sha256 "
            f"{weights[:12]} vs {str(summary.get('model_sha256'))[:12]}); the result will be scored but "
            "marked stale in tables")
    return [predictions_record(summary["provenance"], weights, eval_settings(study), index) for index in indexes]


def cmd_baselines(args) -> None:
    from vlmswap.atomic import write_json
    from vlmswap.evaluate.baselines import score_baselines

    result = score_baselines({args.benchmark: Path(args.index)})[args.benchmark]
    write_json(Path(args.out), result)
    log(f"baseline {args.benchmark}: " + ", ".join(f"{k} {v:.2f}" for k, v in result["columns"].items())
        + f" ({result['baseline']})")


def cmd_table(args) -> None:
    from vlmswap.analysis.report import write_study_table

    from vlmswap.analysis.report import write_markdown_page

    study = _study(args)
    write_study_table(study, args.table, Path(args.results), Path(args.out_csv), Path(args.out_md), log=log,
                      out_tex=Path(args.out_tex) if args.out_tex else None)
    if args.out_html:
        write_markdown_page(Path(args.out_md), Path(args.out_html), study.tables[args.table].title)


def cmd_correlation(args) -> None:
    from vlmswap.analysis.report import write_study_correlation

    write_study_correlation(_study(args), Path(args.results), Path(args.out_csv), Path(args.out_png), log=log)


def cmd_findings(args) -> None:
    from vlmswap.analysis.findings import write_study_findings

    from vlmswap.analysis.report import write_markdown_page

    study = _study(args)
    write_study_findings(study, Path(args.results), Path(args.out_md), Path(args.out_json), log=log)
    if args.out_html:
        write_markdown_page(Path(args.out_md), Path(args.out_html), f"Findings of study {study.name}")


def cmd_provenance(args) -> None:
    from vlmswap.analysis.report import write_cell_provenance

    write_cell_provenance(_study(args), args.cell, Path(args.results), Path(args.resources), Path(args.out))
    log(f"provenance of {args.cell} -> {args.out}")


def cmd_figures(args) -> None:
    from vlmswap.analysis.figures import write_study_figures

    write_study_figures(_study(args), Path(args.results), Path(args.out_dir), log=log)


# ---------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmswap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    from vlmswap.diagnostics.commands import (cmd_collapse, cmd_collapse_figure, cmd_fetch_probe_dataset, cmd_figure2,
                                              cmd_figure2_figure, cmd_probe, cmd_probe_figure, cmd_profile,
                                              cmd_profile_figure)

    def verb(name, func, help, *args, multi=("checkpoint",)):
        p = sub.add_parser(name, help=help)
        # under Snakemake the workflow names its config in VLMSWAP_CONFIG (no path in any rule's text)
        p.add_argument("--config", default=os.environ.get("VLMSWAP_CONFIG"),
                       required=os.environ.get("VLMSWAP_CONFIG") is None,
                       help="study config (config/mini.yaml, config/experiments.yaml; default $VLMSWAP_CONFIG)")
        for a in args:
            # several values: a fused backbone's checkpoint files; an evaluation's indexes and results
            p.add_argument(f"--{a}", required=True, **({"nargs": "+"} if a in multi else {}))
        p.set_defaults(func=func)
        return p

    verb("validate", cmd_validate, "check a study config")
    verb("cells", cmd_cells, "list the cell ids of a study")
    p = verb("status", cmd_status, "where the grid stands: done, running, failed, missing or stale, per cell and stage")
    p.add_argument("--results", help="the study's results folder (default results/<study>)")
    p.add_argument("--workdir", default=".", help="Snakemake's working directory (default: here)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = verb("preflight", cmd_preflight, "check hand-placed inputs, disk and credentials before any job")
    p.add_argument("--resources", help="the study's resources folder (default resources/<study>)")
    p.add_argument("--out", help="write the report (JSON) here when there is no problem")
    verb("mini-world", cmd_mini_world, "generate the mini world", "out")
    verb("pretrain-mini", cmd_pretrain_mini, "pretrain a tiny backbone on the mini world",
         "backbone", "objective", "world", "out")
    verb("build-mini-llm", cmd_build_mini_llm, "build the mini LLM + tokenizer", "world", "out")
    p = verb("fetch-backbone", cmd_fetch_backbone, "fetch a backbone checkpoint", "backbone", "objective", "out")
    p.add_argument("--input", help="the workflow-built file for `mini:` sources")
    p = verb("fetch-llm", cmd_fetch_llm, "fetch the LLM", "out")
    p.add_argument("--input", help="the workflow-built folder for `mini:` sources")
    verb("fetch-instruct", cmd_fetch_instruct, "fetch the instruction-set json", "out")
    verb("prepare-instruct", cmd_prepare_instruct, "check the instruction set", "json", "image-root", "out")
    verb("fetch-benchmark", cmd_fetch_benchmark, "fetch a benchmark's official files", "benchmark", "dest", "out")
    verb("prepare-benchmark", cmd_prepare_benchmark, "index a benchmark's official files", "benchmark", "root", "out")
    p = verb("train", cmd_train, "train one cell", "cell", "checkpoint", "llm", "instruct-json", "image-root", "out",
         "state-dir")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the job (several: srun + torchrun)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the job in all (>1: one process per GPU)")
    p = verb("evaluate", cmd_evaluate, "evaluate one cell on one or more benchmarks", "cell", "checkpoint", "llm", "model",
         "index", "out", multi=("checkpoint", "index", "out"))
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the job (>1: shard over one process per GPU)")
    p.add_argument("--group-record", help="when every result is written, record their sha256 in this JSON file")
    verb("baselines", cmd_baselines, "score the trivial baseline of one prepared benchmark", "benchmark", "index",
         "out")
    p = verb("table", cmd_table, "write one paper table", "table", "results", "out-csv", "out-md")
    p.add_argument("--out-tex", help="also write the table as LaTeX (booktabs)")
    p.add_argument("--out-html", help="also write the table as an HTML page (for the Snakemake report)")
    p = verb("findings", cmd_findings, "the paper's observations computed on this study", "results", "out-md",
             "out-json")
    p.add_argument("--out-html", help="also write the findings as an HTML page (for the Snakemake report)")
    verb("provenance", cmd_provenance, "one cell's provenance as an HTML page", "cell", "results", "resources", "out")
    verb("figures", cmd_figures, "the study's figures (PNG + PDF)", "results", "out-dir")
    verb("correlation", cmd_correlation, "benchmark x benchmark Pearson matrix", "results", "out-csv", "out-png")
    verb("profile", cmd_profile, "profile one cell's VLM across square resolutions (App. G)", "cell", "llm", "out")
    verb("profile-figure", cmd_profile_figure, "the profiling CSV and six-panel figure over all profiled cells",
         "inputs", "out-csv", "out-png", multi=("inputs",))
    verb("fetch-probe-dataset", cmd_fetch_probe_dataset, "download one torchvision linear-probe dataset",
         "dataset", "dest", "out")
    verb("probe", cmd_probe, "linear probes of one cell's frozen backbone on the probe datasets",
         "cell", "checkpoint", "data", "out", multi=("checkpoint", "data"))
    verb("probe-figure", cmd_probe_figure, "probe accuracy table and its rank correlation with the VLM scores",
         "inputs", "results", "out-csv", "out-md", "out-png", multi=("inputs",))
    verb("figure2", cmd_figure2, "Figure 2 data of one cell: boxes and expression-token similarity maps",
         "cell", "checkpoint", "llm", "model", "index", "eval", "out")
    verb("figure2-figure", cmd_figure2_figure, "draw Figure 2 from the cells' data", "inputs", "out-png",
         multi=("inputs",))
    verb("collapse", cmd_collapse, "position probes of one trained cell along vision -> connector -> LLM",
         "cell", "checkpoint", "llm", "model", "index", "out")
    verb("collapse-figure", cmd_collapse_figure, "the collapse probes' CSV, figure and findings over all probed cells",
         "inputs", "results", "out-csv", "out-png", "out-md", multi=("inputs",))
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that name a bad input (file, id or key, and the fix) and so need no traceback."""
    from vlmswap.analysis.correlation import TooFewRuns
    from vlmswap.analysis.tables import ResultFileError
    from vlmswap.data.instruct import InstructError
    from vlmswap.checkpoint import CheckpointError
    from vlmswap.evaluate.records import AnnotationFileError, IndexFileError
    from vlmswap.hub import FetchError
    from vlmswap.language import LLMFolderError
    from vlmswap.train.loop import ResumeWorldMismatch

    return (FetchError, CheckpointError, AnnotationFileError, IndexFileError, InstructError, LLMFolderError,
            ResultFileError, ResumeWorldMismatch, TooFewRuns)


def _launch_args(argv: list[str]) -> list[str]:
    """`argv` without the launch flags, as each rank runs it."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--nodes", "--gpus"):
            skip = True
        elif not a.startswith(("--nodes=", "--gpus=")):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run one verb. A bad input or a failed write ends in one line on stderr and a non-zero exit;
    whatever was finished before stays as it was (every output is written atomically)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.verb in ("train", "evaluate"):
        from vlmswap.train.launch import relaunch_if_distributed, time_limit_env

        if args.verb == "train":  # every rank stops at the same step before the job's time limit
            os.environ.update(time_limit_env(os.environ, log))
        nodes = getattr(args, "nodes", 1)
        relaunch_if_distributed(_launch_args(argv), nodes, args.gpus // max(nodes, 1))
    try:
        args.func(args)
    except ConfigError as e:
        print(f"vlmswap: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except _TimeLimitReached as e:  # resume state is saved: EX_TEMPFAIL, the job's retry continues
        if os.environ.get("RANK", "0") == "0":  # every rank stops at the same step; one says why
            print(f"vlmswap: {e}", file=sys.stderr)
        raise SystemExit(75) from None
    except PredictionsFileError as e:
        print(f"vlmswap: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk, a read-only folder, a file that is not there
        where = f"{e.filename}: " if e.filename else ""
        print(f"vlmswap: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:
        if not isinstance(e, _input_errors()):
            raise
        print(f"vlmswap: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
