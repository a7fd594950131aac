"""StableMax: a softmax whose tails grow polynomially, so its loss does not round to zero.

Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability"
(ICLR 2025, arXiv 2501.04697), sec. 4; the definitions below are the ones the
official code (`utils.py` of LucasPrietoAl/grokking-at-the-edge-of-numerical-stability)
computes:

    s(x) = x + 1            x >= 0
           1 / (1 - x)      x < 0          (C¹ at 0: s(0) = 1, s'(0) = 1 from both sides)
    StableMax(z)_i = s(z_i) / Σ_j s(z_j)
    L(z, y) = -log(s(z_y) / Σ_j s(z_j))

With softmax the correct class's loss is log(1 + Σ_{j≠y} exp(z_j - z_y)), which
rounds to exactly 0 once (C-1)·exp(-gap) < 2⁻²⁴, i.e. gap > ln(C-1) + 16.6, in float32 (Softmax
Collapse, `jaxtrain.collapse`); with StableMax it decays like 1/gap.

Everything here computes in the dtype it is given. The precision the paper
uses (float64 inside a float32 program) is `jaxtrain.losses`' business:
`losses.stablemax_cross_entropy(logits, labels, dtype=jnp.float64)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain import config as cfg_lib

OUTPUTS = ("softmax", "stablemax")  # model.output: the loss's output activation (jaxtrain/losses.py)
LOSS_DTYPES = ("float32", "float64")  # train.loss_dtype: float64 as the paper's code, without x64 mode

# Added to 1 - x in the negative branch, as in the official code. Since x < 0
# there, 1 - x > 1 and the term never changes the result; kept for fidelity.
EPS = 1e-30


def s(x: jax.Array) -> jax.Array:
  """The StableMax activation s(x): x + 1 for x >= 0, 1 / (1 - x) for x < 0."""
  neg = x < 0
  # Double where: the unselected branch must stay finite, or its zero cotangent
  # times an infinite derivative turns the gradient into NaN.
  x_neg = jnp.where(neg, x, jnp.zeros_like(x))
  return jnp.where(neg, 1 / (1 - x_neg + EPS), x + 1)


def stablemax(z: jax.Array, axis: int = -1) -> jax.Array:
  """StableMax probabilities s(z_i) / Σ_j s(z_j) along `axis`."""
  s_z = s(z)
  return s_z / jnp.sum(s_z, axis=axis, keepdims=True)


def log_stablemax(z: jax.Array, axis: int = -1) -> jax.Array:
  """log StableMax(z), computed as log(s(z) / Σ s(z)) as the official code does."""
  return jnp.log(stablemax(z, axis))


def log_normalizer(z: jax.Array, axis: int = -1) -> jax.Array:
  """log Σ_j s(z_j): StableMax's counterpart of logsumexp (what a z-loss would penalize)."""
  return jnp.log(jnp.sum(s(z), axis=axis))


def cross_entropy(z_NV: jax.Array, labels_N: jax.Array) -> jax.Array:
  """Per-example StableMax cross-entropy -log StableMax(z)_y, in z's dtype.

  Any leading shape N; the classes are the last axis. For a chosen precision
  (e.g. float64 in a float32 program) use `jaxtrain.losses.stablemax_cross_entropy`.
  """
  # The official code takes log(s(z) / Σ s(z)) of every class and then picks the
  # label's; picking first gives the same value, with one log per example.
  s_NV = s(z_NV)
  s_y_N = jnp.take_along_axis(s_NV, labels_N[..., None], axis=-1)[..., 0]
  return -jnp.log(s_y_N / jnp.sum(s_NV, axis=-1))


def check(config, target: cfg_lib.Target) -> None:
  """The output activation and the loss's precision: float64 is refused on TPU (one line)."""
  cfg_lib.check_choices(config, {"model.output": OUTPUTS, "train.loss_dtype": LOSS_DTYPES})
  if config.train.loss_dtype == "float64" and target.platform == "tpu":
    raise cfg_lib.ConfigError("train.loss_dtype=float64: TPUs have no float64 arithmetic; use float32 on TPU")
