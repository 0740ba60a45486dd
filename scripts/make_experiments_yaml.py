"""Write config/experiments.yaml (the paper study) from the paper's two CSVs.

Inputs, all in the shared paper folder (default ../shared/paper, next to the repository):
  paper_results.csv       one row per experiment cell the paper reports (99 rows); `source_lines`
                          are the paper.md line numbers of the table headers the row appears in
  checkpoint_sources.csv  for each of those rows (same order): family, official checkpoint
                          source, feature tap, evidence
  paper.md                read only for the row order of each table (the CSV groups rows by
                          experiment, the paper's tables order them differently)

The output is written by the yaml library (block style, one line per source, objective and set of
paper numbers; a comment before each section) and is deterministic: the same inputs give the same bytes. Run it after
changing this script and commit the result; `--check` exits 1 if the committed file is stale.

    .venv/bin/python scripts/make_experiments_yaml.py [PAPER_DIR] [--out FILE] [--check]

Each cell carries its paper row's numbers under `paper:` (IN1K accuracy, every score and weighted
column, as printed), so that the tables can put the paper beside our results without the paper
folder, which a clone of the repository does not have. Each checkpoint's `in1k_acc` (the paper's
IN1K column) is printed by Tables 1-2 (`in1k_column: true`) as a property of the checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAPER_DIR = REPO_ROOT.parent / "shared" / "paper"
DEFAULT_OUT = REPO_ROOT / "config" / "experiments.yaml"

# ------------------------------------------------------------------------------------------------
# Vocabulary: the ids the config uses, and how the CSVs' words map onto them.

# paper "Pretrained Dataset" text -> (objective id, kind). One objective per distinct text.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "IN1K": ("in1k", "classification"),
    "IN21K": ("in21k", "classification"),
    "IN21K IN1K": ("in21k-in1k", "classification"),
    "IN1K COCO": ("coco-det", "detection"),
    "IN1K ADE20K": ("ade20k-seg", "segmentation"),
    "Multi-Modal ADE20K": ("multimodal-ade20k-seg", "segmentation"),
    "IN22K ADE20K": ("in22k-ade20k-seg", "segmentation"),
    "IN22K+COCO ADE20K": ("in22k-coco-ade20k-seg", "segmentation"),
    "CLIP WIT-400M": ("clip", "contrastive"),
    "SigLIP WebLI": ("siglip", "contrastive"),
    "DINOv2 LVD-142M": ("dinov2", "self-supervised"),
    "contrastive+SSL (fused)": ("fused", "fused"),
}

# checkpoint_sources.csv `family` -> the backbone family the registry implements. CLIP, SigLIP and
# DINOv2 are timm VisionTransformers (Prismatic loads them that way); the DeiT/AugReg/Uni-Perceiver
# segmentors are all ViT-Adapter (czczup/ViT-Adapter); BEiT-Adapter is ViT-Adapter around a BEiT
# (relative position bias, layer scale), a different backbone module.
FAMILIES: dict[str, str] = {
    "vit": "vit",
    "clip": "vit",
    "siglip": "vit",
    "dinov2": "vit",
    "maxvit": "maxvit",
    "mambavision": "mambavision",
    "vmamba": "vmamba",
    "vim": "vim",
    "vitdet": "vitdet",
    "vit-adapter": "vit-adapter",
    "augreg-adapter": "vit-adapter",
    "uniperceiver-adapter": "vit-adapter",
    "beit-adapter": "beit-adapter",
    "fused": "fused",
}
OBJECTIVE_ORDER = [oid for oid, _ in OBJECTIVES.values()]
FAMILY_ORDER = ["vit", "maxvit", "mambavision", "vmamba", "vim", "vitdet", "vit-adapter", "beit-adapter", "fused"]

# checkpoint_sources.csv `feature_tap` text -> tap name (first matching rule wins).
TAPS: list[tuple[str, str, str]] = [
    ("block[-2]", "block-2",
     "output of the second-to-last transformer block, patch tokens only (CLS/register tokens "
     "dropped, no final norm); Prismatic's default for timm ViTs (fused: each tower, channel-concatenated)"),
    ("outnorm2", "stage3-outnorm",
     "VMamba detection/segmentation checkpoints: stage-3 output (stride 16, before downsample) "
     "through the mmdet/mmseg Backbone_VSSM's outnorm2 LayerNorm"),
    ("layers[2].blocks output", "stage3",
     "hierarchical backbones: stage-3 output at stride 16, before the downsample "
     "(VMamba layers[2], MaxViT stages.2, MambaVision levels[2])"),
    ("stages.2 output", "stage3", ""),
    ("levels[2] output", "stage3", ""),
    ("last_feat", "last-block", "ViTDet: output of the last block (stride 16), no final norm, as SimpleFeaturePyramid sees it"),
    ("adapter level stride32", "adapter-stride32",
     "ViT-Adapter / BEiT-Adapter segmentors: the adapter's stride-32 output f4 (after norm4). "
     "The adapter's injectors add into the ViT token stream, so this is the adapter output, "
     "not a ViT block"),
    ("norm_f output", "final-norm",
     "Vim: output of the final norm (norm_f), middle class token dropped; the grid follows the "
     "checkpoint's patch stride (16, or 8 for the -ft checkpoints)"),
]

CONNECTORS = {"2mlp": "mlp2", "3mlp": "mlp3"}

# paper_results.csv columns copied into each cell's `paper:` mapping, in the CSV's order.
PAPER_NUMBERS = ("in1k_acc", "vqa-v2", "gqa", "vizwiz", "textvqa-ocr", "textvqa-pure", "pope", "tallyqa",
                 "vqa-weighted", "refcoco", "refcoco+", "refcocog", "ocid-ref", "loc-weighted", "overall-weighted")

# Paper tables: (id, paper number, header line in paper.md, columns, title). Line numbers are the
# ones paper_results.csv's `source_lines` refers to; each is checked to be a table header.
TABLES: list[tuple[str, str, int, str, str]] = [
    ("table-1", "Table 1", 32, "vqa", "Table 1: Matched IN1K/224 backbone swaps, VQA"),
    ("table-2", "Table 2", 49, "loc", "Table 2: Matched IN1K/224 backbone swaps, localization"),
    ("table-3", "Table 3", 71, "vqa", "Table 3: Dense-objective (detection / segmentation) backbones, VQA"),
    ("table-4", "Table 4", 71, "loc",
     "Table 4: Dense-objective (detection / segmentation) backbones, localization "
     "(not in paper.md; same rows as Table 3)"),
    ("table-5", "Table 5", 108, "vqa", "Table 5: Stabilization (connector capacity, square geometry), VQA"),
    ("table-6", "Table 6", 124, "loc", "Table 6: Stabilization (connector capacity, square geometry), localization"),
    ("table-19", "Table 19", 170, "vqa",
     "Table 19: Additional dense-objective backbones (App. F.1), VQA (table number inferred)"),
    ("table-20", "Table 20", 189, "loc",
     "Table 20: Additional dense-objective backbones (App. F.1), localization (table number inferred)"),
    ("table-21", "Table 21", 208, "vqa", "Table 21: Contrastive / self-supervised and fused backbones (App. F.2), VQA"),
    ("table-22", "Table 22", 225, "loc",
     "Table 22: Contrastive / self-supervised and fused backbones (App. F.2), localization"),
    ("table-23", "Table 23", 259, "vqa", "Table 23: Exhaustive results, VMamba, VQA"),
    ("table-24", "Table 24", 282, "loc", "Table 24: Exhaustive results, VMamba, localization"),
    ("table-25", "Table 25", 305, "vqa", "Table 25: Exhaustive results, ViT, VQA"),
    ("table-26", "Table 26", 317, "loc", "Table 26: Exhaustive results, ViT, localization"),
    ("table-27", "Table 27", 329, "vqa", "Table 27: Exhaustive results, MaxViT, VQA"),
    ("table-28", "Table 28", 352, "loc", "Table 28: Exhaustive results, MaxViT, localization"),
    ("table-29", "Table 29", 375, "vqa", "Table 29: Exhaustive results, MambaVision, VQA"),
    ("table-30", "Table 30", 388, "loc", "Table 30: Exhaustive results, MambaVision, localization"),
    ("table-31", "Table 31", 401, "vqa", "Table 31: Exhaustive results, Vim, VQA"),
    ("table-32", "Table 32", 408, "loc", "Table 32: Exhaustive results, Vim, localization"),
    ("table-33", "Table 33", 415, "vqa", "Table 33: Exhaustive results, ViTDet, VQA"),
    ("table-34", "Table 34", 423, "loc", "Table 34: Exhaustive results, ViTDet, localization"),
    ("table-35", "Table 35", 431, "vqa", "Table 35: Exhaustive results, ViT-Adapter, VQA"),
    ("table-36", "Table 36", 443, "loc", "Table 36: Exhaustive results, ViT-Adapter, localization"),
]

# The paper prints one encoder size that contradicts its own other rows for the same checkpoint
# family: VMamba-B is "80M" in the IN1K rows and "89M" in the COCO/ADE20K rows. The IN1K weights
# (83.9 top-1) are the s2l15 model, 88.6M (checkpoint_sources.csv notes), so the config says 89M.
PAPER_SIZE_TYPOS: dict[tuple[str, str], str] = {("VMamba-B", "80M"): "89M"}

# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One experiment as the two CSVs describe it."""

    index: int
    result: dict[str, str]
    source: dict[str, str]

    @property
    def pretrain(self) -> str:
        return self.result["pretrain"]

    @property
    def encoder(self) -> str:
        return self.result["encoder"]

    @property
    def lines(self) -> list[int]:
        return [int(x) for x in self.result["source_lines"].split()]


