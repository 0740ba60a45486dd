"""Benchmarks: read the official files, prompt, parse and score as vlm-evaluation does.

`registry` is imported first on purpose: it defines the records every benchmark module uses and
then builds `BENCHMARKS` from those modules.
"""

from vlmswap.evaluate.registry import (
    BENCHMARKS, AnnotationFileError, Benchmark, BenchmarkScore, Example, Skipped, get_benchmark,
)

__all__ = ["BENCHMARKS", "AnnotationFileError", "Benchmark", "BenchmarkScore", "Example", "Skipped",
           "get_benchmark"]
