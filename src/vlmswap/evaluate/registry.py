"""The benchmark contract (records, protocol) and the one table mapping benchmark names to objects.

A `Benchmark` reads its official files into `Example`s (plus `Skipped` records for what it could
not use), and scores a mapping `example id -> generated text` into a `BenchmarkScore` whose
numbers are percentages. Every benchmark module imports the records from here; this module
imports the benchmark modules last, once the records exist (the package `__init__` imports this
module first, so that order holds whichever module is imported first).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable


@dataclass
class Example:
    id: str  # stable per benchmark (question_id / sent_id as str)
    image: Path  # the image file (an index stores it relative; read_index resolves it beside the index)
    prompt: str  # the human message, before the model side applies the Vicuna template
    target: Any  # what the scorer needs (the 10 answers; the normalized box)
    meta: dict = field(default_factory=dict)  # question_type, answer_type, split, ...


@dataclass
class Skipped:
    id: str
    path: str  # the file at fault
    reason: str


@dataclass
class BenchmarkScore:
    columns: dict[str, float]  # table column -> headline score in percent (0..100)
    metrics: dict[str, float]  # sub-metrics in percent
    n_samples: int  # examples scored
    per_example: dict[str, dict]  # id -> {"prediction", "parsed", "score" or "correct", ...}


@runtime_checkable
class Benchmark(Protocol):
    name: str  # registry key
    mode: str  # "generate" (free-form greedy text) or "choice" (first-token probabilities)
    columns: tuple[str, ...]  # the table columns this benchmark fills
    # the official files (relative to the root) its index is read from, images aside; the workflow
    # declares them as inputs of the benchmark's preparation (alternative locations: all listed)
    annotation_files: tuple[str, ...]

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]: ...

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore: ...


class AnnotationFileError(RuntimeError):
    """An annotation file that is missing or cannot be read; the message names the file and what
    was expected in it."""


# -- helpers shared by the benchmark modules --------------------------------------------------

SLIM_SEED = 21  # vlm-evaluation shuffles example ids once with random.Random(21) (prismatic_spec.md 3.1)

_T = TypeVar("_T")


def subset_size(subset: str) -> int | None:
    """None for "full", N for "slim-N"; anything else is a ValueError."""
    if subset == "full":
        return None
    m = re.fullmatch(r"slim-(\d+)", subset)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"unknown subset {subset!r}: expected 'full' or 'slim-N' with N > 0 (e.g. 'slim-1024')")
    return int(m.group(1))


def draw_subset(records: Sequence[_T], subset: str) -> list[_T]:
    """Shuffle once with Random(21) and take the first N, as vlm-evaluation builds its slim sets
    (/work/shared/reference/prismatic_spec.md 3.1). The full set comes back in the same shuffled
    order. `records` (examples and skipped alike, so that a broken record does not move the
    others) are in the order the official files list them; the permutation depends only on
    their count, so membership matches the harness whenever that order does."""
    n = subset_size(subset)
    order = list(range(len(records)))
    random.Random(SLIM_SEED).shuffle(order)
    if n is not None:
        order = order[:n]
    return [records[i] for i in order]


def split_records(records: Sequence[Example | Skipped]) -> tuple[list[Example], list[Skipped]]:
    return [r for r in records if isinstance(r, Example)], [r for r in records if isinstance(r, Skipped)]


def read_json_file(path: Path, expected: str) -> Any:
    """Read an annotation JSON file, or raise AnnotationFileError naming it and what it should hold."""
    if not path.is_file():
        raise AnnotationFileError(f"annotation file not found: {path} (expected {expected})")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e} (expected {expected})") from e


def require_predictions(name: str, examples: Sequence[Example], predictions: Mapping[str, str]) -> None:
    """Scoring needs a prediction for every example (vlm-evaluation asserts the count too)."""
    missing = [e.id for e in examples if e.id not in predictions]
    if missing:
        raise ValueError(f"{name}: {len(missing)} of {len(examples)} examples have no prediction "
                         f"(first: {', '.join(missing[:5])})")
    if not examples:
        raise ValueError(f"{name}: nothing to score (no examples)")


# -- the registry ------------------------------------------------------------------------------

from vlmswap.evaluate.gqa import GQA  # noqa: E402
from vlmswap.evaluate.ocidref import OCIDRef  # noqa: E402
from vlmswap.evaluate.pope import POPE  # noqa: E402
from vlmswap.evaluate.refcoco import RefCOCO  # noqa: E402  (needs the records above)
from vlmswap.evaluate.tallyqa import TallyQA  # noqa: E402
from vlmswap.evaluate.textvqa import TextVQA  # noqa: E402
from vlmswap.evaluate.vizwiz import VizWiz  # noqa: E402
from vlmswap.evaluate.vqav2 import VQAv2  # noqa: E402

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        VQAv2(),
        GQA(),
        VizWiz(),
        TextVQA(),
        POPE(),
        TallyQA(),
        RefCOCO("refcoco"),
        RefCOCO("refcoco+"),
        RefCOCO("refcocog"),
        OCIDRef(),
    )
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}") from None
