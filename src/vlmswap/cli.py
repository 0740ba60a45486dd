"""The `vlmswap` command: one verb per workflow stage, usable by hand without Snakemake.

    vlmswap cells --config config/experiments.yaml        # list the grid
    vlmswap validate --config config/mini.yaml
    vlmswap status --config config/mini.yaml [--json]     # done/running/failed/missing/stale per cell and stage
    vlmswap mini-world | pretrain-mini | build-mini-llm   # the mini world's own inputs
    vlmswap fetch-backbone | fetch-llm | prepare-instruct | prepare-benchmark
    vlmswap train --config C --cell ID ...
    vlmswap evaluate --config C --cell ID --benchmark B ...
    vlmswap table | correlation | findings | figures
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlmswap.evaluate.errors import PredictionsFileError
from vlmswap.study import ConfigError, load_study


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _study(args):
    return load_study(args.config)


# ---------------------------------------------------------------------------------------- verbs


def cmd_validate(args) -> None:
    study = _study(args)
    print(f"{args.config}: study {study.name!r} is valid: {len(study.cells)} cells, {len(study.backbones)} backbones, "
          f"{len(study.benchmarks)} benchmarks, {len(study.tables)} tables")


def cmd_cells(args) -> None:
    for cell_id in _study(args).cell_ids:
        print(cell_id)


def cmd_status(args) -> None:
    """Per cell and stage (checkpoint, train, each evaluation) and for tables, findings and figures:
    done / running / failed / missing / stale, the last lines of each failed job's log, the totals."""
    from vlmswap.status import grid_status, to_json, to_text

    status = grid_status(_study(args), Path(args.workdir), Path(args.results) if args.results else None)
    print(to_json(status) if args.json else to_text(status), end="")


def cmd_mini_world(args) -> None:
    from vlmswap.data.mini_world import generate

    study = _study(args)
    mini = study.raw.get("mini")
    if mini is None:
        raise ConfigError(args.config, "mini", "this study has no mini world; use config/mini.yaml")
    keys = ("seed", "n_train", "n_eval", "n_classify", "image_size", "mix")
    generate(Path(args.out), **{k: mini[k] for k in keys if k in mini}, log=log)


def cmd_pretrain_mini(args) -> None:
    """Pretrain a tiny backbone on the mini world for its objective; saved in the official layout."""
    from vlmswap.image import Geometry
    from vlmswap.vision.pretrain import KINDS, pretrain_backbone
    from vlmswap.vision.registry import build_backbone

    study = _study(args)
    spec = study.backbones[args.backbone]
    source = spec.checkpoints[args.objective]
    if "mini" not in source:
        raise ConfigError(args.config, f"backbones.{args.backbone}.checkpoints.{args.objective}",
                          "pretrain-mini needs a `mini:` source")
    kind = study.raw["objectives"][args.objective]["kind"]
    if kind not in KINDS:
        raise ConfigError(args.config, f"objectives.{args.objective}.kind",
                          f"the mini world pretrains for {', '.join(KINDS)}, not {kind!r}", list(KINDS))
    tap = _pretrain_tap(study, args.backbone, args.objective)
    size = int(source["mini"].get("image_size", study.raw["mini"].get("image_size", 64)))
    geometry = Geometry(size, size)
    # built only for its transform (letterbox fill, normalization)
    probe = build_backbone(spec.family, spec.arch, tap, geometry)
    data, classes = _pretrain_set(Path(args.world) / "classify", geometry, probe.pixels, kind)
    log(f"pretrain {args.backbone}@{args.objective} ({kind}, tap {tap}): {len(data)} images at {size}px, "
        f"{len(classes)} classes")
    epochs = int(source["mini"].get("epochs", study.raw["mini"].get("pretrain_epochs", 3)))
    summary = pretrain_backbone(spec.family, spec.arch, tap, kind, data, len(classes), Path(args.out),
                                epochs=epochs, seed=int(study.raw.get("seed", 0)), log=log)
    log(f"pretrained: {summary}")


def _pretrain_tap(study, backbone: str, objective: str) -> str:
    """The tap the study's cells read from this checkpoint (dense heads train the backbone there)."""
    from vlmswap.vision.registry import FAMILIES

    taps = sorted({c.tap for c in study.cells if c.backbone == backbone and c.objective == objective})
    if len(taps) > 1:
        raise ConfigError(study.path, f"backbones.{backbone}.checkpoints.{objective}",
                          f"cells read this mini checkpoint at several taps {taps}; pretrain one backbone per tap")
    return taps[0] if taps else FAMILIES[study.backbones[backbone].family].taps[0]


