"""The one table mapping benchmark names to benchmark objects.

The records and the contract every benchmark follows are in records.py, the shared draws and
metrics in metrics.py, the prompts in prompts.py; no benchmark module imports this one.
"""

from __future__ import annotations

from vlmswap.evaluate.gqa import GQA
from vlmswap.evaluate.ocidref import OCIDRef
from vlmswap.evaluate.pope import POPE
from vlmswap.evaluate.records import Benchmark
from vlmswap.evaluate.refcoco import RefCOCO
from vlmswap.evaluate.tallyqa import TallyQA
from vlmswap.evaluate.textvqa import TextVQA
from vlmswap.evaluate.vizwiz import VizWiz
from vlmswap.evaluate.vqav2 import VQAv2

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
