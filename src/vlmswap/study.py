"""The study: config model, validation with clear messages, grid expansion, cell ids, tables.

A study config (config/experiments.yaml for the paper, config/mini.yaml for the mini world) is
checked twice on load: against the JSON schema in workflow/schemas/ (keys, types, allowed values),
then for the cross references a schema cannot express (a cell's backbone must exist and carry a
checkpoint for the cell's objective, a table may list only cells of the study, ...). Every error
names the file, the key path and what would be accepted. The other sections (recipe, objectives,
LLM, benchmarks, mini world, evaluation, resources) are parsed once into the typed records of
vlmswap.sections; `Study.raw` keeps the config as loaded for what must see it as written.

This module is the only place that makes a cell id:
`{backbone}@{objective}@{geometry}@{tap}@{connector}`, e.g. `vmamba-t@coco-det@1333x800@stage3-outnorm@mlp3`.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from vlmswap.image import Geometry
from vlmswap.sections import (LLM, MINI_LLM_DEFAULTS, BenchmarkInputs, ConfigError, EvalSettings, InstructionSet,
                              JobResources, MiniWorld, Objective, Recipe, parse_benchmarks, parse_eval, parse_mini,
                              parse_objectives)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "experiments.schema.yaml"

CONNECTORS = ("mlp2", "mlp3")

# Benchmark id -> the table columns its result fills (TextVQA is generated once and scored twice,
# with and without OCR tokens, as vlm-evaluation does: ../shared/reference/prismatic_spec.md 3.2).
BENCHMARK_COLUMNS: dict[str, tuple[str, ...]] = {
    "vqa-v2": ("vqa-v2",),
    "gqa": ("gqa",),
    "vizwiz": ("vizwiz",),
    "textvqa": ("textvqa-ocr", "textvqa-pure"),
    "pope": ("pope",),
    "tallyqa": ("tallyqa",),
    "refcoco": ("refcoco",),
    "refcoco+": ("refcoco+",),
    "refcocog": ("refcocog",),
    "ocid-ref": ("ocid-ref",),
}
VQA_COLUMNS = ("vqa-v2", "gqa", "vizwiz", "textvqa-ocr", "textvqa-pure", "pope", "tallyqa")
LOC_COLUMNS = ("refcoco", "refcoco+", "refcocog", "ocid-ref")


class UnknownIdError(ConfigError):
    """An id given on the command line (cell, table, benchmark, backbone, ...) that the study does not
    have: a ConfigError naming the file, the section it would be in, a close match and what exists
    (not a KeyError, whose message would come out quoted, under a traceback)."""

    def __init__(self, study: "Study", key_path: str, what: str, value: str, known, allowed: str | None = None):
        known = [str(k) for k in known]
        super().__init__(study.path, key_path, f"no {what} {value!r} in study {study.name!r}{_suggest(value, known)}",
                         allowed if allowed is not None else (known or "none"))


@dataclass(frozen=True)
class Cell:
    """One experiment: a backbone checkpoint seen through one interface (geometry, tap, connector)."""

    backbone: str
    objective: str
    geometry: Geometry
    tap: str
    connector: str
    recipe: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The paper's numbers for this cell (`in1k_acc` and score / weighted columns, percent); empty
    # for a cell the paper does not have. Never part of the cell's identity or its training.
    paper: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return "@".join((self.backbone, self.objective, str(self.geometry), self.tap, self.connector))

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Backbone:
    id: str
    family: str
    arch: str | Mapping[str, Any] | None
    display: str
    params: str
    checkpoints: Mapping[str, Mapping[str, Any]]
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    columns: str  # "vqa" | "loc" | "all"
    cells: tuple[str, ...]
    paper: str = ""
    in1k_column: bool = False  # the paper's Tables 1-2 show the checkpoints' IN1K accuracy


@dataclass
class Study:
    """A validated study config: every section typed (vlmswap.sections). `raw` keeps the config as
    loaded, for what must see it as written (the diagnostics' blocks, the preflight's hand-placed list)."""

    name: str
    path: Path
    raw: dict[str, Any]
    backbones: dict[str, Backbone]
    cells: list[Cell]
    tables: dict[str, Table]
    objectives: dict[str, Objective] = field(default_factory=dict)
    llm: LLM | None = None
    instruct: InstructionSet | None = None
    benchmark_inputs: dict[str, BenchmarkInputs] = field(default_factory=dict)
    mini: MiniWorld | None = None  # None: not a mini-world study
    eval: EvalSettings = field(default_factory=EvalSettings)
    train_resources: JobResources = field(default_factory=JobResources)
    eval_resources: JobResources = field(default_factory=JobResources)
    seed: int = 0
    mirror: str | None = None
    trackers: tuple[str, ...] = ()
    recipes: dict[str, Recipe] = field(default_factory=dict)  # cell id -> its recipe

    @property
    def benchmarks(self) -> list[str]:
        return list(self.benchmark_inputs)

    @property
    def columns(self) -> list[str]:
        """The table columns this study fills, in the paper's order."""
        wanted = {c for b in self.benchmarks for c in BENCHMARK_COLUMNS[b]}
        return [c for c in VQA_COLUMNS + LOC_COLUMNS if c in wanted]

    def cell(self, cell_id: str) -> Cell:
        # a dict made at the first call (the rules look a cell up per job: ~700 times for the paper grid)
        by_id = self.__dict__.get("_cells_by_id")
        if by_id is None or len(by_id) != len(self.cells):
            by_id = self.__dict__["_cells_by_id"] = {c.id: c for c in self.cells}
        if cell_id in by_id:
            return by_id[cell_id]
        raise UnknownIdError(self, "cells", "cell", cell_id, self.cell_ids,
                             allowed=f"the {len(self.cells)} of `vlmswap cells --config {self.path}`")

    @property
    def cell_ids(self) -> list[str]:
        return [c.id for c in self.cells]

    def recipe(self, cell: Cell) -> Recipe:
        """The study recipe with the cell's overrides applied (parsed and checked on load)."""
        return self.recipes[cell.id]

    def checkpoint_source(self, backbone: str, objective: str) -> Mapping[str, Any]:
        if backbone not in self.backbones:
            raise UnknownIdError(self, "backbones", "backbone", backbone, self.backbones)
        checkpoints = self.backbones[backbone].checkpoints
        if objective not in checkpoints:
            raise UnknownIdError(self, f"backbones.{backbone}.checkpoints", f"checkpoint of {backbone!r} for objective",
                                 objective, checkpoints)
        return checkpoints[objective]

    def cells_of_table(self, table_id: str) -> list[Cell]:
        return [self.cell(c) for c in self.tables[table_id].cells]


