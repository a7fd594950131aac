"""Grokking: the paper's small models and a fast full-batch trainer with collapse metrics.

Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability"
(ICLR 2025, arXiv 2501.04697), on the tasks of Power et al. 2022. Settings are
the official code's (`utils.py`, `models.py`, `grokking_experiments.py` of
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability):

- `MLP`: in -> 200 -> 200 -> classes, ReLU, no biases (biases for sparse
  parity), PyTorch's default init U(±1/√fan_in). Modular arithmetic feeds it
  the concatenation of the two operands' one-hots (2p inputs); the first layer
  is computed as the sum of two rows of its weight, which is the same product
  without multiplying by 224 zeros.
- `Transformer`: one post-LN `nn.TransformerEncoderLayer(d_model=128, nhead=4)`
  with PyTorch's defaults (ReLU MLP of 2048, dropout 0.1, LayerNorm eps 1e-5,
  biases), token embedding N(0, 1), no positional encoding, no mask, a linear
  read-out at the last position.
- Full batch: one step sees the whole train split (an "epoch" is a step).

The trainer runs `log_every` steps per jitted `lax.scan` (no Python between
steps) and records per step the loss, train accuracy, Softmax Collapse and
zero-loss fractions (from that step's forward pass, in the loss's dtype), the
weight norm and the gradient-weight cosine (before the update), and after each
chunk the train and test accuracy and loss. Output activation, loss dtype,
optimizer, ⊥Grad and weight decay are config switches (`config()`).

Adam's state precision (`opt_dtype`). XLA on CPU flushes subnormal floats to
zero, PyTorch keeps them. In float32 a gradient entry below ~3e-18 then adds
exactly 0 to Adam's second moment ν ((1-β2)·g² < 1.2e-38, the smallest normal
float32) while the first moment m stays non-zero, and once ν has decayed to 0
the update m̂/(√ν̂ + ε) with the official ε = 1e-25 is ~g/ε: a step of ~1e3
for g = 1e-20 where Adam means ~lr. `opt_dtype="float64"` keeps m, ν and the
update arithmetic in float64 (x64 mode, scoped to `train`), where g² needs
|g| < 1e-154 to underflow; parameters, model and loss are unchanged.
`opt_dtype="float32_ieee"` is torch.optim.AdamW's float32 arithmetic with
subnormals kept (emulated in float64), the official code's optimizer: there ν
reaches 0 only for |g| ≲ 1e-21.
`opt_stats` records per step the share of ν entries that are exactly 0, the
entries with ν = 0 but m ≠ 0, the smallest non-zero ν, the gradient's
smallest non-zero and largest magnitudes, the share of non-zero gradient
entries in the flush band, and the largest |Δθ| of the step.

Names carry shapes: B examples, S = 2 operand positions, D d_model, H heads,
K head_dim, F mlp width, V classes, I input features, W hidden width.
"""

from __future__ import annotations

import logging
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxtrain import collapse, losses
from jaxtrain import config as cfg_lib
from jaxtrain.orthograd import orthograd

log = logging.getLogger("jaxtrain")


OPT_DTYPES = ("float32", "float64", "float32_ieee")


def config(**overrides) -> ml_collections.ConfigDict:
  """A grokking run: task, model, output and loss precision, optimizer, length. Defaults: the paper's."""
  c = ml_collections.ConfigDict(dict(
      task="modular",          # modular | parity
      op="add",                # modular: add | sub | mul
      p=113,
      train_fraction=None,     # None: the paper's, 0.4 for modular arithmetic, 0.5 for parity
      n_bits=43, k=3, num_samples=2000,  # parity
      data_seed=0,             # the train/test split
      data_dir="~/.cache/jaxtrain/tensorflow_datasets",
      model="mlp",             # mlp | transformer
      width=200,               # MLP hidden width
      bias=None,               # MLP biases; None: the paper's, none for modular arithmetic, biases for parity
      d_model=128, num_heads=4, mlp_dim=2048, dropout=0.1,  # transformer
      output="softmax",        # softmax | stablemax
      loss_dtype="float32",    # float32 | float64 (without x64 mode; see jaxtrain.losses)
      optimizer="adamw",       # adamw | sgd
      orthograd=False,         # ⊥Grad before the optimizer
      lr=0.01,
      b1=0.9,
      b2=0.99,
      eps=1e-25,               # the official default; optax's 1e-8 damps the tiny late gradients
      weight_decay=0.0,        # AdamW: decoupled (lr·wd·θ); SGD: L2 added to the gradient
      momentum=0.0,            # SGD
      opt_dtype="float32",     # float32 | float64 | float32_ieee: Adam's state and arithmetic (x64 scoped to train)
      steps=1000,
      log_every=100,           # steps per jitted chunk; test metrics after each
      seed=0,                  # parameter init and dropout
  ))
  for key in overrides:
    if key not in c:
      raise cfg_lib.unknown_key(key, list(c), schema="jaxtrain.grokking.config()")
  c.update(overrides)
  if c.opt_dtype not in OPT_DTYPES:
    raise cfg_lib.ConfigError(f"opt_dtype={c.opt_dtype!r}: use one of {', '.join(OPT_DTYPES)}")
  if c.opt_dtype != "float32" and c.optimizer != "adamw":
    raise cfg_lib.ConfigError(f"opt_dtype={c.opt_dtype} is for Adam's state; optimizer={c.optimizer!r} has none: "
                              "use optimizer=adamw or opt_dtype=float32")
  c.lock()  # a later typo'd assignment is an error too
  return c