def _pretrain_set(folder: Path, geometry: Geometry, pixels_of, kind: str):
    """The world's classification images with their image labels, boxes and masks, in the frame of
    the letterboxed `geometry` input (the images are square; a square geometry only rescales)."""
    import torch
    from PIL import Image

    from vlmswap.data.mini_world import class_mask
    from vlmswap.vision.pretrain import PretrainSet

    classes = json.loads((folder / "classes.json").read_text())
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines() if line.strip()]
    if not geometry.square:
        raise ValueError(f"{folder}: mini pretraining runs at a square size, got {geometry}")
    images, boxes, masks = [], [], []
    for row in rows:
        with Image.open(folder / row["image"]) as im:
            images.append(pixels_of(im, geometry))
        if kind != "classification" and "objects" not in row:
            raise ValueError(f"{folder / 'train.jsonl'}: record {row['image']} has no `objects` (boxes and "
                             "polygons); regenerate the mini world with this version (snakemake reruns it)")
        scale = geometry.width / row.get("size", geometry.width)
        objects = row.get("objects", [])
        boxes.append([(o["label"], *(v * scale for v in o["bbox"])) for o in objects])
        if kind == "segmentation":  # the renderer's own pixels, at the world's size, then to the geometry
            mask = class_mask(objects, row.get("size", geometry.width))
            mask = mask.resize((geometry.width, geometry.height), Image.NEAREST)
            masks.append(torch.as_tensor(list(mask.getdata()), dtype=torch.long).view(geometry.height, geometry.width))
    data = PretrainSet(torch.stack(images), torch.tensor([r["label"] for r in rows]), boxes,
                       torch.stack(masks) if masks else None)
    return data, classes


def cmd_build_mini_llm(args) -> None:
    from vlmswap.language import build_mini_llm

    study = _study(args)
    source = study.raw["llm"]["source"]
    if "mini" not in source:
        raise ConfigError(args.config, "llm.source", "build-mini-llm needs a `mini:` source")
    summary = build_mini_llm(Path(args.world) / "text_corpus.txt", Path(args.out), source["mini"],
                             seed=int(study.raw.get("seed", 0)))
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
    record = fetch(source, Path(args.out), mirror=study.raw.get("mirror"), log=log)
    log(f"fetched {args.backbone}@{args.objective}: {record.bytes / 2**20:.1f} MiB sha256 {record.sha256[:12]} "
        f"from {record.origin}")


def cmd_fetch_llm(args) -> None:
    from vlmswap.hub import fetch

    study = _study(args)
    source = _source_with_input(dict(study.raw["llm"]["source"]), args.input)
    record = fetch(source, Path(args.out), mirror=study.raw.get("mirror"), log=log)
    log(f"fetched LLM {study.raw['llm']['id']} from {record.origin}")


def cmd_fetch_instruct(args) -> None:
    from vlmswap.hub import fetch

    study = _study(args)
    from vlmswap.hub import fetch_files

    record = fetch(study.raw["instruct"]["source"], Path(args.out), mirror=study.raw.get("mirror"), log=log)
    log(f"fetched {study.raw['instruct']['id']} from {record.origin}")
    files = study.raw["instruct"].get("files", [])
    fetch_files(files, Path(args.out).parent, mirror=study.raw.get("mirror"), log=log)
    log(f"{len(files)} image archives unpacked beside it; folders the config does not list (e.g. ocr_vqa) "
        "must be placed there by hand or come from the mirror")


def cmd_prepare_instruct(args) -> None:
    from vlmswap.atomic import write_json
    from vlmswap.data.instruct import check_instruct

    json_path, image_root = Path(args.json), Path(args.image_root)
    log(f"checking {json_path} and the images under {image_root}")
    check = check_instruct(json_path, image_root, log=log)
    report = {"json": str(json_path), "image_root": str(image_root), "n_records": check.n_records,
              "n_multimodal": check.n_multimodal, "missing": check.missing, "unreadable": check.unreadable,
              "malformed": check.malformed}
    problems = len(check.missing) + len(check.unreadable) + len(check.malformed)
    if problems:
        bad = Path(args.out).with_suffix(".problems.json")
        write_json(bad, report)
        for kind in ("missing", "unreadable", "malformed"):
            for item in getattr(check, kind)[:10]:
                log(f"  {kind}: {item}")
        raise SystemExit(f"{problems} problems in the instruction set (full list in {bad}); fix them before training")
    write_json(Path(args.out), report)
    log(f"instruction set OK: {check.n_records} records, {check.n_multimodal} with images")


