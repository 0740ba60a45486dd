"""The registry holds all ten benchmarks of the study, with the table columns the study expects."""

from vlmswap.evaluate import BENCHMARKS, Benchmark
from vlmswap.study import BENCHMARK_COLUMNS

CHOICES = {"pope": ("Yes", "No"), "tallyqa": tuple("ABCDEFGHIJKLMNOP")}


def test_every_study_benchmark_is_registered_with_its_columns():
    assert set(BENCHMARKS) == set(BENCHMARK_COLUMNS)
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.name == name
        assert benchmark.columns == BENCHMARK_COLUMNS[name]
        assert isinstance(benchmark, Benchmark)


def test_choice_benchmarks_declare_their_choices_and_the_rest_generate():
    for name, benchmark in BENCHMARKS.items():
        if name in CHOICES:
            assert benchmark.mode == "choice"
            assert benchmark.choices == CHOICES[name]
        else:
            assert benchmark.mode == "generate"
            assert not hasattr(benchmark, "choices")


def test_ocid_ref_scores_at_a_quarter():
    assert BENCHMARKS["ocid-ref"].iou_threshold == 0.25
