"""Bootstrap intervals of headline scores: a checked mean of per-example values, reproducible bytes."""

import numpy as np
import pytest

from vlmswap.evaluate.intervals import bootstrap_intervals, column_values, percentile_interval


def test_the_interval_matches_a_resampling_loop_and_narrows_with_more_examples():
    values = [1.0] * 30 + [0.0] * 70
    low, high = percentile_interval(values, resamples=400, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 100, size=(400, 100))
    means = sorted(sum(values[i] for i in row) / 100 for row in idx)  # the same draws, one at a time
    assert low == pytest.approx(np.percentile(means, 2.5)) and high == pytest.approx(np.percentile(means, 97.5))
    assert 0.2 < low < 0.3 < high < 0.4
    wide = percentile_interval(values)
    narrow = percentile_interval(values * 16)
    assert narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])


def test_each_column_uses_its_own_values_and_a_rerun_gives_the_same_numbers():
    per_example = {f"{i}": {"score": 1.0 if i % 3 == 0 else 0.0, "variant": "ocr"} for i in range(60)}
    per_example |= {f"{i}-pure": {"score": 1.0 if i % 2 == 0 else 0.0, "variant": "pure"} for i in range(60)}
    columns = {"textvqa-ocr": 100 * 20 / 60, "textvqa-pure": 50.0}
    first = bootstrap_intervals(columns, per_example)
    assert first == bootstrap_intervals(columns, per_example)
    assert first["textvqa-ocr"][0] < columns["textvqa-ocr"] < first["textvqa-ocr"][1]
    assert first["textvqa-pure"][0] < 50.0 < first["textvqa-pure"][1]
    assert column_values("textvqa-pure", per_example) == [1.0 if i % 2 == 0 else 0.0 for i in range(60)]


def test_a_column_that_is_not_the_mean_of_its_examples_gets_no_interval():
    # POPE's headline is the mean of its splits' accuracies: with splits of unequal size it is not the
    # mean over examples, and no interval is better than a wrong one
    per_example = {f"a{i}": {"correct": True} for i in range(10)} | {f"p{i}": {"correct": i < 5} for i in range(30)}
    assert bootstrap_intervals({"pope": (100 + 100 * 5 / 30) / 2}, per_example) == {}
    assert bootstrap_intervals({"refcoco": 100 * 15 / 40}, per_example)  # the plain mean does get one
    assert bootstrap_intervals({"gqa": 50.0}, {"x": {"prediction": "no score here"}}) == {}