@dataclass
class BackboneSpec:
    id: str
    family: str
    arch: str | None
    display: str
    params: str
    checkpoints: dict[str, dict] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    first_row: int = 0
    size: int = 224  # the square size the checkpoints were trained at (only orders the file)


def read_rows(paper_dir: Path) -> list[Row]:
    with open(paper_dir / "paper_results.csv", newline="") as f:
        results = list(csv.DictReader(f))
    with open(paper_dir / "checkpoint_sources.csv", newline="") as f:
        sources = list(csv.DictReader(f))
    if len(results) != len(sources):
        sys.exit(f"{paper_dir}: {len(results)} result rows but {len(sources)} checkpoint rows")
    rows = []
    for i, (r, s) in enumerate(zip(results, sources)):
        key = "|".join((r["pretrain"], r["encoder"], r["connector"], r["image_size"]))
        if key != s["row_key"]:
            sys.exit(f"row {i + 2}: paper_results.csv says {key!r}, checkpoint_sources.csv {s['row_key']!r}")
        rows.append(Row(i, r, s))
    return rows


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.+-]+", "-", text.lower()).strip("-")


def checkpoint_source(src: dict[str, str]) -> dict:
    """A checkpoint_sources.csv row's source as a config source mapping."""
    kind, value = src["source_kind"], src["source"]
    if kind == "timm":
        return {"timm": value}
    if kind == "url":
        return {"url": value}
    if kind == "hf":
        repo, _, file = value.partition(":")
        return {"hub": repo, "file": file} if file else {"hub": repo}
    raise ValueError(f"unknown source_kind {kind!r} for {src['row_key']}")