# ----------------------------------------------------------------------------------------------
# Loading and validation


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML file that has one key twice (YAML itself keeps the last one silently)."""

    def __init__(self, key_path: str, key: str, line: int, first_line: int):
        self.key_path, self.key, self.line, self.first_line = key_path, key, line, first_line
        super().__init__(f"{key_path}: duplicate key {key!r} at line {line} (first at line {first_line})")


def read_yaml(path: str | Path) -> Any:
    """yaml.safe_load of a file through libyaml's C parser where PyYAML has it (about 10x faster: the
    paper config is parsed at every Snakemake start), the pure-Python one otherwise. A key written
    twice in one mapping (a second `lr:`, a pasted backbone block) raises DuplicateKeyError instead
    of the last one winning."""
    with open(path) as f:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(f)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _reject_duplicate_keys(node, [], set())
            return loader.construct_document(node)
        finally:
            loader.dispose()


def _reject_duplicate_keys(node: yaml.Node, parts: list, visited: set[int]) -> None:
    if id(node) in visited:  # an alias: its node was checked where the anchor is
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue  # `<<: *anchor` may repeat what the mapping overrides
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                raise DuplicateKeyError(_key_path([*parts, key.value]), key.value, line, first[key.tag, key.value])
            first[key.tag, key.value] = line
            _reject_duplicate_keys(value, [*parts, key.value], visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, [*parts, i], visited)


@cache
def _schema() -> dict[str, Any]:
    return read_yaml(SCHEMA_PATH)


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _schema_error(path: Path, error) -> ConfigError:
    """Turn a jsonschema error into a ConfigError naming the key path and the allowed values."""
    key = _key_path(error.absolute_path)
    validator, spec = error.validator, error.validator_value
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in error.schema.get("properties", {})]
        wrong = extra[0] if extra else "?"
        return ConfigError(path, _key_path([*error.absolute_path, wrong]),
                           f"unknown key {wrong!r}{_suggest(wrong, allowed)}", allowed or None)
    if validator == "enum":
        return ConfigError(path, key, f"{error.instance!r} is not allowed", spec)
    if validator == "required":
        return ConfigError(path, key, error.message.replace("'", "") + "; add it")
    if validator == "oneOf" and isinstance(error.instance, dict):
        kinds = ["url", "hub", "timm", "path", "mini", "members"]
        given = [k for k in kinds if k in error.instance]
        return ConfigError(path, key, f"a source needs exactly one of its kinds, got {given or 'none'}", kinds)
    if validator == "pattern":
        return ConfigError(path, key, f"{error.instance!r} does not match the pattern {spec!r}")
    if validator == "type" and "number" in ([spec] if isinstance(spec, str) else spec) \
            and isinstance(error.instance, str) and _as_number(error.instance) is not None:
        # YAML 1.1 (PyYAML) reads a float only with a dot: `1e-3` is a string, `1.0e-3` a number
        return ConfigError(path, key, f"{error.message}: YAML reads {error.instance} as a string; write "
                           f"{_as_number(error.instance)}")
    return ConfigError(path, key, error.message)


def _as_number(text: str) -> str | None:
    """How to write `text` so that YAML reads a float (`1e-3` -> `1.0e-3`, `2e5` -> `2.0e+5`), for a
    number in exponent form that YAML 1.1 (PyYAML) took for a string: it wants a dot and a signed exponent."""
    match = re.fullmatch(r"([-+]?[0-9]+)(\.[0-9]*)?[eE]([-+]?)([0-9]+)", text.strip())
    if match is None:
        return None
    whole, fraction, sign, exponent = match.groups()
    return f"{whole}{fraction or '.0'}e{sign or '+'}{exponent}"


def load_study(path: str | Path) -> Study:
    """Load, validate and expand a study config file."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found; pass config/mini.yaml or config/experiments.yaml") from None
    except DuplicateKeyError as e:
        raise ConfigError(path, e.key_path, f"duplicate key {e.key!r} at lines {e.first_line} and {e.line} (YAML "
                          "would silently keep the last); delete one, or rename one if both are meant") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"not valid YAML: {e}") from None
    return study_from_dict(data, path)


