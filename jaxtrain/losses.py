"""The language-model loss: token cross-entropy with an optional z-loss.

z-loss (PaLM, Chowdhery et al. 2022, sec. 5) adds `c · logsumexp(z)²` per token,
which keeps the softmax normalizer near 1 and the logits from drifting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BTV, targets_BT, *, z_loss: float = 0.0, dtype=jnp.float32):
  """Mean token cross-entropy (+ z-loss) and per-batch statistics.

  Returns (loss, aux) where aux has `ce` (cross-entropy alone), `z_loss`,
  `accuracy` and `log_z` (mean logsumexp of the logits), all scalars, and
  `ce_sum`/`tokens` for exact averaging across batches.
  """
  logits_BTV = logits_BTV.astype(dtype)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  ce_BT = log_z_BT - target_logit_BT
  ce = ce_BT.mean()
  zl = z_loss * jnp.mean(log_z_BT**2)
  aux = {
      "ce": ce,
      "z_loss": zl,
      "accuracy": jnp.mean(jnp.argmax(logits_BTV, -1) == targets_BT),
      "log_z": log_z_BT.mean(),
      "ce_sum": ce_BT.sum(),
      "tokens": jnp.asarray(ce_BT.size, jnp.float32),
  }
  return ce + zl, aux