def checkpoint_size(src: dict[str, str]) -> int:
    """The square size the checkpoint was trained at (first number of input_size_of_checkpoint)."""
    return int(re.match(r"\d+", src["input_size_of_checkpoint"]).group())


def tap_of(feature_tap: str) -> str:
    for needle, tap, _ in TAPS:
        if needle in feature_tap:
            return tap
    raise ValueError(f"no tap rule matches feature_tap {feature_tap!r}")


def timm_backbone(tag: str, display: str) -> tuple[str, str]:
    """(backbone id, arch) for a timm tag: the arch is the model name; a resolution-specific arch
    other than 224 (maxvit_tiny_tf_384, vit_large_patch14_clip_336, ...) is its own backbone."""
    arch = tag.split(".")[0]
    m = re.search(r"_(\d+)$", arch)
    bid = slug(display)
    if m and m.group(1) != "224":
        bid += f"-{m.group(1)}"
    return bid, arch


def backbone_of(row: Row) -> BackboneSpec:
    """The backbone (one architecture, one encoder size) a non-fused row runs."""
    src, display = row.source, row.encoder
    family = FAMILIES[src["family"]]
    params = PAPER_SIZE_TYPOS.get((display, row.result["encoder_size"]), row.result["encoder_size"])
    size = checkpoint_size(src)
    if src["source_kind"] == "timm":
        bid, arch = timm_backbone(src["source"], display)
    elif family == "mambavision":  # factory names of mambavision/models/mamba_vision.py
        suffix = display.split("-", 1)[1]
        bid, arch = slug(display), f"mamba_vision_{suffix}"
        if size != 224:
            bid, arch = f"{bid}-{size}", f"{arch}_{size}_21k"
    elif family == "vmamba":
        bid = arch = slug(display)
    elif family == "vim":  # Vim-T-ft = the stride-8 patch-embedding fine-tune of Vim-T
        base = slug(display.removesuffix("-ft"))
        bid, arch = slug(display), base + ("-stride8" if display.endswith("-ft") else "")
    elif family == "vitdet":
        bid = arch = slug(display)
    elif family == "vit-adapter":
        if display == "Perceiver":  # ViT-Adapter-L initialised from Uni-Perceiver-L
            bid, arch = "uniperceiver-l-adapter", "uniperceiver-adapter-l"
        else:  # DeiT-S, AugReg-B, ...: the ViT's init names the config (AugReg-B/L: 384 pos-embed, 0.5 stats)
            bid = f"{slug(display)}-adapter"
            arch = f"{slug(display.split('-')[0])}-adapter-{slug(display.split('-')[-1])}"
    elif family == "beit-adapter":
        # Same BEiT-L, different segmentors: the decode head (UperNet / Mask2Former) changes the
        # checkpoint and the paper's encoder size (whole segmentor), the crop size the rel-pos tables.
        head = Path(src["source"]).name.split("_")[0]
        model = slug(display.split("-")[0])  # beit / beitv2
        bid = f"{slug(display)}-adapter-{head}-{size}"
        arch = f"{model}-adapter-{slug(display.split('-')[-1])}-{size}"
    else:
        raise ValueError(f"row {row.index}: no backbone rule for family {family!r}")
    return BackboneSpec(bid, family, arch, display, params, first_row=row.index, size=size)


def geometry_of(image_size: str) -> str:
    w, h = image_size.split("/")[0].split("x")
    return w if w == h else f"{w}x{h}"


@dataclass
class PaperStudy:
    objectives: dict[str, tuple[str, str]]  # id -> (display, kind)
    backbones: dict[str, BackboneSpec]
    cells: list[dict]
    cell_of_row: list[str]
    tables: list[tuple[str, str, str, str, list[str]]]  # id, title, paper, columns, cells
    in1k_tables: set[str] = field(default_factory=set)  # tables whose paper header has the IN1K column


