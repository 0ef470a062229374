"""Tests of the post-hoc decision rules on synthetic data whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import f1_score

from topoclass.calibration import (
    apply_temperature,
    coarsen,
    contradictions,
    expected_calibration_error,
    fit_blend_weight,
    fit_class_bias,
    fit_temperature,
    logit_adjust,
    reliability_bins,
    top_down,
)


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's probabilities."""
    cumulative = probs.cumsum(axis=1)
    return (rng.random((len(probs), 1)) > cumulative).sum(axis=1).clip(max=probs.shape[1] - 1)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovers_known_t(true_t: float) -> None:
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2.0, size=(20000, 4))
    labels = sample_labels(softmax(calibrated, axis=1), rng)
    # The model reports logits that are too sharp (or too flat) by true_t.
    logits = calibrated * true_t
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_lowers_ece_of_overconfident_logits() -> None:
    rng = np.random.default_rng(1)
    calibrated = rng.normal(0, 1.5, size=(20000, 3))
    labels = sample_labels(softmax(calibrated, axis=1), rng)
    logits = 3 * calibrated
    before = expected_calibration_error(softmax(logits, axis=1), labels)
    after = expected_calibration_error(apply_temperature(logits, fit_temperature(logits, labels)), labels)
    assert before > 0.1
    assert after < 0.02


def test_ece_matches_a_direct_computation_and_is_zero_only_when_calibrated() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 0, 1])
    # bins (15 equal): 0.9 -> acc 0.5, conf 0.9 (2 rows); 0.6 -> acc 1.0 (2 rows); 0.7 -> acc 1.0 (1 row)
    expected = (2 * 0.4 + 2 * 0.4 + 1 * 0.3) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    accuracy, confidence, counts = reliability_bins(probs, labels, 15)
    assert counts.tolist() == [2, 1, 2]
    assert accuracy.tolist() == [1.0, 1.0, 0.5]
    assert confidence == pytest.approx([0.6, 0.7, 0.9])
    perfectly = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfectly, np.array([0, 1])) == 0.0


def test_ece_of_sampled_labels_is_small() -> None:
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(0, 2, size=(50000, 4)), axis=1)
    labels = sample_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.01


def test_class_bias_improves_macro_f1_on_imbalanced_data() -> None:
    rng = np.random.default_rng(3)
    n = 6000
    prior = np.array([0.85, 0.1, 0.05])
    labels = rng.choice(3, size=n, p=prior)
    centers = np.eye(3) * 1.2
    scores = centers[labels] + rng.normal(0, 1, size=(n, 3))
    # Bayes posterior under this generative model: log prior + class-conditional log-likelihood.
    log_probs = np.log(prior) + scores @ centers.T - 0.5 * (centers**2).sum(axis=1)
    before = f1_score(labels, log_probs.argmax(axis=1), average="macro")
    bias = fit_class_bias(log_probs[:3000], labels[:3000])
    after_fit = f1_score(labels[:3000], (log_probs[:3000] + bias).argmax(axis=1), average="macro")
    held_out = f1_score(labels[3000:], (log_probs[3000:] + bias).argmax(axis=1), average="macro")
    assert bias[0] == 0.0
    assert bias[1] > 0 and bias[2] > 0  # rare classes pushed up
    assert after_fit > f1_score(labels[:3000], log_probs[:3000].argmax(axis=1), average="macro") + 0.02
    assert held_out > f1_score(labels[3000:], log_probs[3000:].argmax(axis=1), average="macro") + 0.02
    assert before < held_out


def test_class_bias_stays_zero_when_nothing_helps() -> None:
    log_probs = np.log(np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]))
    labels = np.array([0, 1, 0, 1])
    assert fit_class_bias(log_probs, labels).tolist() == [0.0, 0.0]


def test_logit_adjustment_subtracts_scaled_log_prior() -> None:
    log_probs = np.zeros((1, 2))
    adjusted = logit_adjust(log_probs, np.array([0.8, 0.2]), tau=1.0)
    assert adjusted[0, 1] - adjusted[0, 0] == pytest.approx(np.log(4))
    assert logit_adjust(log_probs, np.array([0.8, 0.2]), tau=0.0).tolist() == [[0.0, 0.0]]


def test_blend_weight_prefers_the_informative_model() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    truth = softmax(rng.normal(0, 2, size=(n, 3)), axis=1)
    labels = sample_labels(truth, rng)
    noise = softmax(rng.normal(0, 2, size=(n, 3)), axis=1)
    assert fit_blend_weight(truth, noise, labels) > 0.9
    assert fit_blend_weight(noise, truth, labels) < 0.1
    half = 0.5 * truth + 0.5 * softmax(np.log(truth) + rng.normal(0, 0.5, size=(n, 3)), axis=1)
    assert 0.0 <= fit_blend_weight(truth, half, labels, criterion="macro_f1") <= 1.0
    with pytest.raises(ValueError):
        fit_blend_weight(truth, noise, labels, criterion="brier")


def test_coarsen_sums_fine_probabilities() -> None:
    fine = np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.0, 0.3, 0.6]])
    coarse = coarsen(fine, [0, 1, 1, 1])
    assert coarse == pytest.approx(np.array([[0.5, 0.5], [0.1, 0.9]]))
    assert coarse.sum(axis=1) == pytest.approx([1.0, 1.0])
    three = coarsen(fine, [2, 0, 0, 1])
    assert three == pytest.approx(np.array([[0.4, 0.1, 0.5], [0.3, 0.6, 0.1]]))
    with pytest.raises(ValueError):
        coarsen(fine, [0, 1, 1])


def test_contradictions_flags_disagreeing_heads() -> None:
    mask = contradictions(np.array([0, 1, 1, 0]), np.array([0, 2, 0, 3]), [0, 1, 1, 1])
    assert mask.tolist() == [False, False, True, True]


def test_top_down_keeps_fine_decisions_inside_the_coarse_one() -> None:
    coarse = np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    fine = np.log(np.array([[0.3, 0.5, 0.1, 0.1], [0.5, 0.1, 0.3, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    decided = top_down(coarse, fine, [0, 1, 1, 1])
    assert decided.tolist() == [0, 2, 3]
    assert not contradictions(coarse.argmax(1), decided, [0, 1, 1, 1]).any()
