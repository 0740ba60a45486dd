"""Collapse probes: the inside-the-box labels follow the letterbox, the probe finds a signal that is
there and none that is not, and the verdict names the stage where decodability drops."""

import numpy as np
import pytest

from vlmswap.diagnostics.collapse import diagnose, fit_probe, inside_map, letterboxed_box, token_grid
from vlmswap.image import Geometry


def test_token_grid_keeps_the_aspect_ratio():
    assert token_grid(196, Geometry.parse("224")) == (14, 14)
    assert token_grid(4150, Geometry.parse("1333x800")) == (50, 83)
    with pytest.raises(ValueError, match="do not form a grid"):
        token_grid(7, Geometry.parse("224"))


def test_boxes_are_moved_into_the_letterboxed_frame():
    # a 200x100 image padded to 200x200: 50 px above and below
    box = letterboxed_box([0.0, 0.0, 1.0, 1.0], (200, 100), Geometry.parse("224"))
    assert box == pytest.approx((0.0, 0.25, 1.0, 0.75))
    assert letterboxed_box([0.1, 0.2, 0.3, 0.4], (64, 64), Geometry.parse("64")) == pytest.approx((0.1, 0.2, 0.3, 0.4))


def test_inside_map_marks_tokens_whose_centre_is_in_the_box():
    m = inside_map((0.0, 0.0, 0.5, 0.5), (4, 4)).reshape(4, 4)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_the_probe_finds_a_signal_that_is_there_and_none_that_is_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    signal = rng.normal(size=(2000, 8)) + y[:, None] * np.array([1.5] + [0] * 7)
    noise = rng.normal(size=(2000, 8))
    assert fit_probe(signal[:1400], y[:1400], signal[1400:], y[1400:]) > 0.8
    assert abs(fit_probe(noise[:1400], y[:1400], noise[1400:], y[1400:]) - 0.5) < 0.06
    assert np.isnan(fit_probe(noise[:10], np.zeros(10), noise[10:20], y[10:20]))


def _rows(**auc):
    return [{"stage": k.replace("_", "-"), "auc": v} for k, v in auc.items()]


def test_the_verdict_names_where_decodability_drops():
    assert diagnose(_rows(position_prior=0.6, tap=0.62, connector=0.62, llm_4=0.6))[0] == "features"
    assert diagnose(_rows(position_prior=0.6, tap=0.9, connector=0.7, llm_4=0.7))[0] == "transmission"
    assert diagnose(_rows(position_prior=0.6, tap=0.9, connector=0.88, llm_1=0.87, llm_4=0.7))[0] == "fades in the LLM"
    verdict, why = diagnose(_rows(position_prior=0.6, tap=0.9, connector=0.88, llm_1=0.87, llm_4=0.86))
    assert verdict == "utilization" and "layer 4" in why