def build(rows: list[Row], paper_md: list[str]) -> PaperStudy:
    backbones: dict[str, BackboneSpec] = {}
    objectives: dict[str, tuple[str, str]] = {}

    def add_checkpoint(spec: BackboneSpec, objective: str, source: dict, row: Row) -> None:
        if spec.id not in backbones:
            backbones[spec.id] = spec
        have = backbones[spec.id]
        for attr in ("family", "arch", "display", "params", "members"):
            if getattr(have, attr) != getattr(spec, attr):
                raise ValueError(f"row {row.index}: backbone {spec.id!r} {attr} {getattr(spec, attr)!r} "
                                 f"!= {getattr(have, attr)!r} from row {have.first_row}; give it another id")
        if objective in have.checkpoints:
            old = {k: v for k, v in have.checkpoints[objective].items() if k != "in1k_acc"}
            new = {k: v for k, v in source.items() if k != "in1k_acc"}
            if old != new:  # two checkpoints for one (backbone, objective): never merge silently
                raise ValueError(f"row {row.index}: {spec.id}/{objective} would be {new} and {old}")
            if "in1k_acc" in source:
                if have.checkpoints[objective].get("in1k_acc", source["in1k_acc"]) != source["in1k_acc"]:
                    raise ValueError(f"row {row.index}: {spec.id}/{objective} has two in1k_acc values")
                have.checkpoints[objective]["in1k_acc"] = source["in1k_acc"]
        else:
            have.checkpoints[objective] = dict(source)

    cells, cell_of_row = [], []
    fused_rows = []
    for row in rows:
        if row.pretrain not in OBJECTIVES:
            raise ValueError(f"row {row.index}: no objective id for pretrain {row.pretrain!r}")
        objective, kind = OBJECTIVES[row.pretrain]
        objectives[objective] = (row.pretrain, kind)
        if FAMILIES[row.source["family"]] == "fused":
            fused_rows.append(row)
            continue
        source = checkpoint_source(row.source)
        if row.result["in1k_acc"]:
            source["in1k_acc"] = float(row.result["in1k_acc"])
        add_checkpoint(backbone_of(row), objective, source, row)

    # Fused pairs: the members are backbones of their own (each tower's checkpoint and arch).
    fused_ids = {}
    for row in fused_rows:
        tags = [t.strip() for t in row.source["source"].split("+")]
        names = row.encoder.split("/")
        if len(tags) != len(names) or row.source["source_kind"] != "timm":
            raise ValueError(f"row {row.index}: cannot split fused source {row.source['source']!r}")
        members = []
        for tag, name in zip(tags, names):
            bid, _ = timm_backbone(tag, name)
            if bid not in backbones or tag not in [c.get("timm") for c in backbones[bid].checkpoints.values()]:
                raise ValueError(f"row {row.index}: fused member {bid!r} ({tag}) is not a backbone of the study")
            members.append(bid)
        spec = BackboneSpec("+".join(members), "fused", None, row.encoder, row.result["encoder_size"],
                            members=members, first_row=row.index, size=checkpoint_size(row.source))
        add_checkpoint(spec, OBJECTIVES[row.pretrain][0], {"members": True}, row)
        fused_ids[row.index] = spec.id

    for row in rows:
        if row.index in fused_ids:
            bid = fused_ids[row.index]
        else:
            bid = backbone_of(row).id
        cell = {
            "backbone": bid,
            "objective": OBJECTIVES[row.pretrain][0],
            "geometry": geometry_of(row.result["image_size"]),
            "tap": tap_of(row.source["feature_tap"]),
            "connector": CONNECTORS[row.result["connector"]],
            "paper": {k: float(row.result[k]) for k in PAPER_NUMBERS if row.result[k]},
        }
        cid = "@".join(cell[k] for k in ("backbone", "objective", "geometry", "tap", "connector"))
        if cid in cell_of_row:
            raise ValueError(f"row {row.index}: cell {cid} repeats row {cell_of_row.index(cid)}")
        cells.append(cell)
        cell_of_row.append(cid)

    tables = []
    for tid, paper, line, columns, title in TABLES:
        order = paper_row_order(paper_md, line, rows)
        tables.append((tid, title, paper, columns, [cell_of_row[i] for i in order]))
    unused = {ln for r in rows for ln in r.lines} - {t[2] for t in TABLES}
    if unused:
        raise ValueError(f"source_lines {sorted(unused)} belong to no table in TABLES")
    in1k_tables = {tid for tid, _, line, _, _ in TABLES if "IN1K" in _cells(paper_md[line - 1])}
    return PaperStudy(objectives, backbones, cells, cell_of_row, tables, in1k_tables)


# ------------------------------------------------------------------------------------------------
# Row order of a paper.md table


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def paper_row_order(paper_md: list[str], header_line: int, rows: list[Row]) -> list[int]:
    """CSV row indices of the table whose header is paper.md line `header_line`, in the paper's order.

    Each paper row is matched to the one CSV row carrying that line with the same encoder,
    connector ("(f)" = 3-layer), encoder size and, where the table has those columns, pretrain
    dataset and image size. The leading "black" words are colour markup left by the conversion.
    """
    header = _cells(paper_md[header_line - 1])
    if header[0] not in ("Visual", "Pretrained"):
        raise ValueError(f"paper.md line {header_line} is not a table header: {paper_md[header_line - 1][:60]!r}")
    candidates = [r for r in rows if header_line in r.lines]
    order = []
    j = header_line + 1  # skip the second header line
    while j < len(paper_md) and paper_md[j].startswith("|") and _cells(paper_md[j])[0] not in ("Visual", "Pretrained"):
        cells = _cells(paper_md[j])
        cells[0] = re.sub(r"^(black )+", "", cells[0])
        if header[0] == "Pretrained":
            pretrain, encoder, size, image = cells[0], cells[1], cells[2], cells[3]
        else:
            pretrain, encoder, size = None, cells[0], cells[1]
            image = cells[2] if header[2] == "Image" else None
        connector = "3mlp" if encoder.endswith("(f)") else "2mlp"
        encoder = encoder.removesuffix("(f)")
        match = [r.index for r in candidates
                 if r.encoder == encoder and r.result["connector"] == connector
                 and r.result["encoder_size"] == size
                 and (pretrain is None or r.pretrain.lower() == pretrain.lower())  # paper: "IN21k IN1K"
                 and (image is None or r.result["image_size"] == image)]
        if len(match) != 1:
            raise ValueError(f"paper.md line {j + 1}: {len(match)} CSV rows match {cells[:5]}")
        order.append(match[0])
        j += 1
    if sorted(order) != [r.index for r in candidates]:
        raise ValueError(f"paper.md table at line {header_line}: rows {order} != CSV rows "
                         f"{[r.index for r in candidates]}")
    return order


