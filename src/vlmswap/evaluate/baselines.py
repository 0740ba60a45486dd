"""Trivial baselines, scored by each benchmark's own scorer: what a VLM must beat to show it
uses the image at all.

- free-form answers: the most frequent answer of each answer type (taken from the evaluation set
  itself, which makes this baseline stronger than a training-set prior: a conservative bar);
- boxes: one fixed central box `[0.25, 0.25, 0.75, 0.75]` for every expression;
- choice benchmarks: always the most frequent correct choice.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vlmswap.evaluate.records import Example
from vlmswap.evaluate.registry import get_benchmark

CENTRAL_BOX = "[0.25, 0.25, 0.75, 0.75]"


def _is_box(target: Any) -> bool:
    return isinstance(target, (list, tuple)) and len(target) == 4 and all(isinstance(v, (int, float)) for v in target)


def baseline_predictions(name: str, examples: list[Example]) -> tuple[str, dict[str, str]]:
    benchmark = get_benchmark(name)
    if benchmark.mode == "choice":
        choices = list(benchmark.choices)

        def index_of(target: Any) -> int | None:  # POPE: "yes"/"no"; TallyQA: the count 0..15
            if isinstance(target, int) and not isinstance(target, bool):
                return target if target < len(choices) else None
            lowered = [c.lower() for c in choices]
            return lowered.index(str(target).lower()) if str(target).lower() in lowered else None

        counts = Counter(i for i in (index_of(e.target) for e in examples) if i is not None)
        index = counts.most_common(1)[0][0] if counts else 0
        probs = json.dumps([1.0 if i == index else 0.0 for i in range(len(choices))])
        return f"always {choices[index]!r}", {e.id: probs for e in examples}
    if examples and all(_is_box(e.target) for e in examples):
        return f"fixed central box {CENTRAL_BOX}", {e.id: CENTRAL_BOX for e in examples}
    by_type: dict[str, Counter] = defaultdict(Counter)
    for e in examples:
        # the annotators' majority (VQA-v2 states it; a list of answers: its most frequent; GQA: the answer)
        target = e.target if isinstance(e.target, str) else Counter(e.target).most_common(1)[0][0]
        answer = e.meta.get("multiple_choice_answer") or target
        by_type[e.meta.get("answer_type", "all")][answer] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    described = ", ".join(f"{t}: {a!r}" for t, a in sorted(majority.items()))
    return f"majority answer per answer type ({described})", {
        e.id: majority[e.meta.get("answer_type", "all")] for e in examples}


def score_baselines(indexes: dict[str, Path]) -> dict[str, dict[str, Any]]:
    from vlmswap.evaluate.records import IndexFileError
    from vlmswap.evaluate.runner import read_index

    out = {}
    for name, path in indexes.items():
        recorded, subset, examples, _ = read_index(path)
        if recorded != name:  # another benchmark's answers would score 0, silently
            raise IndexFileError(f"{path}: the prepared index of {recorded!r}, not of {name!r}; pass the {name} "
                                 f"index (written by `vlmswap prepare-benchmark --benchmark {name}`)")
        description, predictions = baseline_predictions(name, examples)
        score = get_benchmark(name).score(examples, predictions)
        out[name] = {"baseline": description, "columns": score.columns, "n_samples": score.n_samples,
                     "subset": subset}
    return out
