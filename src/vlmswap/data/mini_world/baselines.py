"""The trivial baselines recorded in `world.json`: each benchmark read back from the files just
written, through its own loader, and scored by its own scorer with the baseline predictions of
`vlmswap.evaluate.baselines` (the same numbers as the study's baseline rows for the full set)."""

from __future__ import annotations

from pathlib import Path

from vlmswap.evaluate.baselines import baseline_predictions
from vlmswap.evaluate.registry import get_benchmark

# benchmark -> its root under the world (as config/mini.yaml's benchmark roots)
BENCHMARK_ROOTS = {
    "vqa-v2": "vqa-v2", "gqa": "gqa", "vizwiz": "vizwiz", "textvqa": "textvqa", "pope": "pope",
    "tallyqa": "tallyqa", "refcoco": "refcoco", "refcoco+": "refcoco", "refcocog": "refcoco",
    "ocid-ref": "ocid-ref",
}


def world_baselines(out: Path) -> dict[str, dict]:
    """benchmark -> {"baseline": what it predicts, "columns": {column: percent}, "n_samples"}."""
    found = {}
    for name, root in BENCHMARK_ROOTS.items():
        benchmark = get_benchmark(name)
        examples, _ = benchmark.load(out / root, "full")
        description, predictions = baseline_predictions(name, examples)
        score = benchmark.score(examples, predictions)
        found[name] = {"baseline": description, "columns": {k: round(v, 2) for k, v in score.columns.items()},
                       "n_samples": score.n_samples}
    return found