def study_from_dict(data: Any, path: str | Path = "<config>") -> Study:
    import jsonschema

    path = Path(path)
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the config must be a mapping of keys (study, llm, backbones, cells, ...)")
    data = copy.deepcopy(data)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the deepest error of the first failing branch tells the user most
        first = max(errors[:1] + [e for e in errors if list(e.absolute_path)[:1] == list(errors[0].absolute_path)[:1]],
                    key=lambda e: len(e.absolute_path))
        raise _schema_error(path, first)
    return _build(data, path)


def _local_sources(data: dict[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(key path, source) of every source in the config that is a file or folder on this machine."""
    found = [(f"backbones.{bid}.checkpoints.{objective}", source)
             for bid, spec in data["backbones"].items() for objective, source in spec["checkpoints"].items()]
    found.append(("llm.source", data.get("llm", {}).get("source", {})))
    instruct = data.get("instruct", {})
    found.append(("instruct.source", instruct.get("source", {})))
    found += [(f"instruct.files[{i}]", f) for i, f in enumerate(instruct.get("files", []))]
    for name, spec in data["benchmarks"].items():
        if isinstance(spec, Mapping):
            found += [(f"benchmarks.{name}.files[{i}]", f) for i, f in enumerate(spec.get("files", []))]
    return [(key, source) for key, source in found if isinstance(source, Mapping)]


def _check_local_sources(data: dict[str, Any], path: Path) -> None:
    """A `path:` or `file://` source that does not exist fails here, before any job: a fetch job that
    fails later has already had its old output removed by Snakemake, and every cell trained on it
    would be retrained once the config is fixed."""
    import urllib.parse

    for key, source in _local_sources(data):
        if "path" in source:
            where, field = Path(source["path"]), "path"
        elif str(source.get("url", "")).startswith("file://"):
            where, field = Path(urllib.parse.unquote(urllib.parse.urlparse(source["url"]).path)), "url"
        else:
            continue
        if not where.exists():
            raise ConfigError(path, f"{key}.{field}",
                              f"local source {where} does not exist (relative paths are read from {Path.cwd()}, "
                              "where the workflow runs); build or copy it there, or correct the path")


def _check_tagged_arch(path: Path, key: str, spec: Mapping[str, Any]) -> None:
    """A timm weight tag names the model that gets built (vlm.backbone_arch builds the tag, so that its
    pretrained_cfg gives the normalization): an `arch` naming another model would be ignored."""
    arch = spec.get("arch")
    if isinstance(arch, Mapping) and spec["family"] == "timm":
        arch = arch.get("model")
    if not isinstance(arch, str):
        return
    model = arch.split(".")[0]
    for objective, source in spec["checkpoints"].items():
        tag = str(source.get("timm", ""))
        if tag and tag.split(".")[0] != model:
            raise ConfigError(path, f"{key}.arch",
                              f"arch names {model!r} but its weights {key}.checkpoints.{objective}.timm are "
                              f"{tag!r}, a {tag.split('.')[0]!r} checkpoint (the tag's model is what gets built); "
                              f"name one model in both: `arch: {tag.split('.')[0]}`, or a {model} tag "
                              f"(timm.list_pretrained('{model}.*') lists them)")


def _build(data: dict[str, Any], path: Path) -> Study:
    from vlmswap.vision.registry import FAMILIES  # the registry is the only list of families

    objectives = data["objectives"]
    backbones: dict[str, Backbone] = {}
    for bid, spec in data["backbones"].items():
        key = f"backbones.{bid}"
        if spec["family"] not in FAMILIES:
            raise ConfigError(path, f"{key}.family", f"unknown family {spec['family']!r}", sorted(FAMILIES))
        for objective in spec["checkpoints"]:
            if objective not in objectives:
                raise ConfigError(path, f"{key}.checkpoints.{objective}",
                                  f"objective {objective!r} is not declared under `objectives`", sorted(objectives))
        members = tuple(spec.get("members", ()))
        for m in members:
            if m not in data["backbones"]:
                raise ConfigError(path, f"{key}.members", f"member {m!r} is not a backbone of this study",
                                  sorted(data["backbones"]))
        if spec["family"] == "fused" and len(members) < 2:
            raise ConfigError(path, f"{key}.members", "a fused backbone needs at least two members")
        for m in members:  # a tower's weights are its one checkpoint: the fetched files map to towers
            if len(data["backbones"][m]["checkpoints"]) != 1 or data["backbones"][m].get("members"):
                raise ConfigError(path, f"{key}.members",
                                  f"member {m!r} must be a plain backbone with exactly one checkpoint "
                                  f"(it has {sorted(data['backbones'][m]['checkpoints'])})")
        _check_tagged_arch(path, key, spec)
        backbones[bid] = Backbone(bid, spec["family"], spec.get("arch"), spec.get("display", bid),
                                  str(spec.get("params", "")), spec["checkpoints"], members)

    _check_local_sources(data, path)

    for name in data["benchmarks"]:
        if name not in BENCHMARK_COLUMNS:
            raise ConfigError(path, f"benchmarks.{name}", f"unknown benchmark{_suggest(name, BENCHMARK_COLUMNS)}",
                              sorted(BENCHMARK_COLUMNS))

    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(data["cells"]):
        key = f"cells[{i}]"
        bid, objective = spec["backbone"], spec["objective"]
        if bid not in backbones:
            raise ConfigError(path, f"{key}.backbone", f"unknown backbone {bid!r}{_suggest(bid, backbones)}",
                              sorted(backbones))
        if objective not in backbones[bid].checkpoints:
            raise ConfigError(path, f"{key}.objective",
                              f"backbone {bid!r} has no checkpoint for objective {objective!r}; "
                              f"add one under backbones.{bid}.checkpoints", sorted(backbones[bid].checkpoints))
        family = FAMILIES[backbones[bid].family]
        if not family.accepts(spec["tap"]):
            raise ConfigError(path, f"{key}.tap", f"family {family.name!r} has no tap {spec['tap']!r}",
                              family.allowed_taps if family.tap_pattern else sorted(family.taps))
        try:
            geometry = Geometry.parse(spec["geometry"])
        except ValueError as e:
            raise ConfigError(path, f"{key}.geometry", str(e), "224 or WIDTHxHEIGHT such as 1333x800") from None
        cell = Cell(bid, objective, geometry, spec["tap"], spec["connector"], spec.get("recipe", {}),
                    {k: float(v) for k, v in spec.get("paper", {}).items()})
        if cell.id in seen:
            raise ConfigError(path, key, f"duplicate cell {cell.id!r} (also cells[{seen[cell.id]}])")
        seen[cell.id] = i
        cells.append(cell)

    tables: dict[str, Table] = {}
    stage_table = _stage_ablation(data, path, backbones, cells, seen)
    for tid, spec in data["tables"].items():
        for j, cid in enumerate(spec["cells"]):
            if cid not in seen:
                raise ConfigError(path, f"tables.{tid}.cells[{j}]", _not_a_cell(cid, seen, backbones))
        tables[tid] = Table(tid, spec["title"], spec["columns"], tuple(spec["cells"]), spec.get("paper", ""),
                            bool(spec.get("in1k_column", False)))
    if stage_table is not None:
        if stage_table.id in tables:
            raise ConfigError(path, f"tables.{stage_table.id}",
                              "this table id is made by diagnostics.stage_ablation; rename the table")
        tables[stage_table.id] = stage_table
    for name in ("profile", "collapse", "linear_probe", "figure2"):
        for j, cid in enumerate(data.get("diagnostics", {}).get(name, {}).get("cells", [])):
            if cid not in seen:
                raise ConfigError(path, f"diagnostics.{name}.cells[{j}]", _not_a_cell(cid, seen, backbones))
    llm = LLM(data["llm"]["id"], data["llm"]["source"])
    _check_mini_llm(llm, path)
    _check_probed_llm(data, path, llm)
    datasets = data.get("diagnostics", {}).get("linear_probe", {}).get("datasets", [])
    if "mini" not in data and "mini-classify" in datasets:
        raise ConfigError(path, "diagnostics.linear_probe.datasets", "mini-classify exists only in the mini world; "
                          "probe the paper's backbones on torchvision datasets",
                          "cifar10, cifar100, dtd, flowers102, oxford-pets, food101, eurosat")
    recipes = {}
    keys = {cell_id: f"cells[{i}].recipe" for cell_id, i in seen.items() if cells[i].recipe}
    train_resources = JobResources.parse(data.get("train_resources"))
    for cell in cells:
        recipes[cell.id] = Recipe.parse({**data["recipe"], **cell.recipe}, path, keys.get(cell.id, "recipe"))
        _check_batch(recipes[cell.id], train_resources, path, keys.get(cell.id, "recipe"), cell.recipe)
    return Study(data["study"], path, data, backbones, cells, tables,
                 objectives=parse_objectives(data),
                 llm=llm,
                 instruct=InstructionSet(data["instruct"]["id"], data["instruct"]["source"],
                                         tuple(data["instruct"].get("files", ()))),
                 benchmark_inputs=parse_benchmarks(data), mini=parse_mini(data), eval=parse_eval(data),
                 train_resources=train_resources,
                 eval_resources=JobResources.parse(data.get("eval_resources")),
                 seed=int(data.get("seed", 0)), mirror=data.get("mirror"), trackers=tuple(data.get("trackers", ())),
                 recipes=recipes)


def _not_a_cell(cell_id: str, seen: Mapping[str, int], backbones: Mapping[str, Backbone]) -> str:
    """Why a listed id names no cell: a well-formed id (a backbone with a checkpoint for the objective,
    a geometry, a tap of its family, a connector) is a cell the grid lacks; any other, a typo."""
    from vlmswap.vision.registry import FAMILIES

    problem = f"{cell_id!r} is not a cell of this study"
    parts = str(cell_id).split("@")
    if len(parts) == 5 and parts[0] in backbones and parts[1] in backbones[parts[0]].checkpoints \
            and FAMILIES[backbones[parts[0]].family].accepts(parts[3]) and parts[4] in CONNECTORS:
        try:
            well_formed = str(Geometry.parse(parts[2])) == parts[2]
        except ValueError:
            well_formed = False
        if well_formed:
            cell = ", ".join(f"{k}: {v}" for k, v in zip(("backbone", "objective", "geometry", "tap", "connector"),
                                                        (parts[0], parts[1], f'"{parts[2]}"', parts[3], parts[4])))
            problem += f"; add it under `cells:` as `- {{{cell}}}`"
    return problem + _suggest(cell_id, seen)


def _check_mini_llm(llm: LLM, path: Path) -> None:
    """A mini LLM's fields are a LlamaConfig's that build_mini_llm reads; it would ignore any other."""
    for name, value in llm.source.get("mini", {}).items():
        key = f"llm.source.mini.{name}"
        if name not in MINI_LLM_DEFAULTS:
            raise ConfigError(path, key, f"unknown field {name!r}{_suggest(name, MINI_LLM_DEFAULTS)} (the mini LLM "
                              "would be built without it)", sorted(MINI_LLM_DEFAULTS))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(path, key, f"{value!r} is not a positive integer")


def _check_probed_llm(data: dict[str, Any], path: Path, llm: LLM) -> None:
    """The collapse probes and Figure 2 read the boxes of one RefCOCO benchmark the study evaluates,
    and hidden states of LLM layers that exist (checked where the config builds the LLM; a
    downloaded LLM's layer count is known only to its job)."""
    diagnostics = data.get("diagnostics", {})
    for name in ("collapse", "figure2"):
        if name not in diagnostics:
            continue
        spec, key = diagnostics[name], f"diagnostics.{name}"
        benchmark = spec.get("benchmark", "refcoco")  # as diagnostics.settings defaults it
        if benchmark not in data["benchmarks"]:
            evaluated = [b for b in ("refcoco", "refcoco+", "refcocog") if b in data["benchmarks"]]
            given = "" if "benchmark" in spec else " (the default)"
            fix = (f"name one the study evaluates, or add {benchmark} under `benchmarks:`" if evaluated else
                   f"add {benchmark} under `benchmarks:`, or remove {key}")
            raise ConfigError(path, f"{key}.benchmark", f"{benchmark!r}{given} is not a benchmark of this study, "
                              f"and {name} reads that benchmark's prepared index and evaluation; {fix}", evaluated or None)
        if llm.layers is None:
            continue
        layers = spec["llm_layers"] if name == "collapse" else [spec["layer"]]
        first = 0 if name == "collapse" else 1  # hidden state 0 is the embeddings, which Figure 2 does not show
        for j, layer in enumerate(layers):
            if not first <= layer <= llm.layers:
                where = f"{key}.llm_layers[{j}]" if name == "collapse" else f"{key}.layer"
                raise ConfigError(path, where, f"the mini LLM has no layer {layer}: it has {llm.layers} decoder layers "
                                  f"(llm.source.mini.num_hidden_layers), so {first}..{llm.layers}")


def _check_batch(recipe: Recipe, resources: JobResources, path: Path, key: str, override: Mapping[str, Any]) -> None:
    """The global batch must be whole micro-batches on every rank of the train job (what
    train.schedule.accumulation_steps needs): checked on load, not in the job hours later."""
    gpus = resources.nodes * resources.gpus_per_node
    ranks = max(gpus, 1)  # no GPU: one process on the CPU
    per_step = recipe.per_device_batch * ranks
    if recipe.global_batch % per_step == 0:
        return
    if "per_device_batch" in override:
        key = f"{key}.per_device_batch"
    elif "global_batch" in override:
        key = f"{key}.global_batch"
    else:
        key = "recipe.per_device_batch"
    if gpus > 1:
        world = f"{gpus} GPUs (train_resources: {resources.nodes} nodes x {resources.gpus_per_node})"
    else:
        world = "1 GPU" if gpus else "1 process (train_resources has no GPU)"
    problem = "is more than" if per_step > recipe.global_batch else "does not divide"
    multiple = -(-recipe.global_batch // per_step) * per_step
    raise ConfigError(path, key, f"per_device_batch {recipe.per_device_batch} x {world} = {per_step} {problem} "
                      f"global_batch {recipe.global_batch}, so no whole number of accumulation steps makes the "
                      f"global batch; make global_batch a multiple of {per_step} (e.g. {multiple}), or change "
                      "per_device_batch or train_resources")


STAGE_TABLE = "stage-ablation"


def _stage_ablation(data: dict[str, Any], path: Path, backbones: dict[str, Backbone], cells: list[Cell],
                    seen: dict[str, int]) -> Table | None:
    """Appendix B: every (backbone, tap) of `diagnostics.stage_ablation` becomes a cell (added to
    `cells` unless the grid has it already) and one table, `stage-ablation`, lists them."""
    from vlmswap.vision.registry import FAMILIES

    spec = data.get("diagnostics", {}).get("stage_ablation")
    if not spec:
        return None
    key = "diagnostics.stage_ablation"
    geometry = Geometry.parse(str(spec["geometry"]))
    missing = [t for t in spec["taps"] if t not in spec["tokens"]]
    if missing:
        raise ConfigError(path, f"{key}.tokens", f"no expected token count for tap(s) {missing}; add them")
    ids = []
    for j, bid in enumerate(spec["backbones"]):
        if bid not in backbones:
            raise ConfigError(path, f"{key}.backbones[{j}]", f"unknown backbone {bid!r}{_suggest(bid, backbones)}",
                              sorted(backbones))
        if spec["objective"] not in backbones[bid].checkpoints:
            raise ConfigError(path, f"{key}.objective", f"backbone {bid!r} has no checkpoint for objective "
                              f"{spec['objective']!r}", sorted(backbones[bid].checkpoints))
        family = FAMILIES[backbones[bid].family]
        for tap in spec["taps"]:
            if not family.accepts(tap):
                raise ConfigError(path, f"{key}.taps", f"family {family.name!r} (backbone {bid!r}) has no tap {tap!r}",
                                  family.allowed_taps)
            cell = Cell(bid, spec["objective"], geometry, tap, spec["connector"])
            if cell.id not in seen:
                seen[cell.id] = len(cells)
                cells.append(cell)
            ids.append(cell.id)
    title = spec.get("title", "Appendix B: feature extraction stage of the hierarchical backbones")
    return Table(STAGE_TABLE, title, "all", tuple(ids), "Appendix B")

