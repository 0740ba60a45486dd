"""The ranking and classification metrics equal scikit-learn's, which vlm-evaluation calls.

Our POPE (accuracy, ROC-AUC and PR-AUC of P(Yes), per split and pooled), TallyQA (accuracy per split
and overall) and the shared `roc_auc` / `average_precision` / `f1` (VizWiz uses the last two) are
written with numpy; here they are compared with sklearn.metrics on random data with many ties.
"""

import json
import random

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from vlmswap.evaluate.metrics import average_precision, f1, roc_auc
from vlmswap.evaluate.pope import POPE, SPLITS
from vlmswap.evaluate.records import Example
from vlmswap.evaluate.tallyqa import TallyQA


def random_cases(n_cases: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        n = int(rng.integers(2, 300))
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        decimals = int(rng.integers(0, 4))  # 0 decimals: scores in {0, 1}, everything tied
        scores = np.round(np.clip(rng.normal(labels * rng.uniform(0, 1.5), 0.6) / 3 + 0.5, 0, 1), decimals)
        yield k, labels, scores


def test_roc_auc_and_average_precision_equal_sklearn_with_ties():
    checked = 0
    for k, labels, scores in random_cases():
        if labels.all() or not labels.any():
            assert roc_auc(labels, scores) is None
            continue
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12), k
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores),
                                                                  abs=1e-12), k
        checked += 1
    assert checked > 150


def test_f1_equals_sklearn_including_no_positives():
    for k, labels, scores in random_cases(seed=1):
        predicted = scores >= 0.5
        assert f1(labels, predicted) == pytest.approx(f1_score(labels, predicted, zero_division=0.0), abs=1e-12), k
    nothing = np.zeros(5, dtype=bool)
    assert f1(nothing, nothing) == f1_score(nothing, nothing, zero_division=0.0) == 0.0


def test_pope_scores_equal_sklearn_per_split_and_pooled():
    rng = random.Random(3)
    examples, predictions = [], {}
    for split in SPLITS:
        for i in range(120):
            target = rng.choice(["yes", "no"])
            p_yes = round(min(1.0, max(0.0, rng.gauss(0.65 if target == "yes" else 0.4, 0.25))), 2)
            e = Example(f"{split}-{i}", None, "", target, {"split": split})
            examples.append(e)
            predictions[e.id] = json.dumps([p_yes, round(1 - p_yes, 10)])
    score = POPE().score(examples, predictions)

    def reference(rows):
        gold = [e.target == "yes" for e in rows]
        p = [json.loads(predictions[e.id])[0] for e in rows]
        said = [json.loads(predictions[e.id])[0] >= json.loads(predictions[e.id])[1] for e in rows]  # tie: yes
        return 100 * accuracy_score(gold, said), 100 * roc_auc_score(gold, p), 100 * average_precision_score(gold, p)

    accuracies = []
    for split in SPLITS:
        acc, auc, ap = reference([e for e in examples if e.meta["split"] == split])
        accuracies.append(acc)
        assert score.metrics[f"{split}:accuracy"] == pytest.approx(acc)
        assert score.metrics[f"{split}:roc_auc"] == pytest.approx(auc, abs=1e-10)
        assert score.metrics[f"{split}:pr_auc"] == pytest.approx(ap, abs=1e-10)
    _, auc, ap = reference(examples)
    assert score.metrics["roc_auc"] == pytest.approx(auc, abs=1e-10)
    assert score.metrics["pr_auc"] == pytest.approx(ap, abs=1e-10)
    assert score.columns["pope"] == pytest.approx(np.mean(accuracies))


def test_tallyqa_accuracy_equals_sklearn_per_split_and_overall():
    rng = random.Random(4)
    examples, predictions = [], {}
    for i in range(400):
        split = rng.choice(["simple", "complex"])
        target = rng.choice(range(18))  # 16 and 17 can never be predicted, as in the harness
        probs = [rng.random() for _ in range(16)]
        if rng.random() < 0.4 and target < 16:
            probs[target] = 2.0
        total = sum(probs)
        e = Example(f"q{i}", None, "", target, {"split": split})
        examples.append(e)
        predictions[e.id] = json.dumps([p / total for p in probs])
    score = TallyQA().score(examples, predictions)
    said = {e.id: int(np.argmax(json.loads(predictions[e.id]))) for e in examples}
    assert score.columns["tallyqa"] == pytest.approx(100 * accuracy_score([e.target for e in examples],
                                                                          [said[e.id] for e in examples]))
    for split in ("simple", "complex"):
        rows = [e for e in examples if e.meta["split"] == split]
        assert score.metrics[f"{split}:accuracy"] == pytest.approx(
            100 * accuracy_score([e.target for e in rows], [said[e.id] for e in rows]))
