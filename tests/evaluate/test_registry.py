"""The benchmark registry and the shared subset rule."""

import random
from dataclasses import asdict
from pathlib import Path

import pytest

from vlmswap.evaluate import BENCHMARKS, Benchmark, Example, Skipped, get_benchmark
from vlmswap.evaluate.metrics import draw_subset, subset_size


def test_registry_names_modes_and_columns():
    from vlmswap.study import BENCHMARK_COLUMNS

    assert set(BENCHMARKS) == set(BENCHMARK_COLUMNS)
    for name, b in BENCHMARKS.items():
        assert b.name == name and isinstance(b, Benchmark)
        assert b.columns == BENCHMARK_COLUMNS[name]
        assert b.mode == ("choice" if name in ("pope", "tallyqa") else "generate")


def test_refcoco_family_thresholds_and_splits():
    assert get_benchmark("refcoco").split_by == "unc"
    assert get_benchmark("refcoco+").split_by == "unc"
    assert get_benchmark("refcocog").split_by == "umd"
    assert all(get_benchmark(n).iou_threshold == 0.5 for n in ("refcoco", "refcoco+", "refcocog"))


def test_unknown_benchmark_lists_the_known_names():
    with pytest.raises(ValueError) as err:
        get_benchmark("vqa2")
    for name in ("vqa-v2", "refcoco", "refcoco+", "refcocog"):
        assert name in str(err.value)


@pytest.mark.parametrize("subset,n", [("full", None), ("slim-1024", 1024), ("slim-1", 1)])
def test_subset_size(subset, n):
    assert subset_size(subset) == n


@pytest.mark.parametrize("bad", ["slim", "slim-0", "slim--3", "all", "slim-1k", "Full"])
def test_bad_subset_names(bad):
    with pytest.raises(ValueError, match="full"):
        subset_size(bad)


def test_draw_subset_matches_the_harness_shuffle():
    ids = [f"q{i}" for i in range(50)]
    expected = list(ids)
    random.Random(21).shuffle(expected)  # vlm-evaluation: Random(21).shuffle(all_ids), then [:n]
    assert draw_subset(ids, "slim-7") == expected[:7]
    assert draw_subset(ids, "full") == expected
    assert draw_subset(ids, "slim-7") == draw_subset(ids, "slim-10")[:7]  # slim sets nest


def test_records_survive_the_json_index_round_trip():
    e = Example("1", Path("/x/y.jpg"), "p", [0.1, 0.2, 0.3, 0.4], {"split": "val"})
    again = Example(**{**asdict(e), "image": Path(str(e.image))})
    assert again == e
    assert Skipped(**asdict(Skipped("2", "/f", "why"))) == Skipped("2", "/f", "why")
