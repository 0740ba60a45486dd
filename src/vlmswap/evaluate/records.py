"""What every benchmark reads and returns: the `Example` / `Skipped` / `BenchmarkScore` records,
the `Benchmark` contract, the errors the command line reports as one line, and the readers of
annotation files that fill the records.

A `Benchmark` reads its official files into `Example`s (plus `Skipped` records for what it could
not use), and scores a mapping `example id -> generated text` into a `BenchmarkScore` whose
numbers are percentages. This module depends on nothing else in the package (no torch import).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


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


class PredictionsFileError(ValueError):
    """A predictions file that cannot be trusted; the message names the file, the line and the fix."""


class IndexFileError(ValueError):
    """A prepared benchmark index that cannot be read, or not of the benchmark asked for; the message
    names the file and the fix."""


# -- building records ----------------------------------------------------------------------------


def is_int(x: Any) -> bool:
    """A JSON integer (booleans are ints in Python, not in the files)."""
    return isinstance(x, int) and not isinstance(x, bool)


def skipper(example_id: str, path: Path) -> Callable[..., Skipped]:
    """`bad(reason, at=path)`: the Skipped record of one example, blaming `path` unless told otherwise
    (an image file, the other annotation file)."""

    def bad(reason: str, at: Path = path) -> Skipped:
        return Skipped(example_id, str(at), reason)

    return bad


def split_records(records: Sequence[Example | Skipped]) -> tuple[list[Example], list[Skipped]]:
    return [r for r in records if isinstance(r, Example)], [r for r in records if isinstance(r, Skipped)]


def require_predictions(name: str, examples: Sequence[Example], predictions: Mapping[str, str]) -> None:
    """Scoring needs a prediction for every example (vlm-evaluation asserts the count too)."""
    missing = [e.id for e in examples if e.id not in predictions]
    if missing:
        raise ValueError(f"{name}: {len(missing)} of {len(examples)} examples have no prediction "
                         f"(first: {', '.join(missing[:5])})")
    if not examples:
        raise ValueError(f"{name}: nothing to score (no examples)")


# -- reading annotation files --------------------------------------------------------------------


def read_json_file(path: Path, expected: str) -> Any:
    """Read an annotation JSON file, or raise AnnotationFileError naming it and what it should hold."""
    if not path.is_file():
        raise AnnotationFileError(f"annotation file not found: {path} (expected {expected})")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e} (expected {expected})") from e


def read_json_lines(path: Path, expected: str) -> list[tuple[int, Any]]:
    """(line number, parsed value or the JSONDecodeError) for each non-blank line; a missing or
    unreadable file is an AnnotationFileError naming it. A line that is not JSON keeps its place,
    so the records after it stay aligned with whatever they are matched to."""
    if not path.is_file():
        raise AnnotationFileError(f"annotation file not found: {path} (expected {expected})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e} (expected {expected})") from e
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((number, e))
    return out