# ---------------------------------------------------------------- models


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


# ---------------------------------------------------------------- data and optimizer


def load_data(c) -> dict[str, dict[str, np.ndarray]]:
  """The task's whole train and test splits as numpy arrays (TFDS, prepared on first use)."""
  from jaxtrain.data import grokking as tasks  # the data package imports grain, TFDS
  if c.task == "modular":
    f = 0.4 if c.train_fraction is None else c.train_fraction
    return tasks.load_modular(c.op, c.p, f, c.data_seed, c.data_dir)
  if c.task == "parity":
    f = 0.5 if c.train_fraction is None else c.train_fraction
    return tasks.load_parity(c.n_bits, c.k, c.num_samples, f, c.data_seed, c.data_dir)
  raise ValueError(f"unknown task {c.task!r}; use modular or parity")


def in_dtype(tx: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`tx` with its state and arithmetic in `dtype`: gradients and parameters cast in, updates cast back.

  For float64, x64 mode must be on while it is traced and run (`train` turns it on for opt_dtype=float64).
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
  Needs x64 mode (`train` turns it on for opt_dtype=float32_ieee).
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


# ---------------------------------------------------------------- training


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


def make_fns(c, graphdef, tx):
  """(run_chunk, evaluate): jitted pure functions of (state, data)."""

  def loss_fn(params, x, y, key):
    logits = nnx.merge(graphdef, params)(x, key=key)
    return losses.cross_entropy(logits, y, output=c.output, dtype=c.loss_dtype, collapse=True)

  def step(state, x, y):
    params, opt_state, i = state["params"], state["opt_state"], state["step"]
    # Dropout masks from XLA's RngBitGenerator: threefry would cost seconds of compile on a CPU.
    key = jax.random.fold_in(jax.random.key(c.seed + 1, impl="rbg"), i) if c.model == "transformer" else None
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, key)
    w_norm, w_norms = collapse.weight_norms(params)
    cos, coss = collapse.grad_weight_cosine(grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    if c.optimizer == "adamw":
      metrics = {f"opt/{k}": v for k, v in opt_stats(grads, opt_state, updates, c.b2).items()}
    else:
      metrics = {}
    metrics |= {"loss": aux["ce"], "accuracy": aux["accuracy"], "sc_fraction": aux["sc_fraction"],
               "zero_loss_fraction": aux["zero_loss_fraction"], "weight_norm": w_norm,
               "grad_weight_cos": cos, "grad_norm": optax.tree.norm(grads),
               **collapse.flatten(w_norms, "weight_norm"), **collapse.flatten(coss, "grad_weight_cos")}
    new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": i + 1}
    return new, metrics

  def run_chunk(state, x, y):
    return jax.lax.scan(lambda s, _: step(s, x, y), state, None, length=c.log_every)

  def evaluate(params, data):
    # One forward pass over every split (one trace to compile), then the metrics per split.
    logits = nnx.merge(graphdef, params)(jnp.concatenate([d["inputs"] for d in data.values()]))
    out, start = {}, 0
    for split, d in data.items():
      n = len(d["labels"])
      _, aux = losses.cross_entropy(logits[start:start + n], d["labels"], output=c.output, dtype=c.loss_dtype)
      out[f"{split}_accuracy"], out[f"{split}_loss"], start = aux["accuracy"], aux["ce"], start + n
    return out

  return jax.jit(run_chunk, donate_argnums=0), jax.jit(evaluate)


def train(c, data=None, *, verbose: bool = True, state=None, save_at=()) -> dict:
  """Trains config `c` full-batch; returns its history as numpy arrays.

  `history['step']` indexes the per-step metrics (loss, accuracy,
  sc_fraction, zero_loss_fraction, weight_norm, grad_weight_cos, grad_norm,
  per-tensor `weight_norm/<name>`, `grad_weight_cos/<name>`, and for AdamW
  the `opt/<name>` statistics of `opt_stats`);
  `history['eval']` holds `step`, `train_accuracy`, `test_accuracy`,
  `train_loss`, `test_loss` after every chunk (and at the first step), and
  `history['seconds_per_step']` the training chunks' wall time per step
  (compile and evaluation excluded), `history['seconds']` everything's.

  `state` (a `history['states']` entry: params, opt_state, step) continues a
  run from that step to `c.steps`; its optimizer state is cast to `opt_dtype`,
  so a float32 run can be continued with float64 or float32_ieee Adam state. `save_at`: steps
  (multiples of `log_every`) whose full state goes to `history['states'][step]`
  as numpy arrays.
  """
  if c.steps % c.log_every:
    raise ValueError(f"steps={c.steps} is not a multiple of log_every={c.log_every}")
  if any(s % c.log_every for s in save_at):
    raise ValueError(f"save_at={list(save_at)}: every step must be a multiple of log_every={c.log_every}")
  # x64 mode for float64 Adam state (float32_ieee keeps float32 values in float64), for tracing and running alike
  with losses._precision("float32" if c.opt_dtype == "float32" else "float64"):
    return _train(c, data, verbose, state, set(save_at))


def _train(c, data, verbose, state, save_at):
  data = data if data is not None else load_data(c)
  data = jax.tree.map(jnp.asarray, data)
  graphdef, params = make_model(c, jax.random.key(c.seed))
  tx = make_optimizer(c)
  if state is None:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  else:
    fresh, saved = tx.init(params), state["opt_state"]
    if jax.tree.structure(fresh) != jax.tree.structure(saved):  # another Adam: carry its count, m and ν over
      get = lambda name: optax.tree_utils.tree_get(saved, name)
      saved = optax.tree_utils.tree_set(fresh, count=get("count"), mu=get("mu"), nu=get("nu"))
    opt_state = jax.tree.map(lambda f, x: jnp.asarray(x, f.dtype), fresh, saved)
    state = {"params": jax.tree.map(jnp.asarray, state["params"]), "opt_state": opt_state,
             "step": jnp.asarray(state["step"], jnp.int32)}
  start = int(state["step"])
  if start >= c.steps or (c.steps - start) % c.log_every:
    raise ValueError(f"cannot continue from step {start} to steps={c.steps} in chunks of log_every={c.log_every}")
  run_chunk, evaluate = make_fns(c, graphdef, tx)

  t0 = time.perf_counter()
  x, y = data["train"]["inputs"], data["train"]["labels"]
  run_chunk = run_chunk.lower(state, x, y).compile()  # ahead of time, to keep it out of the step time
  per_step, evals = [], [{"step": start, **jax.device_get(evaluate(state["params"], data))}]
  states, seconds = {}, 0.0
  for chunk in range((c.steps - start) // c.log_every):
    t = time.perf_counter()
    state, metrics = run_chunk(state, x, y)
    metrics = jax.device_get(metrics)
    seconds += time.perf_counter() - t
    ev = {"step": start + (chunk + 1) * c.log_every, **jax.device_get(evaluate(state["params"], data))}
    per_step.append(metrics)
    evals.append(ev)
    if ev["step"] in save_at:
      states[ev["step"]] = jax.device_get(state)
    if verbose:
      extra = ""
      if "opt/nu_zero_fraction" in metrics:
        extra = "  ν=0 %.2e (m≠0: %d)  |Δθ|max %.3g  |g| %.2g..%.2g" % (
            metrics["opt/nu_zero_fraction"][-1], metrics["opt/nu_zero_m_nonzero"].max(),
            metrics["opt/update_max"].max(), metrics["opt/grad_min"].min(), metrics["opt/grad_max"][-1])
      log.info("step %6d  loss %.3g  train %.4f  test %.4f  SC %.3f  |θ| %.1f  cos %.3f%s",
               ev["step"], metrics["loss"][-1], ev["train_accuracy"], ev["test_accuracy"],
               metrics["sc_fraction"][-1], metrics["weight_norm"][-1], metrics["grad_weight_cos"][-1], extra)
  history = {k: np.concatenate([m[k] for m in per_step]) for k in per_step[0]}
  history["step"] = np.arange(start + 1, c.steps + 1)
  history["eval"] = {k: np.array([e[k] for e in evals]) for k in evals[0]}
  history["states"] = states
  history["seconds_per_step"] = seconds / (c.steps - start)
  history["seconds"] = time.perf_counter() - t0
  return history


def first_step_at(history, key: str = "test_accuracy", threshold: float = 0.95):
  """The first evaluated step with `history['eval'][key] >= threshold`, or None."""
  ev = history["eval"]
  hits = np.nonzero(ev[key] >= threshold)[0]
  return int(ev["step"][hits[0]]) if hits.size else None
