"""The settings of the diagnostics as the workflow fingerprints them, read from the study config.

Kept free of torch: the Snakefile puts them in its rules' params, and every dry run of the paper
grid evaluates those params (importing torch there cost 3 s of the dry run's 9, issue 16).
"""

from __future__ import annotations

from vlmswap.study import Study

__all__ = ["collapse_settings", "figure2_settings", "profile_settings"]


def collapse_settings(study: Study) -> dict:
    """What a collapse diagnosis depends on: the probed LLM layers, the benchmark, the image cap."""
    spec = study.raw["diagnostics"]["collapse"]
    return {"llm_layers": [int(x) for x in spec["llm_layers"]], "benchmark": spec.get("benchmark", "refcoco"),
            "max_images": int(spec.get("max_images", 1000))}


def figure2_settings(study: Study) -> dict:
    """What Figure 2 depends on: its cells, examples (a count or ids), LLM layer and benchmark."""
    spec = study.raw["diagnostics"]["figure2"]
    examples = spec["examples"]
    examples = int(examples) if isinstance(examples, int) else [str(x) for x in examples]
    return {"cells": list(spec["cells"]), "examples": examples, "layer": int(spec["layer"]),
            "benchmark": spec.get("benchmark", "refcoco")}


def profile_settings(study: Study) -> dict:
    """What a profiling sweep depends on: resolutions, iterations, warm-up, text length, batch size."""
    spec = dict(study.raw["diagnostics"]["profile"])
    return {"resolutions": sorted(int(r) for r in spec["resolutions"]), "iterations": int(spec.get("iterations", 200)),
            "warmup": int(spec.get("warmup", 100)), "text_tokens": int(spec.get("text_tokens", 128)),
            "batch_size": int(spec.get("batch_size", 1))}
