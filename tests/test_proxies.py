"""The instability proxies (jaxtrain/proxies.py) on hand-computed examples."""

import math

import numpy as np
import pytest

from jaxtrain import proxies


def test_lr_sensitivity_hand_computed():
  # ℓ0 = 5.0. Capped losses: 4.0, 3.0, 2.5, 5.0 (6.0 is above ℓ0), 5.0 (NaN: diverged), 5.0 (None: diverged).
  # ℓ* = 2.5; excesses 1.5, 0.5, 0, 2.5, 2.5, 2.5; mean 9.5 / 6.
  losses = {3e-4: 4.0, 1e-3: 3.0, 3e-3: 2.5, 1e-2: 6.0, 3e-2: float("nan"), 1e-1: None}
  assert proxies.lr_sensitivity(losses, 5.0) == pytest.approx(9.5 / 6, rel=1e-12)
  assert proxies.capped_losses(losses, 5.0) == {3e-4: 4.0, 1e-3: 3.0, 3e-3: 2.5, 1e-2: 5.0, 3e-2: 5.0, 1e-1: 5.0}


def test_lr_sensitivity_flat_curve_is_zero_and_inf_counts_as_diverged():
  assert proxies.lr_sensitivity({1e-3: 2.0, 1e-2: 2.0}, 5.5) == 0.0
  # +inf and -inf are diverged runs (ℓ0), not a best loss of -inf.
  assert proxies.lr_sensitivity({1e-3: 2.0, 1e-2: float("inf"), 1e-1: float("-inf")}, 5.0) == pytest.approx(2.0)


def test_lr_sensitivity_rejects_bad_input():
  with pytest.raises(ValueError, match="init_loss"):
    proxies.lr_sensitivity({1e-3: 2.0}, float("nan"))
  with pytest.raises(ValueError, match="empty"):
    proxies.lr_sensitivity({}, 5.0)


def test_best_lr_and_curves_from_metrics_rows():
  assert proxies.best_lr({1e-3: 3.0, 1e-2: 2.0, 1e-1: None}) == 1e-2
  assert proxies.best_lr({1e-1: math.nan}) is None
  rows = [{"step": 1, "ce": 5.6, "loss": 5.7, "log_z": 6.0},
          {"step": 10, "layers/attn_max_logit": [2.0, 3.0]},
          {"step": 10, "ce": 4.0, "loss": 4.1, "log_z": 5.0},
          {"step": 20, "layers/attn_max_logit": [4.0, 12.0]},
          {"step": 20, "eval_loss": 3.9, "eval_perplexity": 49.4}]
  assert proxies.initial_loss(rows) == 5.6
  steps, logits = proxies.max_attn_logit(rows)
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_array_equal(logits, [[2.0, 3.0], [4.0, 12.0]])
  assert proxies.last_step(rows) == 20
  # the last layer's max logit at step 20 over its minimum in the 10 steps before: 12 / 3.
  assert proxies.growth(steps, logits[:, 1], before=20, window=10) == pytest.approx(4.0)
  assert proxies.growth(steps, logits[:, 1], before=15, window=10) == pytest.approx(1.0)


def test_curves_of_a_run_stopped_before_its_first_diagnostics_step():
  rows = [{"step": 1, "ce": 5.6, "loss": 5.6, "log_z": 6.0}, {"step": 2, "ce": 9.0, "loss": 9.0, "log_z": 7.0}]
  steps, logits = proxies.max_attn_logit(rows)
  assert steps.shape == (0,) and logits.shape == (0, 0)
  steps, log_z = proxies.series(rows, "log_z")
  np.testing.assert_array_equal(steps, [1, 2])
  np.testing.assert_array_equal(log_z, [6.0, 7.0])
  assert proxies.last_step(rows) == 2