# ------------------------------------------------------------------------------------------------
# The fixed sections (not derived from the CSVs)

LLM = {"id": "vicuna-7b-v1.5", "source": {"hub": "lmsys/vicuna-7b-v1.5", "size_gb": 13.5}}

# image folders beside the json (prismatic_spec.md 1.7), from the URLs of Prismatic's
# prismatic/preprocessing/download.py
_IMAGE_ARCHIVES = [
    ("http://images.cocodataset.org/zips/train2017.zip", "coco", 18.0),
    ("https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip", "gqa", 20.3),
    ("https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip", "textvqa", 6.6),
    ("https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip", "vg", 9.2),
    ("https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip", "vg", 5.5),
]
INSTRUCT = {
    "id": "llava-v15-665k",
    "source": {"hub": "liuhaotian/LLaVA-Instruct-150K", "repo_type": "dataset", "file": "llava_v1_5_mix665k.json"},
    "files": [{"url": url, "into": into, "extract": True, "size_gb": size} for url, into, size in _IMAGE_ARCHIVES[:2]]
    # OCR-VQA's images: Prismatic's source; its GIF/PNG files get a JPG beside them, as Prismatic's
    # convert_to_jpg writes (the mix names every image by .jpg)
    + [{"url": "https://huggingface.co/datasets/qnguyen3/ocr_vqa/resolve/main/ocr_vqa.zip", "into": "ocr_vqa",
        "extract": True, "extract_as": "images", "to_jpg": True}]
    + [{"url": url, "into": into, "extract": True, "size_gb": size} for url, into, size in _IMAGE_ARCHIVES[2:]],
}

PLACED_BY_HAND = [
    {"path": "data/ocid-ref/val_expressions.json",
     "what": "OCID-Ref validation expressions",
     "get": "the OCID-Ref release (Google Drive link in the OCID-Ref repository); unpack OCID-dataset/ beside it",
     "needed_by": ["ocid-ref"]},
    {"path": "data/ocid-ref/OCID-dataset",
     "what": "OCID scenes (the images OCID-Ref refers to)",
     "get": "the OCID dataset archive from its publisher, unpacked here",
     "needed_by": ["ocid-ref"]},
]

# Prismatic one-stage finetune recipe (../shared/reference/prismatic_spec.md 1.2; paper App. A)
RECIPE = {
    "epochs": 1, "global_batch": 128, "per_device_batch": 16, "lr": 2.0e-5,
    "weight_decay": 0.1,                  # Prismatic's configured value ...
    "weight_decay_applied_to": "none",    # ... which its FSDP run applied to no parameter
    "max_grad_norm": 1.0, "warmup_ratio": 0.03, "max_length": 2048, "precision": "bf16",
    "grad_checkpointing": True, "seed": 7, "checkpoint_every": 500,
}
TRAIN_RESOURCES = {"nodes": 1, "gpus_per_node": 4, "cpus_per_gpu": 8, "mem_mb_per_gpu": 64000, "runtime_min": 1440}
EVAL_RESOURCES = {"gpus": 1, "cpus": 8, "mem_mb": 64000, "runtime_min": 240}

_COCO_VAL2014 = {"url": "http://images.cocodataset.org/zips/val2014.zip", "extract": True, "size_gb": 6.2}
_POPE = "https://raw.githubusercontent.com/AoiDragon/POPE/e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco"
_VQA = "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa"
_REFER = "bvision{}.cs.unc.edu/licheng/referit/data"  # the UNC host goes down for long spells: a second source


def _refer(name: str) -> dict:
    return {"url": f"https://{_REFER.format('web1')}/{name}.zip", "extract": True,
            "also": [f"http://{_REFER.format('')}/{name}.zip"]}


