"""The output loss: cross-entropy through softmax or StableMax, in a chosen precision, with z-loss.

z-loss (PaLM, Chowdhery et al. 2022, sec. 5) adds `c · log Z²` per token, which
keeps the normalizer near 1 and the logits from drifting. StableMax and the
Softmax Collapse statistics are from Prieto et al., "Grokking at the Edge of
Numerical Stability" (ICLR 2025, arXiv 2501.04697); see `jaxtrain.stablemax`
and `jaxtrain.collapse`.

Precision. The loss may be computed in float32 (or bfloat16/float16) by a cast,
or in float64 inside an otherwise float32 program. JAX (0.10) only creates
float64 values while `jax_enable_x64` is on, and turning it on for the whole
program changes every default dtype (int64 indices, float64 constants). It is
also a context manager, `jax.enable_x64(True)`, read at trace time, so a
float64 region inside a jitted float32 step works if every operation of the
region, its transpose included, is traced inside the context. Autodiff traces
the backward pass later, outside any `with` block of the forward code, so the
region is a `jax.custom_vjp` whose forward and backward both enter the
context: the forward casts the float32 logits up (exactly), computes the
per-example losses in float64 (keeping the float64 residuals of their VJP,
twice the float32 logits' memory) and returns them as float32; the backward
applies that VJP in float64 and casts the logits' gradient to float32, which
is what the official PyTorch code's `logits.to(torch.float64)` does to the
gradient. (Plain `with jax.enable_x64(True):` around the forward code fails:
the transpose then builds float64 zeros outside the context.) Float64 is for
CPU and GPU; TPUs have no float64 arithmetic.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from jaxtrain import collapse, stablemax
from jaxtrain.stablemax import OUTPUTS
DTYPES = ("float32", "float64", "bfloat16", "float16")


def _dtype(dtype):
  d = jnp.dtype(dtype)
  if d.name not in DTYPES:
    raise ValueError(f"loss dtype {d.name!r} is not one of {DTYPES}")
  return d


def _precision(dtype):
  """The context in which arrays of `dtype` can exist: x64 mode for float64, else nothing."""
  return jax.enable_x64(True) if jnp.dtype(dtype) == jnp.float64 else contextlib.nullcontext()


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _in_float64(fn, x, labels):
  with _precision(jnp.float64):
    out = fn(x.astype(jnp.float64), labels)
    return jax.tree.map(lambda o: o.astype(x.dtype), out)


def _in_float64_fwd(fn, x, labels):
  with _precision(jnp.float64):
    out, vjp = jax.vjp(lambda z: fn(z, labels), x.astype(jnp.float64))
    return jax.tree.map(lambda o: o.astype(x.dtype), out), vjp


def _in_float64_bwd(fn, vjp, ct):
  del fn
  dtype = jax.tree.leaves(ct)[0].dtype  # the outputs', i.e. the logits' dtype
  with _precision(jnp.float64):
    (g,) = vjp(jax.tree.map(lambda c: c.astype(jnp.float64), ct))
    return g.astype(dtype), None


_in_float64.defvjp(_in_float64_fwd, _in_float64_bwd)


def in_dtype(fn, logits, labels, dtype):
  """fn(logits cast to `dtype`, labels), differentiable in `logits`, float64 allowed.

  `fn` returns a pytree of float arrays, in `dtype`; float64 outside x64 mode
  comes back in the logits' dtype instead (and so do the logits' gradients).
  Use it for any per-example loss that must see more precision than the
  program runs in.
  """
  if jnp.dtype(dtype) == jnp.float64 and not jax.config.x64_enabled:
    return _in_float64(fn, logits, labels)
  return fn(logits.astype(dtype), labels)


def _per_example(output, stats: bool = False):
  """fn(z_NV, labels_N) -> {'ce', 'log_z'} per example, for the output activation.

  With `stats`, also the per-example collapse flags `collapsed` and `zero_loss`
  as 0/1 floats, computed here so that they see the loss in its own dtype.
  """
  if output not in OUTPUTS:
    raise ValueError(f"unknown output activation {output!r}; use one of {OUTPUTS}")

  def fn(z_NV, y_N):
    if output == "softmax":
      # log Σ exp(z - max) - (z_y - max), as log_softmax computes it: the loss of a
      # confident example is then exactly 0 only in Softmax Collapse (Σ rounds to 1),
      # whereas logsumexp(z) - z_y also rounds to 0 once log Σ < ulp(max z).
      max_N1 = jax.lax.stop_gradient(jnp.max(z_NV, axis=-1, keepdims=True))
      log_sum_N = jnp.log(jnp.sum(jnp.exp(z_NV - max_N1), axis=-1))
      y_logit_N = jnp.take_along_axis(z_NV, y_N[..., None], axis=-1)[..., 0]
      out = {"ce": log_sum_N - (y_logit_N - max_N1[..., 0]), "log_z": log_sum_N + max_N1[..., 0]}
    else:
      out = {"ce": stablemax.cross_entropy(z_NV, y_N), "log_z": stablemax.log_normalizer(z_NV)}
    if stats:
      out["collapsed"] = collapse.collapsed(z_NV, output).astype(z_NV.dtype)
      out["zero_loss"] = (out["ce"] == 0).astype(z_NV.dtype)
    return out

  return fn


def softmax_cross_entropy(logits, labels, *, dtype=jnp.float32):
  """Per-example softmax cross-entropy with integer labels, computed in `dtype` (float64 allowed).

  Like `optax.softmax_cross_entropy_with_integer_labels`; float64 comes back in the logits' dtype.
  """
  return in_dtype(lambda z, y: _per_example("softmax")(z, y)["ce"], logits, labels, _dtype(dtype))


def stablemax_cross_entropy(logits, labels, *, dtype=jnp.float32):
  """Per-example StableMax cross-entropy -log(s(z_y) / Σ_j s(z_j)), computed in `dtype`.

  The official code computes it in float64 (`dtype=jnp.float64`, which works
  without turning on x64 mode). Any leading shape; classes on the last axis;
  float64 comes back in the logits' dtype. Average it yourself (`.mean()` in the paper).
  """
  return in_dtype(stablemax.cross_entropy, logits, labels, _dtype(dtype))


def collapse_stats(logits, labels, *, output: str = "softmax", dtype=jnp.float32, mask=None):
  """{'sc_fraction', 'zero_loss_fraction'} over all rows, computed in the loss's `dtype`.

  Forward only (no gradient flows through). The zero-loss test must see the
  loss before any cast back: a float64 loss of 1e-50 is 0 in float32.
  """
  dtype = _dtype(dtype)
  with _precision(dtype):
    z = jax.lax.stop_gradient(logits).astype(dtype)
    ce = _per_example(output)(z, labels)["ce"]
    return {"sc_fraction": collapse.sc_fraction(z, output, mask),
            "zero_loss_fraction": collapse.zero_loss_fraction(ce, mask)}


def cross_entropy(logits_BTV, targets_BT, *, z_loss: float = 0.0, dtype=jnp.float32,
                  output: str = "softmax", collapse: bool = False, weights_BT=None, weight_sum=None):
  """Mean token cross-entropy (+ z-loss) and per-batch statistics.

  `output` is the output activation (softmax | stablemax), `dtype` the
  precision of the loss (float32, or float64 without x64 mode; see the module
  docstring). Any leading shape (B, T for the LM, B for a classifier).

  Returns (loss, aux) where aux has `ce` (cross-entropy alone), `z_loss`,
  `accuracy` and `log_z` (mean log normalizer: logsumexp for softmax,
  log Σ s(z) for StableMax), all scalars, and `ce_sum`/`tokens` for exact
  averaging across batches. With `collapse=True` aux also has `sc_fraction`
  and `zero_loss_fraction` (`jaxtrain.collapse`), over all tokens, in `dtype`.

  weights_BT: per-token weights (packed rows: 0 where a target is padding or another document's first token),
  or None. Every mean is then Σ w·x / Σ w, `ce_sum` is Σ w·ce and `tokens` Σ w. `weight_sum` replaces Σ w as
  the divisor: a microbatch passes the whole batch's Σ w / microbatches, so that the mean over microbatches is
  the batch's weighted mean exactly (0 counted as 1: a batch with nothing to learn has loss 0).
  """
  dtype = _dtype(dtype)
  per = in_dtype(_per_example(output, stats=collapse), logits_BTV, targets_BT, dtype)
  per = jax.tree.map(lambda x: x.astype(jnp.float32), per)
  if weights_BT is not None:
    return _weighted(per, logits_BTV, targets_BT, weights_BT, weight_sum, z_loss, collapse)
  ce_BT, log_z_BT = per["ce"], per["log_z"]
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
  if collapse:
    aux["sc_fraction"] = jax.lax.stop_gradient(per["collapsed"].mean())
    aux["zero_loss_fraction"] = jax.lax.stop_gradient(per["zero_loss"].mean())
  return ce + zl, aux


def _weighted(per, logits_BTV, targets_BT, weights_BT, weight_sum, z_loss, collapse):
  """cross_entropy's statistics as weighted means."""
  w_BT = weights_BT.astype(jnp.float32)
  total = jnp.sum(w_BT)
  divisor = total if weight_sum is None else jnp.asarray(weight_sum, jnp.float32)
  divisor = jnp.where(divisor > 0, divisor, 1.0)
  mean = lambda x_BT: jnp.sum(w_BT * x_BT) / divisor
  ce_BT, log_z_BT = per["ce"], per["log_z"]
  ce, zl = mean(ce_BT), z_loss * mean(log_z_BT**2)
  aux = {
      "ce": ce,
      "z_loss": zl,
      "accuracy": mean((jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)),
      "log_z": mean(log_z_BT),
      "ce_sum": jnp.sum(w_BT * ce_BT),
      "tokens": total,
  }
  if collapse:
    aux["sc_fraction"] = jax.lax.stop_gradient(mean(per["collapsed"]))
    aux["zero_loss_fraction"] = jax.lax.stop_gradient(mean(per["zero_loss"]))
  return ce + zl, aux
