"""The grokking runs' optimizers: AdamW (state in float32, float64, or PyTorch's float32 with subnormals), SGD, ⊥Grad.

Adam's state precision (`opt_dtype`). XLA on CPU flushes subnormal floats to
zero, PyTorch keeps them. In float32 a gradient entry below ~3e-18 then adds
exactly 0 to Adam's second moment ν ((1-β2)·g² < 1.2e-38, the smallest normal
float32) while the first moment m stays non-zero, and once ν has decayed to 0
the update m̂/(√ν̂ + ε) with the official ε = 1e-25 is ~g/ε: a step of ~1e3
for g = 1e-20 where Adam means ~lr. See the package docstring.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain.orthograd import orthograd


def in_dtype(tx: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`tx` with its state and arithmetic in `dtype`: gradients and parameters cast in, updates cast back.

  For float64, x64 mode must be on while it is traced and run (`trainer.train` turns it on for opt_dtype=float64).
  """
  cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree)

  def init_fn(params):
    return tx.init(cast(params))

  def update_fn(updates, state, params=None):
    new, state = tx.update(cast(updates), state, None if params is None else cast(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def round_float32(x):
  """float64 `x` rounded to the nearest float32 value, subnormals included, as IEEE float32 arithmetic rounds.

  XLA on CPU flushes float32 subnormals to zero, so they are kept in float64: normal values through a float32
  cast, the rest to the nearest multiple of 2^-149 (the subnormal spacing; round half to even as IEEE).
  Rounding a float64 result of +, −, ×, ÷, √ on float32 values this way gives the correctly rounded float32
  result (float64 has more than 2·24 + 2 bits), so a chain of such ops reproduces float32 arithmetic.
  """
  q = 2.0 ** -149
  normal = jnp.abs(x) >= float(jnp.finfo(jnp.float32).tiny)
  return jnp.where(normal, x.astype(jnp.float32).astype(x.dtype), jnp.round(x / q) * q)


class TorchAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def adamw_float32_ieee(lr, b1, b2, eps, weight_decay=0.0) -> optax.GradientTransformation:
  """torch.optim.AdamW's single-tensor step in float32 with subnormals kept (the official code's optimizer).

  State and arithmetic are float64 holding float32 values, every result rounded by `round_float32`, in
  torch's order: m ← m + (g − m)(1−β1); ν ← ν·β2 + (1−β2)·g·g; Δ = −(lr/bc1)·m / (√ν/√bc2 + ε); the
  decoupled decay −lr·wd·θ is added to Δ (torch scales θ by 1 − lr·wd first: the same to first order).
  Needs x64 mode (`trainer.train` turns it on for opt_dtype=float32_ieee).
  """
  r, f32 = round_float32, lambda v: float(np.float32(v))

  def init_fn(params):
    zeros = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float64), params)
    return TorchAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

  def update_fn(grads, state, params):
    t = state.count + 1
    tf = t.astype(jnp.float64)
    bc1, bc2 = 1 - b1 ** tf, 1 - b2 ** tf
    step, root = r(-lr / bc1), r(jnp.sqrt(bc2))  # torch: Python floats, cast to float32 in the tensor ops

    def one(g, m, v, p):
      g = g.astype(jnp.float64)
      m = r(m + r(r(g - m) * f32(1 - b1)))
      v = r(r(v * f32(b2)) + r(r(f32(1 - b2) * g) * g))
      denom = r(r(r(jnp.sqrt(v)) / root) + f32(eps))
      u = r(r(step * m) / denom)
      if weight_decay:
        u = u - r(lr * weight_decay * p.astype(jnp.float64))
      return u.astype(p.dtype), m, v

    out = jax.tree.map(one, grads, state.mu, state.nu, params)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)
    return pick(0), TorchAdamState(t, pick(1), pick(2))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(c) -> optax.GradientTransformation:
  """AdamW (decoupled decay; state in `opt_dtype`) or SGD (momentum, L2), each optionally behind ⊥Grad; constant lr."""
  if c.optimizer == "adamw" and c.opt_dtype == "float32_ieee":
    base = adamw_float32_ieee(c.lr, c.b1, c.b2, c.eps, c.weight_decay)
  elif c.optimizer == "adamw":
    base = optax.adamw(c.lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    if c.opt_dtype == "float64":
      base = in_dtype(base, jnp.float64)
  elif c.optimizer == "sgd":  # torch.optim.SGD's weight_decay adds wd·θ to the gradient
    base = optax.chain(optax.add_decayed_weights(c.weight_decay),
                       optax.sgd(c.lr, momentum=c.momentum or None))
  else:
    raise ValueError(f"unknown optimizer {c.optimizer!r}; use adamw or sgd")
  return optax.chain(orthograd(), base) if c.orthograd else base


def ftz_threshold(b2: float) -> float:
  """|g| below which (1 - β2)·g² is under float32's smallest normal: flushed to 0 by XLA on CPU."""
  return math.sqrt(float(jnp.finfo(jnp.float32).tiny) / (1 - b2))


def opt_stats(grads, opt_state, updates, b2: float) -> dict[str, jax.Array]:
  """Adam's health for one step: `opt_state` after the update (its ν is the one `updates` divided by).

  - nu_zero_fraction: share of all ν entries that are exactly 0;
  - nu_zero_m_nonzero: how many entries have ν = 0 but m ≠ 0 (their step is lr·m̂/ε);
  - nu_min: the smallest non-zero ν (inf when none);
  - grad_min, grad_max: the smallest non-zero and the largest |g| (grad_min inf when g = 0);
  - grad_ftz_fraction: share of non-zero gradient entries with |g| < `ftz_threshold(b2)`;
  - update_max: the largest |Δθ| of the step.
  Computed in the state's dtype; pass an optax Adam state (found by its `nu`, `mu` fields).
  """
  cat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])
  nu, mu = cat(optax.tree_utils.tree_get(opt_state, "nu")), cat(optax.tree_utils.tree_get(opt_state, "mu"))
  g, u = jnp.abs(cat(grads)), jnp.abs(cat(updates))
  inf = jnp.asarray(jnp.inf, nu.dtype)
  nonzero_g = g > 0
  return {
      "nu_zero_fraction": jnp.mean((nu == 0).astype(jnp.float32)),
      "nu_zero_m_nonzero": jnp.sum((nu == 0) & (mu != 0)),
      "nu_min": jnp.min(jnp.where(nu > 0, nu, inf)),
      "grad_min": jnp.min(jnp.where(nonzero_g, g, jnp.asarray(jnp.inf, g.dtype))),
      "grad_max": jnp.max(g),
      "grad_ftz_fraction": jnp.sum(nonzero_g & (g < ftz_threshold(b2))) / jnp.maximum(jnp.sum(nonzero_g), 1),
      "update_max": jnp.max(u),
  }