# Each benchmark's official files (the URLs its authors publish); refcoco+ and refcocog share
# refcoco's folder; the TextVQA question file with OCR tokens is the one vlm-evaluation fetches
# (vlm_eval/tasks/registry.py); OCID-Ref has no stable direct URL and is placed by hand.
BENCHMARKS = {
    "vqa-v2": {"subset": "full", "files": [
        {"url": f"{_VQA}/v2_Questions_Val_mscoco.zip", "extract": True},
        {"url": f"{_VQA}/v2_Annotations_Val_mscoco.zip", "extract": True},
        dict(_COCO_VAL2014)]},
    "gqa": {"subset": "full", "files": [
        {"url": "https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip", "extract": True},
        {"url": "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip", "extract": True, "size_gb": 20.3}]},
    "vizwiz": {"subset": "full", "files": [
        {"url": "https://vizwiz.cs.colorado.edu/VizWiz_final/vqa_data/Annotations.zip", "extract": True},
        {"url": "https://vizwiz.cs.colorado.edu/VizWiz_final/images/val.zip", "extract": True}]},
    "textvqa": {"subset": "full", "files": [
        {"url": "https://dl.fbaipublicfiles.com/textvqa/data/TextVQA_0.5.1_val.json"},
        {"url": "https://gist.githubusercontent.com/siddk/74a709cb5e292099bae3cbcec1d0ce8a/raw/"
                "74e367e79a23b1043eb469b36168945fbac01601/textvqa_val_v051_ocr.jsonl"},
        {"url": "https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip", "extract": True, "size_gb": 6.6}]},
    "pope": {"subset": "full", "files": [
        {"url": f"{_POPE}/coco_pope_{split}.json"} for split in ("adversarial", "popular", "random")]
        + [dict(_COCO_VAL2014)]},
    "tallyqa": {"subset": "full", "files": [
        {"url": "https://github.com/manoja328/tallyqa/raw/master/tallyqa.zip", "extract": True},
        {"url": "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip", "extract": True, "size_gb": 9.2},
        {"url": "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip", "extract": True, "size_gb": 5.5}]},
    "refcoco": {"subset": "full", "files": [_refer("refcoco"), _refer("refcoco+"), _refer("refcocog"),
                                            {"url": "http://images.cocodataset.org/zips/train2014.zip",
                                             "extract": True, "size_gb": 12.6}]},
    "refcoco+": {"subset": "full"},
    "refcocog": {"subset": "full"},
    "ocid-ref": {"subset": "full"},
}

_RESOURCES_1GPU = {"gpus": 1, "cpus": 8, "mem_mb": 64000}
# The paper's diagnostics (issue 14; vlmswap.diagnostics, workflow/rules/diagnostics.smk). The stage
# ablation adds its cells to the grid (vlmswap.study), so the 99 paper rows stay `cells`.
DIAGNOSTICS = {
    "stage_ablation": {"backbones": ["vmamba-t", "maxvit-t", "mambavision-t"], "objective": "in1k", "geometry": "224",
                       "taps": ["stage2", "stage3", "stage4"], "connector": "mlp2",
                       "tokens": {"stage2": 784, "stage3": 196, "stage4": 49}},
    "profile": {"cells": ["vit-b@in1k@224@block-2@mlp2", "vmamba-t@in1k@224@stage3@mlp2",
                          "vitdet-b@coco-det@1024@last-block@mlp2"],
                "resolutions": [224, 384, 512, 768, 1024, 1280, 1536, 2048],
                "iterations": 200, "warmup": 100, "text_tokens": 128, "batch_size": 1,
                "resources": {**_RESOURCES_1GPU, "runtime_min": 120}},
    "linear_probe": {"cells": [f"{b}@in1k@224@{tap}@mlp2" for b, tap in (
                         ("vit-s", "block-2"), ("vit-b", "block-2"), ("maxvit-t", "stage3"), ("maxvit-b", "stage3"),
                         ("mambavision-t", "stage3"), ("mambavision-b", "stage3"), ("vmamba-t", "stage3"),
                         ("vmamba-s", "stage3"), ("vmamba-b", "stage3"))],
                     "datasets": ["cifar10", "cifar100", "dtd", "flowers102", "oxford-pets", "food101", "eurosat"],
                     "max_train": 10000, "max_test": 10000,
                     "resources": {**_RESOURCES_1GPU, "runtime_min": 240}},
    # the paper's pair; the first 4 RefCOCO val sentences; layer 16 of Vicuna-7B's 32
    "figure2": {"cells": ["vmamba-t@in1k@224@stage3@mlp2", "vit-s@in1k@224@block-2@mlp2"], "examples": 4,
                "layer": 16, "resources": {**_RESOURCES_1GPU, "runtime_min": 60}},
    "collapse": {"cells": ["vitdet-b@coco-det@1024@last-block@mlp2", "vitdet-l@coco-det@1024@last-block@mlp2",
                           "vitdet-l@coco-det@1024@last-block@mlp3", "vmamba-t@coco-det@1333x800@stage3-outnorm@mlp2",
                           "vmamba-s@coco-det@1333x800@stage3-outnorm@mlp2",
                           "vmamba-b@coco-det@1333x800@stage3-outnorm@mlp2",
                           "vmamba-t@coco-det@512@stage3-outnorm@mlp2", "vmamba-t@in1k@224@stage3@mlp2"],
                 "llm_layers": [1, 8, 16, 24, 32], "benchmark": "refcoco", "max_images": 1000,
                 "resources": {**_RESOURCES_1GPU, "runtime_min": 120}},
}

