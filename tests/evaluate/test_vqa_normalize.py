"""The official VQA normalization and soft accuracy, rule by rule, on hand-made strings."""

import pytest

from vlmswap.evaluate.metrics import soft_accuracy
from vlmswap.evaluate.vqa_normalize import (
    normalize_answer, normalize_prediction, process_digits_articles_contractions, process_punctuation,
)


# -- punctuation --------------------------------------------------------------------------------

def test_punctuation_not_touching_a_space_becomes_a_space():
    assert process_punctuation("t-shirt") == "t shirt"
    assert process_punctuation("yes/no") == "yes no"


def test_punctuation_touching_a_space_is_deleted():
    assert process_punctuation("hello ,world") == "hello world"
    assert process_punctuation("wow !") == "wow "


def test_punctuation_rule_is_decided_per_character_over_the_whole_string():
    # one "-" touches a space, so every "-" is deleted; "/" touches none, so it becomes a space
    assert process_punctuation("a-b -c x/y") == "ab c x y"


def test_digit_comma_digit_anywhere_deletes_all_punctuation():
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("1,000 t-shirts") == "1000 tshirts"
    assert normalize_prediction("1,000") == "1000"


def test_apostrophe_and_colon_are_not_punctuation():
    assert process_punctuation("don't 10:30") == "don't 10:30"


def test_periods_are_removed_unless_a_digit_follows():
    assert process_punctuation("3.5") == "3.5"
    assert process_punctuation("yes.") == "yes"
    assert process_punctuation("e.g.") == "eg"
    assert process_punctuation("5.") == "5"
    # the official regex's look-behind is mistyped as a look-ahead: a period before a digit stays
    assert process_punctuation("a.5") == "a.5"
    assert process_punctuation(".5") == ".5"


# -- digits, articles, contractions ----------------------------------------------------------------

@pytest.mark.parametrize("word,digit", [("none", "0"), ("zero", "0"), ("one", "1"), ("Two", "2"),
                                        ("THREE", "3"), ("ten", "10")])
def test_number_words_become_digits(word, digit):
    assert normalize_prediction(word) == digit


def test_number_words_beyond_ten_stay_words():
    assert normalize_prediction("eleven") == "eleven"
    assert normalize_prediction("twenty two") == "twenty 2"


def test_articles_are_dropped_as_whole_words_only():
    assert normalize_prediction("The red car") == "red car"
    assert normalize_prediction("a dog") == "dog"
    assert normalize_prediction("an") == ""
    assert normalize_prediction("banana") == "banana"
    assert normalize_prediction("theater") == "theater"


def test_contractions_are_restored_after_lowercasing():
    assert normalize_prediction("dont") == "don't"
    assert normalize_prediction("Dont know") == "don't know"
    assert normalize_prediction("isnt") == "isn't"
    assert normalize_prediction("oclock") == "o'clock"
    # capitalized keys of the official map can never match after lowercasing
    assert process_digits_articles_contractions("Im") == "im"


def test_whitespace_newlines_and_tabs():
    assert normalize_prediction("  yes\n") == "yes"
    assert normalize_prediction("red\tcar") == "red car"
    assert normalize_prediction("red   car") == "red car"
    assert normalize_prediction("two\ndogs.") == "2 dogs"


def test_full_prediction_pipeline():
    assert normalize_prediction("The Two (2) dogs!") == "2 2 dogs"
    assert normalize_prediction("Yes.") == "yes"


def test_ground_truth_gets_only_the_punctuation_step():
    assert normalize_answer("Two") == "Two"
    assert normalize_answer("the dog") == "the dog"
    assert normalize_answer("yes.") == "yes"
    assert normalize_answer("t-shirt") == "t shirt"


# -- soft accuracy -----------------------------------------------------------------------------

@pytest.mark.parametrize("n_match,expected", [
    (0, 0.0),
    (1, 9 * (1 / 3) / 10),                  # 9 left-out sets see 1 match, the matching one sees 0
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # = 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),        # = 0.9
    (4, 1.0),
    (10, 1.0),
])
def test_leave_one_out_soft_accuracy(n_match, expected):
    answers = ["yes"] * n_match + ["no"] * (10 - n_match)
    assert soft_accuracy("yes", answers) == pytest.approx(expected, abs=1e-12)


def test_soft_accuracy_exact_values():
    assert soft_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert soft_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert soft_accuracy("yes", ["yes"] + ["no"] * 9) == pytest.approx(0.3)


def test_soft_accuracy_does_not_depend_on_answer_order():
    answers = ["no", "yes", "no", "no", "yes", "no", "yes", "no", "no", "no"]
    assert soft_accuracy("yes", answers) == pytest.approx(0.9)


def test_soft_accuracy_needs_answers():
    with pytest.raises(ValueError):
        soft_accuracy("yes", [])
