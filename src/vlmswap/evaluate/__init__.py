"""Benchmarks: read the official files, prompt, parse and score as vlm-evaluation does.

records.py (what a benchmark reads and returns), metrics.py (draws and scores) and prompts.py
depend on nothing in the package; each benchmark module depends only on them (and on boxes.py /
vqa_normalize.py); registry.py maps names to benchmarks.
"""

from vlmswap.evaluate.records import AnnotationFileError, Benchmark, BenchmarkScore, Example, Skipped
from vlmswap.evaluate.registry import BENCHMARKS, get_benchmark

__all__ = ["BENCHMARKS", "AnnotationFileError", "Benchmark", "BenchmarkScore", "Example", "Skipped",
           "get_benchmark"]