def cmd_fetch_benchmark(args) -> None:
    from vlmswap.atomic import write_json
    from vlmswap.hub import fetch_files

    study = _study(args)
    files = study.raw["benchmarks"][args.benchmark].get("files")
    if not files:  # no public direct download (e.g. OCID-Ref on Google Drive): placed by hand
        dest = Path(args.dest)
        if not dest.is_dir() or not any(dest.iterdir()):
            raise ConfigError(args.config, f"benchmarks.{args.benchmark}.files",
                              f"no download listed and {dest} is empty; put the official files there "
                              "(see the benchmark module's docstring for the layout) or list them under `files:`")
        write_json(Path(args.out), {"benchmark": args.benchmark, "dest": args.dest, "files": "placed by hand"})
        log(f"{args.benchmark}: using the files placed in {dest}")
        return
    records = fetch_files(files, Path(args.dest), mirror=study.raw.get("mirror"), log=log)
    write_json(Path(args.out), {"benchmark": args.benchmark, "dest": args.dest, "files": records})
    log(f"{args.benchmark}: {len(records)} official files in {args.dest}")


def cmd_prepare_benchmark(args) -> None:
    from vlmswap.evaluate.runner import prepare

    study = _study(args)
    subset = study.raw["benchmarks"][args.benchmark].get("subset", "full")
    prepare(args.benchmark, Path(args.root), subset, Path(args.out), log=log)


def cmd_train(args) -> None:
    from vlmswap.train.loop import TrainPaths, train_cell

    study = _study(args)
    cell = study.cell(args.cell)
    paths = TrainPaths([Path(p) for p in args.checkpoint], Path(args.llm), Path(args.instruct_json), Path(args.image_root),
                       Path(args.out), Path(args.ckpt_dir))
    train_cell(study, cell, paths, log=log)


def cmd_evaluate(args) -> None:
    import torch

    from vlmswap.evaluate.runner import evaluate_cell
    from vlmswap.vlm import load_trained

    study = _study(args)
    cell = study.cell(args.cell)
    import os

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # one process per GPU under torchrun: each evaluates a shard
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model_dir = Path(args.model)
    record = _predictions_record(study, cell, model_dir, Path(args.index))
    vlm = load_trained(study, cell, [Path(p) for p in args.checkpoint], Path(args.llm), model_dir, device, dtype)
    settings = record["eval"]
    evaluate_cell(cell.id, vlm, cell.geometry, Path(args.index), Path(args.out), record,
                  batch_size=int(settings["batch_size"]), max_new_tokens=int(settings["max_new_tokens"]),
                  log=log, rank=rank, world=world)


def _predictions_record(study, cell, model_dir: Path, index: Path) -> dict:
    """What the predictions of this evaluation will be made from: the model's training record,
    the weights file as it is now, the evaluation settings and the prepared index."""
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
    return predictions_record(summary["provenance"], weights, eval_settings(study), index)


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

    def verb(name, func, help, *args):
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", required=True, help="study config (config/mini.yaml, config/experiments.yaml)")
        for a in args:
            # a fused backbone arrives as several checkpoint files, one per member
            p.add_argument(f"--{a}", required=True, **({"nargs": "+"} if a == "checkpoint" else {}))
        p.set_defaults(func=func)
        return p

    verb("validate", cmd_validate, "check a study config")
    verb("cells", cmd_cells, "list the cell ids of a study")
    p = verb("status", cmd_status, "where the grid stands: done, running, failed, missing or stale, per cell and stage")
    p.add_argument("--results", help="the study's results folder (default results/<study>)")
    p.add_argument("--workdir", default=".", help="Snakemake's working directory (default: here)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
    verb("train", cmd_train, "train one cell", "cell", "checkpoint", "llm", "instruct-json", "image-root", "out",
         "ckpt-dir")
    verb("evaluate", cmd_evaluate, "evaluate one cell on one benchmark", "cell", "checkpoint", "llm", "model",
         "index", "out")
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"vlmswap: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except PredictionsFileError as e:
        print(f"vlmswap: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