# What each top-level section's comment says in the written file.
SECTION_COMMENTS = {
    "study": "outputs under results/paper/, downloads under resources/paper/",
    "instruct": "The instruction set and its image folders, unpacked beside the json (prismatic_spec.md 1.7);\n"
                "OCR-VQA's GIF/PNG images get a JPG beside them (Prismatic's convert_to_jpg).",
    "placed_by_hand": "Inputs no download brings; `vlmswap preflight` (the workflow's first rule) checks them first.",
    "recipe": "Prismatic one-stage finetune recipe (../shared/reference/prismatic_spec.md 1.2; paper App. A).\n"
              "weight_decay is Prismatic's configured 0.1, which its FSDP run applied to no parameter:\n"
              "weight_decay_applied_to: none reproduces that (README, Fidelity notes); `matrices` applies it\n"
              "to every >= 2-D non-bias parameter.",
    "objectives": "Objective id -> the paper's \"Pretrained Dataset\" text and what the checkpoint was trained for.",
    "backbones": "Backbone id -> family, architecture (timm model name where timm has it), the paper's\n"
                 "\"Visual Encoder\" and \"Encoder Size\" texts, and one official checkpoint per objective\n"
                 "(which variant, and how sure the attribution is: checkpoint_sources.csv).",
    "benchmarks": "Each benchmark's official files (the URLs its authors publish; sha256 where known, none yet:\n"
                  "they were not downloaded from the machine that wrote this file). `extract: true` unpacks an\n"
                  "archive into resources/paper/data/<benchmark>/; refcoco+ and refcocog share refcoco's folder;\n"
                  "the UNC host of the REFER files goes down for long spells, so each has a second source (`also`).\n"
                  "TextVQA is generated once and fills two columns, textvqa-ocr and textvqa-pure. OCID-Ref\n"
                  "(val_expressions.json + OCID-dataset/) and the TextVQA OCR question file have no direct public\n"
                  "URL: place them there (or in the `mirror`) by hand.",
    "cells": "One entry per experiment (paper_results.csv row order); `paper:` holds its paper_results.csv\n"
             "numbers (IN1K accuracy, scores and weighted averages in percent, as printed).",
    "diagnostics": "Diagnostics (README, Diagnostics). stage_ablation: Appendix B, stages 2/3/4 of the hierarchical\n"
                   "backbones at IN1K/224 (cells added to the grid, table `stage-ablation`; token counts checked by\n"
                   "`vlmswap validate`). profile: Appendix G, one GPU job per cell, square resolutions ascending up to\n"
                   "the first OOM, 200 iterations of which 100 warm-up, batch 1, 128 text tokens. linear_probe: the\n"
                   "IN1K/224 backbones on torchvision datasets (fetched by `fetch_probe_dataset`). figure2: RefCOCO\n"
                   "boxes and expression-token similarity maps, VMamba-T vs ViT-S as the paper's Figure 2 (the first\n"
                   "`examples` sentences of the prepared RefCOCO val index, or a list of sent ids; `layer` of\n"
                   "Vicuna-7B's 32 decoder layers). collapse: position probes on the collapse cells of Tables 5/6\n"
                   "and their stable controls.",
    "tables": "Every paper table; cells in the paper's row order. columns: vqa -> the VQA columns +\n"
              "vqa-weighted; loc -> the localization columns + loc-weighted + overall-weighted.",
}


# ------------------------------------------------------------------------------------------------
# YAML text


class StudyDumper(yaml.SafeDumper):
    """yaml.safe_dump with the file's layout: sections and records in block style, a mapping or list
    of plain values on one line (a source, an objective, a cell's paper numbers), no anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def _leaf(values) -> bool:
    return all(not isinstance(v, (dict, list)) for v in values)


def _mapping(dumper: StudyDumper, data: dict):
    # one line when it fits (a long source may wrap); the recipe and other long records in block style
    short = _leaf(data.values()) and sum(len(str(k)) + len(str(v)) + 4 for k, v in data.items()) <= 120
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=short)


def _sequence(dumper: StudyDumper, data: list):
    # short lists of plain values on one line; cell-id lists one per line
    short = _leaf(data) and sum(len(str(v)) + 2 for v in data) <= 80
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=short)


class _Section(dict):
    """The one-key mapping of a top-level section: always block style."""


class _Flow(dict):
    """A record written as one flow mapping, wrapped at the line width (a cell with its paper numbers)."""


StudyDumper.add_representer(dict, _mapping)
StudyDumper.add_representer(list, _sequence)
StudyDumper.add_representer(
    _Section, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=False))
StudyDumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True))


def section(key: str, value) -> str:
    """One top-level key as YAML, after its comment."""
    comment = SECTION_COMMENTS.get(key)
    text = yaml.dump(_Section({key: value}), Dumper=StudyDumper, sort_keys=False, width=110, allow_unicode=True,
                     default_flow_style=False)
    return ("".join(f"# {line}\n" for line in comment.split("\n")) if comment else "") + text


def render(study: PaperStudy) -> str:
    data = as_data(study)
    out = [header_comment(study)]
    for key, value in data.items():
        out.append(section(key, value))
    return "\n".join(out)


def as_data(study: PaperStudy) -> dict:
    """The config as data, in the file's order."""
    ordered = sorted(study.backbones.values(), key=lambda b: backbone_order(b, study))
    return {
        "study": "paper",
        "seed": 7,
        "llm": LLM,
        "instruct": INSTRUCT,
        "placed_by_hand": PLACED_BY_HAND,
        "recipe": RECIPE,
        "train_resources": TRAIN_RESOURCES,
        "eval_resources": EVAL_RESOURCES,
        "objectives": {oid: {"display": display, "kind": kind} for oid, (display, kind)
                       in sorted(study.objectives.items(), key=lambda o: OBJECTIVE_ORDER.index(o[0]))},
        "backbones": {
            b.id: {"family": b.family, **({"members": list(b.members)} if b.members else {}),
                   **({"arch": b.arch} if b.arch else {}), "display": b.display, "params": b.params,
                   "checkpoints": dict(sorted(b.checkpoints.items(), key=lambda c: OBJECTIVE_ORDER.index(c[0])))}
            for b in ordered
        },
        "benchmarks": BENCHMARKS,
        "cells": [_Flow({k: v for k, v in cell.items() if k != "paper" or v}) for cell in study.cells],
        "diagnostics": DIAGNOSTICS,
        "tables": {tid: {"title": title, "paper": paper, **({"in1k_column": True} if tid in study.in1k_tables else {}),
                         "columns": columns, "cells": list(cells)}
                   for tid, title, paper, columns, cells in study.tables},
    }


