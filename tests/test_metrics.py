"""Gap metrics and divergence detection on cases computed by hand."""

import math

import pytest
import torch

from normlab.metrics import DivergenceDetector, gap_metrics, mean_kl, total_norm


def test_gap_metrics_on_a_hand_computed_case():
    labels = torch.tensor([0, 1, 1, 0])
    # train-mode predicts 0, 1, 0, 0 (3 of 4 right); eval-mode predicts 1, 1, 0, 1 (1 of 4 right)
    train_mode = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    eval_mode = torch.tensor([[0.0, 2.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    out = gap_metrics(train_mode, eval_mode, labels)
    assert out["acc_train_mode"] == 0.75
    assert out["acc_eval"] == 0.25
    assert out["gap_train_minus_eval"] == 0.5
    # examples 0 and 3 have swapped logits, 1 and 2 identical ones (KL 0);
    # softmax([2, 0]) = (s, 1 - s) with s = e^2 / (e^2 + 1)
    s = math.exp(2) / (math.exp(2) + 1)
    kl_swapped = s * math.log(s / (1 - s)) + (1 - s) * math.log((1 - s) / s)
    assert out["kl_train_eval"] == pytest.approx(2 * kl_swapped / 4)


def test_kl_is_zero_for_identical_predictions():
    logits = torch.randn(5, 3)
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)


def test_total_norm():
    assert total_norm([torch.tensor([3.0]), torch.tensor([[4.0, 0.0]])]) == pytest.approx(5.0)


def test_divergence_detector_finds_the_first_bad_step():
    detector = DivergenceDetector(loss_factor=10.0)
    assert detector.check_losses([2.3, 2.0, 1.5], first_step=0) is None
    hit = detector.check_losses([1.0, 30.0, float("nan")], first_step=3)
    assert (hit.step, hit.signal) == (4, "loss_explosion")
    hit = DivergenceDetector().check_losses([2.0, float("inf")], first_step=10)
    assert (hit.step, hit.signal) == (11, "nonfinite_loss")


def test_growth_is_recorded_but_only_non_finite_parameters_are_a_blow_up():
    detector = DivergenceDetector(param_norm_factor=100.0, activation_bound=1e3)
    assert detector.check_params(2.0, 0) is None
    assert detector.check_params(199.0, 5) is None
    assert detector.check_params(201.0, 6) is None, "scale-invariant weights grow: no blow-up"
    assert detector.check_params(500.0, 9) is None
    assert detector.summary()["param_norm_growth_step"] == 6, "the first step it was seen"
    assert detector.check_params(float("nan"), 7).signal == "nonfinite_params"
    detector.check_activations(10.0, 3)
    assert detector.summary()["activation_growth_step"] is None
    detector.check_activations(2e3, 4)
    detector.check_activations(float("nan"), 8)
    assert detector.summary()["activation_growth_step"] == 4
