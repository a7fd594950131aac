"""Softmax Collapse and naive loss minimization, measured while they happen.

Prieto et al., "Grokking at the Edge of Numerical Stability" (ICLR 2025,
arXiv 2501.04697), sec. 3-5. Once a classifier fits its training set, the
cross-entropy can still fall by scaling the logits up without changing a
prediction (naive loss minimization, NLM; for a bias-free ReLU network that
direction is the weights themselves). The logits' gaps grow until
Σ_j exp(z_j - z_max) rounds to exactly 1 in the loss's precision (Softmax
Collapse, SC): the example's loss and its correct class's gradient are then
exactly 0 and it stops contributing to learning.

The metrics (pure functions, cheap enough to compute every step under jit):
- SC fraction: share of examples whose normalizer is absorbed by its largest
  term; compute it in the loss's dtype (float32 collapses at a gap of about
  ln(C-1) + 17, float64 at about ln(C-1) + 36).
- zero-loss fraction: share of examples whose loss is exactly 0.
- weight norm, global and per tensor: NLM shows as steady growth.
- cosine between gradient and weights, global and per tensor: ⟨g, θ⟩ / (‖g‖‖θ‖).
  Gradient descent moves along -g, so a cosine near -1 means the step mostly
  scales the weights up, i.e. NLM; ⊥Grad (`jaxtrain.orthograd`) makes it 0.

Everything computes in the dtype of its inputs: cast the logits to the loss's
dtype first (`jaxtrain.losses.collapse_stats` does, float64 included).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxtrain import stablemax


def absorbed(terms_NV: jax.Array) -> jax.Array:
  """Per example, whether Σ_j terms_j rounds to exactly the largest term (terms > 0)."""
  top_N1 = jnp.max(terms_NV, axis=-1, keepdims=True)
  return jnp.sum(terms_NV / top_N1, axis=-1) == 1


def softmax_collapsed(logits_NV: jax.Array) -> jax.Array:
  """Per example: Σ_j exp(z_j - max z) == 1 exactly (the paper's SC test), in the logits' dtype."""
  z_NV = logits_NV - jnp.max(logits_NV, axis=-1, keepdims=True)
  return jnp.sum(jnp.exp(z_NV), axis=-1) == 1


def stablemax_collapsed(logits_NV: jax.Array) -> jax.Array:
  """Per example: Σ_j s(z_j) rounds to s(max z), StableMax's counterpart of SC.

  s is not shift-invariant, so this divides by the top term instead of
  subtracting the top logit; the absorption it detects needs gaps of order
  1/machine-epsilon, so in practice it stays 0.
  """
  return absorbed(stablemax.s(logits_NV))


def collapsed(logits_NV: jax.Array, output: str = "softmax") -> jax.Array:
  """Per-example collapse flags for the output activation `output` (softmax | stablemax)."""
  if output == "softmax":
    return softmax_collapsed(logits_NV)
  if output == "stablemax":
    return stablemax_collapsed(logits_NV)
  raise ValueError(f"unknown output activation {output!r}; use softmax or stablemax")


def _fraction(flags, mask):
  flags = flags.astype(jnp.float32)
  if mask is None:
    return jnp.mean(flags)
  mask = mask.astype(jnp.float32)
  return jnp.sum(flags * mask) / jnp.maximum(jnp.sum(mask), 1)


def sc_fraction(logits_NV: jax.Array, output: str = "softmax", mask=None) -> jax.Array:
  """Share of examples (rows over the last axis; `mask` selects some) in Softmax Collapse."""
  return _fraction(collapsed(logits_NV, output), mask)


def zero_loss_fraction(loss_N: jax.Array, mask=None) -> jax.Array:
  """Share of examples whose loss is exactly 0; pass the per-example loss in its own dtype."""
  return _fraction(loss_N == 0, mask)


# ---------------------------------------------------------------- weights and gradients


def _sq(x):
  x = x.astype(jnp.float32)
  return jnp.sum(x * x)


def _per_tensor(fn, stacked, *trees):
  """fn over each tensor of `trees`; over each layer's slice where `stacked` (a tree of bools) says so."""
  flags = stacked if stacked is not None else jax.tree.map(lambda _: False, trees[0])
  return jax.tree.map(lambda s, *x: jax.vmap(fn)(*x) if s else fn(*x), flags, *trees)


def weight_norms(params, stacked=None) -> tuple[jax.Array, object]:
  """(global L2 norm of all parameters, the same tree with each tensor's L2 norm).

  `stacked` (as in `jaxtrain.orthograd`): tensors marked True get one norm per
  slice of their leading axis (per layer of jaxtrain's scanned blocks).
  """
  sq = _per_tensor(_sq, stacked, params)
  return jnp.sqrt(sum(jnp.sum(x) for x in jax.tree.leaves(sq))), jax.tree.map(jnp.sqrt, sq)


def grad_weight_cosine(grads, params, eps: float = 1e-30, stacked=None) -> tuple[jax.Array, object]:
  """(global cosine ⟨g, θ⟩ / (‖g‖‖θ‖) over all parameters, the same per tensor; `stacked` as in weight_norms).

  Negative: the descent step -g grows the weights along themselves (NLM at -1).
  The cosine does not depend on the scale of g, so g is divided by its largest
  entry first: otherwise ‖g‖² underflows in float32 once gradients fall below
  ~1e-19, which is exactly the collapse regime this measures.
  """
  tiny = jnp.finfo(jnp.float32).tiny
  unit = lambda g, scale: g.astype(jnp.float32) / (scale + tiny)

  def cos(g, w):
    g, w = unit(g, jnp.max(jnp.abs(g))), w.astype(jnp.float32)
    return jnp.sum(g * w) / (jnp.sqrt(_sq(g) * _sq(w)) + eps)

  per = _per_tensor(cos, stacked, grads, params)
  scale = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)])
  g_all = [unit(g, scale) for g in jax.tree.leaves(grads)]
  w_all = jax.tree.leaves(params)
  dot = sum(jnp.sum(g * w.astype(jnp.float32)) for g, w in zip(g_all, w_all))
  g_sq, w_sq = sum(_sq(g) for g in g_all), sum(_sq(w) for w in w_all)
  return dot / (jnp.sqrt(g_sq * w_sq) + eps), per


def flatten(tree, prefix: str) -> dict[str, jax.Array]:
  """A tree of per-tensor scalars as flat metric names: {'prefix/blocks/attn/wq/w': x, ...}."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return {f"{prefix}/{name(p)}": v for p, v in leaves}