def header_comment(study: PaperStudy) -> str:
    taps_used = list(dict.fromkeys(c["tap"] for c in study.cells))  # in order of first use
    families = [f for f in FAMILY_ORDER if any(b.family == f for b in study.backbones.values())]
    lines = [
        "# The paper study: every experiment cell of ../shared/paper/paper.md, its checkpoints and tables.",
        "#",
        "# GENERATED by scripts/make_experiments_yaml.py from ../shared/paper/paper_results.csv and",
        "# checkpoint_sources.csv (table row order from paper.md). Edit the script, then rerun it:",
        "#     .venv/bin/python scripts/make_experiments_yaml.py",
        "# Loaded and validated by vlmswap.study (schema: workflow/schemas/experiments.schema.yaml).",
        "#",
        "# A cell is one trained VLM: {backbone}@{objective}@{geometry}@{tap}@{connector}.",
        "#   backbone   one architecture with one encoder size; its checkpoints are keyed by objective.",
        "#              Resolution-specific architectures (MaxViT 384/512, CLIP-L 336, SigLIP 256/384,",
        "#              MambaVision 512/256 21K) are their own backbones, suffixed with the size.",
        "#   objective  what the checkpoint was trained for; display = the paper's \"Pretrained Dataset\".",
        "#   geometry   input size: \"224\" for square, WIDTHxHEIGHT otherwise; fused pairs: the shared size.",
        "#   connector  mlp2 = 2-layer GELU MLP (Prismatic gelu-mlp); mlp3 = 3-layer, the paper's \"(f)\".",
        "#",
        f"# Families: {', '.join(families)}.",
        "#   (checkpoint_sources.csv's clip/siglip/dinov2 are timm ViTs -> vit; its augreg-adapter,",
        "#   uniperceiver-adapter and vit-adapter (DeiT) are ViT-Adapter segmentors -> vit-adapter.)",
        "#",
        "# Feature taps (which tokens the connector sees):",
    ]
    for tap in taps_used:
        meaning = next(m for _, t, m in TAPS if t == tap and m)
        words = meaning.split()
        text, out = f"#   {tap}: ", []
        for w in words:
            if len(text) + len(w) + 1 > 100:
                out.append(text.rstrip())
                text = "#       "
            text += w + " "
        out.append(text.rstrip())
        lines += out
    lines += [
        "#",
        "# Known disagreements between the paper and the official checkpoints (details in",
        "# checkpoint_sources.csv `notes`):",
        "#   - VMamba-B: the paper prints 80M in its IN1K rows and 89M elsewhere; the IN1K weights are",
        "#     the 88.6M s2l15 model, so params says 89M for all rows.",
        "#   - MambaVision \"IN21K\" rows: the only released 21K weights are IN21K-pretrained, then",
        "#     IN1K-finetuned; objective in21k keeps the paper's label.",
        "#   - VMamba COCO at 1333x800: the official stride-2 convs give 84x50 = 4200 tokens; the paper",
        "#     prints 4150 (floor(1333/16) x 50). The geometry follows the paper's image size.",
        "#   - BEiT-L IN22K ADE20K appears twice (UperNet 640 and Mask2Former 640, different checkpoints",
        "#     and encoder sizes): two backbones, beit-l-adapter-upernet-640 and -mask2former-640.",
        "#   - Table 4 (localization of Table 3) is not in paper.md; table-4 lists Table 3's rows.",
        "#     Tables 19/20 (App. F.1) are numbered by inference from the surrounding tables.",
        "#   - Within a table, cells follow paper.md's row order (the CSV groups rows differently).",
        "",
    ]
    return "\n".join(lines)


def _model_name(display: str) -> str:
    return re.match(r"[A-Za-z0-9]+", display).group()  # ViT, CLIP, MaxViT, Vim, BeiTv2, ...


def backbone_order(b: BackboneSpec, study: PaperStudy) -> tuple:
    """Family, then model (in order of first appearance), then encoder size, then resolution."""
    first = min(o.first_row for o in study.backbones.values()
                if o.family == b.family and _model_name(o.display) == _model_name(b.display))
    params = sum(float(p.rstrip("M")) for p in b.params.split("/"))
    return FAMILY_ORDER.index(b.family), first, params, b.size, b.first_row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paper_dir", nargs="?", type=Path, default=DEFAULT_PAPER_DIR,
                        help=f"folder with the paper CSVs and paper.md (default {DEFAULT_PAPER_DIR})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out is not up to date")
    args = parser.parse_args(argv)

    rows = read_rows(args.paper_dir)
    paper_md = (args.paper_dir / "paper.md").read_text().split("\n")
    study = build(rows, paper_md)
    text = render(study)

    loaded = yaml.safe_load(text)
    for key, value in as_data(study).items():
        if loaded[key] != value:
            raise AssertionError(f"rendered YAML does not read back as built: {key}")

    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; run scripts/make_experiments_yaml.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}: {len(study.cells)} cells, {len(study.backbones)} backbones, "
          f"{len(study.objectives)} objectives, {len(study.tables)} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
