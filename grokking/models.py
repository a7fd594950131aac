"""The paper's models (Prieto et al. 2025, official `models.py`): a bias-free ReLU MLP, a one-layer post-LN transformer.

Names carry shapes: B examples, S = 2 operand positions, D d_model, H heads,
K head_dim, F mlp width, V classes, I input features, W hidden width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _uniform(key, shapes_and_bounds):
  """Tensors U(±bound) of the given shapes, cut from one draw (one RNG op compiles far faster than many)."""
  sizes = [math.prod(shape) for shape, _ in shapes_and_bounds]
  u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1, 1)
  parts = jnp.split(u, np.cumsum(sizes)[:-1])
  return [b * x.reshape(shape) for x, (shape, b) in zip(parts, shapes_and_bounds)]


class MLP(nnx.Module):
  """ReLU MLP in -> W -> W -> V, PyTorch default init; integer inputs are concatenated one-hots."""

  def __init__(self, in_dim: int, width: int, classes: int, *, bias: bool, vocab: int | None, rngs: nnx.Rngs):
    self.vocab, self.bias = vocab, bias
    dims = [(in_dim, width), (width, width), (width, classes)]
    # kaiming_uniform(a=√5) = U(±1/√fan_in); torch draws biases from the same range.
    shapes = [((i, o), 1 / math.sqrt(i)) for i, o in dims]
    shapes += [((o,), 1 / math.sqrt(i)) for i, o in dims] if bias else []
    tensors = _uniform(rngs.params(), shapes)
    for i in range(3):
      setattr(self, f"w{i + 1}", nnx.Param(tensors[i]))
      if bias:
        setattr(self, f"b{i + 1}", nnx.Param(tensors[3 + i]))

  def __call__(self, x, *, key=None):
    """x: (B, S) int tokens in [0, vocab) (S one-hots of `vocab`, concatenated) or (B, I) floats."""
    del key  # no dropout
    w1 = self.w1[...]
    if self.vocab is not None:  # one-hot(x_s) @ w1 summed over slots = rows s·vocab + x_s of w1
      h_BW = sum(w1[s * self.vocab + x[:, s]] for s in range(x.shape[1]))
    else:
      h_BW = x @ w1
    for i in (1, 2, 3):
      if i > 1:
        h_BW = jax.nn.relu(h_BW) @ getattr(self, f"w{i}")[...]
      if self.bias:
        h_BW = h_BW + getattr(self, f"b{i}")[...]
    return h_BW


class _Dropout:
  """Inverted dropout whose masks are cut from one draw per forward pass (a key of None: off)."""

  def __init__(self, rate, key, shapes):
    self.rate, self.masks = rate, None
    if key is not None and rate > 0:
      sizes = [math.prod(s) for s in shapes]
      keep = jax.random.bernoulli(key, 1 - rate, (sum(sizes),))
      self.masks = [m.reshape(s) for m, s in zip(jnp.split(keep, np.cumsum(sizes)[:-1]), shapes)]

  def __call__(self, i, x):
    if self.masks is None:
      return x
    return jnp.where(self.masks[i], x / (1 - self.rate), 0)


class Transformer(nnx.Module):
  """One post-LN encoder layer (PyTorch defaults), no positions, read out at the last token."""

  def __init__(self, vocab: int, classes: int, *, d_model: int, num_heads: int, mlp_dim: int,
               dropout: float, rngs: nnx.Rngs):
    D, H, F = d_model, num_heads, mlp_dim
    K = D // H
    self.num_heads, self.dropout = H, dropout
    self.embed = nnx.Param(jax.random.normal(rngs.params(), (vocab, D)))
    # nn.MultiheadAttention: xavier_uniform over the (3D, D) in-projection, zero biases, the
    # out-projection with Linear's default weight init and a zero bias; Linear: U(±1/√fan_in).
    wqkv, wo, w_up, b_up, w_down, b_down, w_out, b_out = _uniform(rngs.params(), [
        ((D, 3, H, K), math.sqrt(6 / (D + 3 * D))), ((H, K, D), 1 / math.sqrt(D)),
        ((D, F), 1 / math.sqrt(D)), ((F,), 1 / math.sqrt(D)), ((F, D), 1 / math.sqrt(F)),
        ((D,), 1 / math.sqrt(F)), ((D, classes), 1 / math.sqrt(D)), ((classes,), 1 / math.sqrt(D))])
    self.wqkv, self.bqkv = nnx.Param(wqkv), nnx.Param(jnp.zeros((3, H, K)))
    self.wo, self.bo = nnx.Param(wo), nnx.Param(jnp.zeros((D,)))
    self.ln1_scale, self.ln1_bias = nnx.Param(jnp.ones((D,))), nnx.Param(jnp.zeros((D,)))
    self.w_up, self.b_up = nnx.Param(w_up), nnx.Param(b_up)
    self.w_down, self.b_down = nnx.Param(w_down), nnx.Param(b_down)
    self.ln2_scale, self.ln2_bias = nnx.Param(jnp.ones((D,))), nnx.Param(jnp.zeros((D,)))
    self.w_out, self.b_out = nnx.Param(w_out), nnx.Param(b_out)

  @staticmethod
  def _layernorm(x, scale, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias

  def __call__(self, tokens_BS, *, key=None):
    """Logits (B, V) from tokens (B, S); `key` turns dropout on (training)."""
    (B, S), (D, F), H = tokens_BS.shape, self.w_up.shape, self.num_heads
    drop = _Dropout(self.dropout, key, [(B, H, S, S), (B, S, D), (B, S, F), (B, S, D)])
    x_BSD = self.embed[...][tokens_BS]
    qkv = jnp.einsum("bsd,dchk->cbshk", x_BSD, self.wqkv[...]) + self.bqkv[...][:, None, None]
    q_BSHK, k_BSHK, v_BSHK = qkv
    logits_BHST = jnp.einsum("bshk,bthk->bhst", q_BSHK, k_BSHK) / math.sqrt(q_BSHK.shape[-1])
    probs_BHST = drop(0, jax.nn.softmax(logits_BHST, -1))
    a_BSD = jnp.einsum("bhst,bthk,hkd->bsd", probs_BHST, v_BSHK, self.wo[...]) + self.bo[...]
    x_BSD = self._layernorm(x_BSD + drop(1, a_BSD), self.ln1_scale[...], self.ln1_bias[...])
    h_BSF = drop(2, jax.nn.relu(x_BSD @ self.w_up[...] + self.b_up[...]))
    f_BSD = h_BSF @ self.w_down[...] + self.b_down[...]
    x_BSD = self._layernorm(x_BSD + drop(3, f_BSD), self.ln2_scale[...], self.ln2_bias[...])
    return x_BSD[:, -1] @ self.w_out[...] + self.b_out[...]


def _module(c, key) -> nnx.Module:
  rngs = nnx.Rngs(key)
  if c.task == "modular":
    vocab, classes, in_dim = c.p, c.p, 2 * c.p
  else:
    vocab, classes, in_dim = None, 2, c.n_bits
  if c.model == "mlp":
    bias = c.bias if c.bias is not None else c.task == "parity"
    return MLP(in_dim, c.width, classes, bias=bias, vocab=vocab, rngs=rngs)
  if c.model == "transformer":
    if vocab is None:
      raise ValueError("the transformer takes tokens: use task=modular")
    return Transformer(vocab, classes, d_model=c.d_model, num_heads=c.num_heads, mlp_dim=c.mlp_dim,
                       dropout=c.dropout, rngs=rngs)
  raise ValueError(f"unknown model {c.model!r}; use mlp or transformer")


def make_model(c, key):
  """(graphdef, params as a plain dict) for config `c`; the init runs jitted (one compile, not one per op)."""
  graphdef = nnx.split(nnx.eval_shape(lambda: _module(c, key)))[0]
  params = jax.jit(lambda k: nnx.to_pure_dict(nnx.split(_module(c, k))[1]))(key)
  return graphdef, params
