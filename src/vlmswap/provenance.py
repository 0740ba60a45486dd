"""What produced an artifact, and whether a stored artifact still belongs to what would produce it now.

Three records, each a plain JSON-able dict carrying a `fingerprint` (the sha256 of its canonical
JSON without that key, 16 hex digits):

- **model** (`train.json["provenance"]`, and the resume-state folder's `provenance.json`):
  `spec` (everything the config says about the cell: family, arch, tap, geometry, connector,
  recipe, checkpoint / LLM / instruction-set sources), `inputs` (sha256 of each backbone
  checkpoint file, of the LLM snapshot's files, of the instruction-set json) and `code` (a digest
  of the package's source files);
- **predictions** (the first line of `{benchmark}.predictions.jsonl`): the model fingerprint, the
  sha256 of the weights actually evaluated, the evaluation settings, the prepared index's sha256
  and the code digest;
- **result** (`{benchmark}.json["provenance"]`): the predictions record plus the scorer's version
  (a digest of the benchmark's scoring module).

Training and evaluation resume only from state whose record equals the one they would write now;
other state is moved aside (`<name>.stale-<time>`) with one log line naming the keys that differ.
Tables aggregate a result only if its model fingerprint and weights are those of the cell's
current `train.json` (`result_staleness`).

`model_spec` is also what the train rule passes as `params.spec`, so that Snakemake reruns a cell
exactly when its config changes (../shared/reference/snakemake.md section 5: "params" trigger).
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from pathlib import Path
from typing import Any, Callable, Mapping

# Recipe keys that change how a run is carried out, not what it computes (a cached feature is the
# frozen tower's output for the same image, computed in another batch: equal up to float rounding).
NON_DETERMINING_RECIPE_KEYS = ("checkpoint_every", "cache_features")
PACKAGE_ROOT = Path(__file__).resolve().parent
_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """One text per value: sorted keys, no whitespace (what fingerprints and rule params hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its `fingerprint` added."""
    body = {k: v for k, v in record.items() if k != "fingerprint"}
    return {**body, "fingerprint": digest(body)}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def folder_sha256(path: str | Path) -> str:
    """A digest over every file of a folder (relative name + content), e.g. an LLM snapshot."""
    root = Path(path)
    if root.is_file():
        return file_sha256(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _sources_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.py")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@cache
def code_version() -> str:
    """A digest of the package's Python sources: any code change gives a new version, whatever git
    says (an uncommitted edit included); a README edit does not."""
    return _sources_digest(PACKAGE_ROOT)


@cache
def scorer_version() -> str:
    """A digest of the evaluation package (loaders, parsers, scorers): a scorer fix changes it."""
    return _sources_digest(PACKAGE_ROOT / "evaluate")


# ----------------------------------------------------------------------------------- the records


def _backbone_spec(study, backbone_id: str, objective: str) -> dict[str, Any]:
    backbone = study.backbones[backbone_id]
    spec: dict[str, Any] = {"family": backbone.family, "arch": backbone.arch}
    if backbone.members:  # a fused pair: every tower with its own weights
        spec["members"] = {m: _backbone_spec(study, m, next(iter(study.backbones[m].checkpoints)))
                           for m in backbone.members}
    else:
        spec["checkpoint"] = {objective: dict(backbone.checkpoints[objective])}
    return spec


def model_spec(study, cell) -> dict[str, Any]:
    """Everything the study config says that determines a trained cell (and nothing else: no paths,
    interpreter, GPU count or thread count)."""
    recipe = {k: v for k, v in study.recipe(cell).as_dict().items() if k not in NON_DETERMINING_RECIPE_KEYS}
    return {
        "backbone": _backbone_spec(study, cell.backbone, cell.objective),
        "objective": cell.objective,
        "geometry": str(cell.geometry),
        "tap": cell.tap,
        "connector": cell.connector,
        "recipe": recipe,
        # the sections as written: a fingerprint must not change when the parsed records gain a field
        "llm": study.raw["llm"],
        "instruct": study.raw["instruct"],
    }


def eval_settings(study) -> dict[str, Any]:
    """The evaluation settings that determine predictions (with their defaults made explicit)."""
    return {"batch_size": study.eval.batch_size, "max_new_tokens": study.eval.max_new_tokens}


def model_record(study, cell, checkpoint_files: list[Path], llm_dir: Path, instruct_json: Path) -> dict[str, Any]:
    return sealed({
        "kind": "model",
        "cell": cell.id,
        "spec": model_spec(study, cell),
        "inputs": {
            "backbone_sha256": [file_sha256(p) for p in checkpoint_files],
            "llm_sha256": folder_sha256(llm_dir),
            "instruct_sha256": file_sha256(instruct_json),
        },
        "code": code_version(),
    })


def predictions_record(model: Mapping[str, Any], weights_sha256: str, settings: Mapping[str, Any],
                       index_path: Path) -> dict[str, Any]:
    return sealed({
        "kind": "predictions",
        "model": model["fingerprint"],
        "weights_sha256": weights_sha256,
        "eval": dict(settings),
        "index_sha256": file_sha256(index_path),
        "code": code_version(),
    })


def result_record(predictions: Mapping[str, Any], scorer_version: str) -> dict[str, Any]:
    return sealed({**{k: v for k, v in predictions.items() if k not in ("kind", "fingerprint")},
                   "kind": "result", "predictions": predictions["fingerprint"], "scorer": scorer_version})


# ----------------------------------------------------------------------------------- comparing


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two records (fingerprints left out)."""
    if old is None:
        return ["<no record>"]
    keys = sorted((set(old) | set(new)) - {"fingerprint"})
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif canonical_json(a) != canonical_json(b):
            out.append(f"{prefix}{key}")
    return out


def move_aside(path: Path, why: list[str], log: Callable[[str], None]) -> Path:
    """Rename stale state out of the way (never delete it) and say so in one line."""
    stale = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while stale.exists():
        stale = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    path.rename(stale)
    shown = ", ".join(why[:6]) + (f" and {len(why) - 6} more" if len(why) > 6 else "")
    log(f"{path} was produced by something else (differs in: {shown}); moved aside to {stale.name}, starting over")
    return stale


def result_staleness(result: Mapping[str, Any], train_summary: Mapping[str, Any] | None) -> str | None:
    """Why an evaluation result does not belong to the cell's current model, or None if it does."""
    record = result.get("provenance")
    if not isinstance(record, Mapping):
        return "the result has no provenance (written by an older version); rerun its evaluation"
    if train_summary is None:
        return "the cell has no trained model (train.json) any more"
    model = train_summary.get("provenance", {})
    if record.get("model") != model.get("fingerprint"):
        return "evaluated a model trained from another config, input or code version than the current one"
    if record.get("weights_sha256") != train_summary.get("model_sha256"):
        return "the evaluated weights are not the weights that train.json records (the model file was replaced)"
    return None
