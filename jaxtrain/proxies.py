"""Small-scale proxies for large-scale training instabilities: LR sensitivity and the curves that foreshadow divergence.

Wortsman et al., "Small-scale proxies for large-scale Transformer training
instabilities", ICLR 2024 (arXiv 2309.14322), §2.2 and §3. A run A trained at
peak learning rate η ends at loss ℓ(A(η)); ℓ0 is the loss at initialization.
Over a log-spaced grid of learning rates [a, b] (the paper's: 3e-4 ... 3e-1),

  LR sensitivity(A) = E_η [ min(ℓ(A(η)), ℓ0) − ℓ* ],   ℓ* = min_η ℓ(A(η)),

so a run that diverged (or ended worse than it started) counts as ℓ0, and a
flat loss-vs-LR curve scores 0. The two instabilities the paper studies are
read off the training curves:

- attention-logit growth: max |q·k|/√d_h per layer grows until attention is
  near one-hot (jaxtrain logs it as `layers/attn_max_logit` every
  `train.diagnostics_every` steps); the fix is qk-norm (`model.qk_norm`);
- output-logit divergence: log Z = logsumexp of the output logits drifts away
  from 0 (`log_z` on every training line); the fix is the z-loss
  c·(log Z)², c = 1e-4 (`train.z_loss`).

These are pure functions of numbers and of `jaxtrain.metrics.read_metrics`
rows, for a study script or a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the paper's grid for the expectation over η
Z_LOSS = 1e-4                                           # the paper's (and PaLM's) z-loss coefficient


def _finite(x) -> bool:
  return x is not None and math.isfinite(float(x))


def capped_losses(final_loss_by_lr: Mapping[float, float | None], init_loss: float) -> dict[float, float]:
  """min(ℓ(η), ℓ0) for each learning rate, with ℓ0 for a diverged run (None, NaN or ±inf), sorted by η."""
  if not _finite(init_loss):
    raise ValueError(f"init_loss must be a finite number, got {init_loss!r}")
  if not final_loss_by_lr:
    raise ValueError("final_loss_by_lr is empty: give one final loss (or None for a diverged run) per learning rate")
  return {lr: min(float(l), float(init_loss)) if _finite(l) else float(init_loss)
          for lr, l in sorted(final_loss_by_lr.items())}


def lr_sensitivity(final_loss_by_lr: Mapping[float, float | None], init_loss: float) -> float:
  """The paper's LR sensitivity: mean over the grid of min(ℓ(η), ℓ0) minus the best of them.

  final_loss_by_lr: {η: final loss}, one entry per grid point; None, NaN or inf
  marks a run that diverged (it counts as `init_loss`, as does any loss above it).
  init_loss: ℓ0, the loss at initialization.
  """
  ls = np.array(list(capped_losses(final_loss_by_lr, init_loss).values()))
  return float(np.mean(ls - ls.min()))


def best_lr(final_loss_by_lr: Mapping[float, float | None]) -> float | None:
  """The learning rate with the lowest finite final loss (None if every run diverged)."""
  ok = {lr: float(l) for lr, l in final_loss_by_lr.items() if _finite(l)}
  return min(ok, key=ok.get) if ok else None


def initial_loss(rows: Sequence[dict], key: str = "ce") -> float | None:
  """ℓ0 from a run's metrics rows: `key` on the first training line (cross-entropy without the z-loss by default).

  It is the loss at initialization only if that line is step 1 (`train.log_every=1`);
  otherwise it is the mean over the first logging window.
  """
  for r in rows:
    if key in r and "eval_loss" not in r:
      return float(r[key])
  return None


def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps_S, values_S...) of `key` over the rows that have it: a scalar gives [S], a per-layer list [S, L]."""
  hits = [r for r in rows if key in r]
  steps_S = np.array([r["step"] for r in hits], dtype=np.int64)
  vals = np.array([r[key] for r in hits], dtype=np.float64)
  return steps_S, vals


def max_attn_logit(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(steps_S, logits_SL): max |q·k|/√d_h of each layer at each diagnostics step (S = 0 if there were none)."""
  steps_S, logits = series(rows, "layers/attn_max_logit")
  return steps_S, logits.reshape(len(steps_S), -1) if len(steps_S) else np.zeros((0, 0))


def last_step(rows: Sequence[dict]) -> int:
  """The last step any row records (for a run stopped by a non-finite loss: the last good step logged)."""
  return max((int(r["step"]) for r in rows), default=0)


def growth(steps_S: np.ndarray, values_S: np.ndarray, *, before: int, window: int) -> float:
  """values at the last step ≤ `before`, divided by their minimum over the `window` steps before it.

  A ratio well above 1 says the quantity was climbing into step `before`
  (e.g. a run's max attention logit before it diverged).
  """
  keep = steps_S <= before
  steps_S, values_S = steps_S[keep], values_S[keep]
  if not len(steps_S):
    return float("nan")
  recent = values_S[steps_S >= steps_S[-1] - window]
  return float(values_S[-1] / np.min(recent))
