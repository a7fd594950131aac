"""A LLaMA-style decoder-only transformer in Flax NNX, used functionally.

    model = Transformer(config.model, rngs=nnx.Rngs(0))
    graphdef, params = split(model)            # params: a plain dict of arrays
    logits_BTV = nnx.merge(graphdef, params)(tokens_BT)

Token embedding (tied or untied) -> num_layers blocks -> final norm -> LM head.
A block is attention (RoPE, optional grouped-query heads and QK-norm) and an MLP
(SwiGLU or GELU), each a residual branch with its own norm. The blocks' parameters
are stacked on a leading `layers` axis; the forward pass runs them under
`lax.scan` (compile time independent of depth) or unrolled, from the same
parameters, so checkpoints do not depend on the mode.

`model.parametrization` is `sp` (standard) or `mus` (μnit Scaling, jaxtrain/munit.py:
unit-variance init, static multipliers 1/√fan_in in the hidden linears and 1/fan_in
in the LM head). `model.fp8` runs every hidden linear (q, k, v, attention out, MLP
in and out) in FP8 through `matmul` (jaxtrain/fp8.py); the embedding, LM head and
attention's q·kᵀ and p·v stay in the compute dtype.

Names carry shapes: B batch, T query positions, S key positions, D d_model,
H query heads, G kv heads, R = H/G heads per kv head, K head_dim, F mlp_dim,
V vocab, L layers.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import fp8 as fp8_lib
from jaxtrain import attention, munit, placement
from jaxtrain.sharding import constrain, is_axes


def matmul(eq: str, x: jax.Array, w: jax.Array, dtype, *, alpha: float = 1.0, recipe=None, side=None,
           out_dtype=None, w_axes=None) -> jax.Array:
  """The one dot product of every linear layer: α·einsum(eq, x, w) in the compute dtype, or in FP8.

  alpha:     a static output multiplier (μS's 1/√fan_in); 1 adds nothing to the program.
  recipe:    an `fp8.Recipe` (static or delayed FP8 casts) or None (the compute dtype).
  side:      FP8 only: the linear's delayed-scaling state and/or diagnostics probe (see fp8.py).
  out_dtype: the product's dtype where it must not be rounded to the compute dtype (the LM head: float32).
  w_axes:    FP8 only: w's logical axes; static FP8 casts w while it is still sharded (an FSDP gather moves FP8).
  """
  if recipe is not None:
    return fp8_lib.einsum(eq, x, w, alpha=alpha, recipe=recipe, out_dtype=dtype, side=side, w_axes=w_axes)
  y = jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=out_dtype)
  return y if alpha == 1.0 else y * alpha


class ParamInfo(NamedTuple):
  """What a parameter is, declared where it is made: the optimizer's per-group rules read this, never names or shapes.

  role:   'embedding' | 'hidden' (a linear inside a block) | 'head' (untied LM head) | 'norm' (gains and biases)
  fan_in: the number of inputs summed per output (the contracted size; 1 for norms), per layer for stacked blocks
  """
  role: str
  fan_in: int


def fan_in(eq: str, shape) -> int:
  """The contracted size of the weight in einsum `eq` ('btd,dhk->bthk' and shape (D, H, K): D)."""
  (x_spec, w_spec), out_spec = eq.split("->")[0].split(","), eq.split("->")[1]
  return math.prod(n for a, n in zip(w_spec, shape) if a in x_spec and a not in out_spec)


class Linear(nnx.Module):
  """A weight of any rank applied by an einsum, e.g. 'btd,dhk->bthk'.

  Its init std, output multiplier and (hidden linears only) FP8 recipe follow the parametrization.
  """

  def __init__(self, eq, shape, axes, *, std, m, rngs, role="hidden", name=""):
    self.eq, self.dtype = eq, jnp.dtype(m.compute_dtype)
    n = fan_in(eq, shape)
    std, self.alpha = munit.init_std(m, std), munit.multiplier(m, role, n)
    self.recipe = fp8_lib.recipe(m, name) if role == "hidden" else None  # name: its FP8 backward scale
    self.out_dtype = jnp.dtype("float32") if role == "head" else None  # logits leave the head unrounded, for the loss
    self.w_axes = tuple(axes)
    w = std * jax.random.normal(rngs.params(), shape, jnp.dtype(m.param_dtype))
    self.w = nnx.Param(w, axes=axes, info=ParamInfo(role, n))

  def __call__(self, x, side=None):
    return matmul(self.eq, x, self.w[...], self.dtype, alpha=self.alpha, recipe=self.recipe, side=side,
                  out_dtype=self.out_dtype, w_axes=self.w_axes)


class Norm(nnx.Module):
  """RMSNorm or LayerNorm over the last axis, computed in float32; `learnable=False` fixes the scale at 1."""

  def __init__(self, dim, *, m, axis_name="embed", learnable=True):
    self.kind, self.eps = m.norm.kind, m.norm.eps
    dtype = jnp.dtype(m.param_dtype)
    info = ParamInfo("norm", 1)
    self.scale = nnx.Param(jnp.ones((dim,), dtype), axes=(axis_name,), info=info) if learnable else None
    self.bias = (nnx.Param(jnp.zeros((dim,), dtype), axes=(axis_name,), info=info)
                 if learnable and self.kind == "layernorm" else None)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    if self.kind == "layernorm":
      x32 = x32 - x32.mean(-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(x.dtype)


def rope(x_BTNK: jax.Array, theta: float, positions_BT=None) -> jax.Array:
  """Rotary position embedding (rotate-half form) at positions 0..T-1, or at `positions_BT` (int [B, T])."""
  T, K = x_BTNK.shape[1], x_BTNK.shape[-1]
  freq_k = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
  if positions_BT is None:
    angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * freq_k[None, :]
    sin, cos = jnp.sin(angle_TK)[None, :, None, :], jnp.cos(angle_TK)[None, :, None, :]
  else:
    angle_BTK = positions_BT.astype(jnp.float32)[:, :, None] * freq_k
    sin, cos = jnp.sin(angle_BTK)[:, :, None, :], jnp.cos(angle_BTK)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNK.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BTNK.dtype)


class Attention(nnx.Module):
  """Causal multi-head attention with grouped-query heads, RoPE and optional QK-norm."""

  def __init__(self, m, *, out_std, rngs):
    D, H, G, K = m.d_model, m.num_heads, cfg_lib.num_kv_heads(m), cfg_lib.head_dim(m)
    self.m = m
    self.wq = Linear("btd,dhk->bthk", (D, H, K), ("embed", "heads", None), std=m.init_std, m=m, rngs=rngs,
                     name="attn.wq")
    self.wk = Linear("btd,dgk->btgk", (D, G, K), ("embed", "kv_heads", None), std=m.init_std, m=m, rngs=rngs,
                     name="attn.wk")
    self.wv = Linear("btd,dgk->btgk", (D, G, K), ("embed", "kv_heads", None), std=m.init_std, m=m, rngs=rngs,
                     name="attn.wv")
    self.wo = Linear("bthk,hkd->btd", (H, K, D), ("heads", None, "embed"), std=out_std, m=m, rngs=rngs,
                     name="attn.wo")
    if m.qk_norm:
      self.q_norm = Norm(K, m=m, axis_name=None)
      self.k_norm = Norm(K, m=m, axis_name=None)

  def __call__(self, x_BTD):
    return self.attend(x_BTD)[0]

  def attend(self, x_BTD, side=None, *, segment_ids_BT=None, positions_BT=None, cache=None):
    """(output, max |q·k|/√K over causal pairs; NaN where the fused kernel hides the logits).

    `side`: the FP8 linears' side inputs by name (see `fp8_side`), or None.
    segment_ids_BT: packed rows' documents (attention stays inside each; see attention.py), or None.
    positions_BT:   RoPE's positions (int [B, T]; default 0..T-1).
    cache:          decoding (jaxtrain/decode.py): {"k", "v": [B, S, G, K], "index": the first new position};
                    the T tokens attend to the cache's first `index` entries and to each other causally, and
                    the output is (out, NaN, (k_BTGK, v_BTGK)): the new entries, for the caller to store.
    """
    m = self.m
    q_BTHK = constrain(self.wq(x_BTD, _at(side, "wq")), ("batch", None, "heads", None))
    k_BTGK = constrain(self.wk(x_BTD, _at(side, "wk")), ("batch", None, "kv_heads", None))
    v_BTGK = constrain(self.wv(x_BTD, _at(side, "wv")), ("batch", None, "kv_heads", None))
    if m.qk_norm:
      q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
    q_BTHK, k_BTGK = rope(q_BTHK, m.rope_theta, positions_BT), rope(k_BTGK, m.rope_theta, positions_BT)
    if (qm := munit.query_multiplier(m, q_BTHK.shape[-1])) != 1.0:
      q_BTHK = q_BTHK * qm
    if cache is not None:
      out_BTHK = attention.cached(q_BTHK, k_BTGK, v_BTGK, cache["k"], cache["v"], cache["index"])
      return self.wo(out_BTHK, _at(side, "wo")), jnp.float32(jnp.nan), (k_BTGK, v_BTGK)
    out_BTHK, max_logit = attention.causal(q_BTHK, k_BTGK, v_BTGK, attention.kernel(m.attention, m.compute_dtype),
                                           segment_ids_BT)
    return self.wo(out_BTHK, _at(side, "wo")), max_logit




class Mlp(nnx.Module):
  """SwiGLU (down(silu(gate x) * up x)) or GELU (down(gelu(up x))); `wi` holds [gate, up] or [up]."""

  def __init__(self, m, *, out_std, rngs):
    D, F = m.d_model, cfg_lib.mlp_dim(m)
    self.kind = m.mlp
    C = 2 if m.mlp == "swiglu" else 1  # SwiGLU's gate and up projections are one matmul: [D, 2, F]
    self.wi = Linear("btd,dcf->btcf", (D, C, F), ("embed", None, "mlp"), std=m.init_std, m=m, rngs=rngs,
                     name="mlp.wi")
    self.down = Linear("btf,fd->btd", (F, D), ("mlp", "embed"), std=out_std, m=m, rngs=rngs, name="mlp.down")

  def __call__(self, x_BTD, side=None):
    wi = self.wi
    if self.kind == "swiglu" and wi.recipe is None:  # FP8 keeps autodiff through fp8.einsum
      h_BTF = swiglu_in(x_BTD.astype(wi.dtype), wi.w[...].astype(wi.dtype), wi.alpha)
    else:
      h_BTCF = wi(x_BTD, _at(side, "wi"))
      h_BTF = swiglu(h_BTCF) if self.kind == "swiglu" else jax.nn.gelu(h_BTCF[:, :, 0])
    return self.down(constrain(h_BTF, ("batch", None, "mlp")), _at(side, "down"))


def swiglu(h_BTCF):
  """silu(gate)·up from the [gate, up] projection."""
  return jax.nn.silu(h_BTCF[:, :, 0]) * h_BTCF[:, :, 1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def swiglu_in(x_BTD, wi_DCF, alpha: float = 1.0):
  """swiglu(α·x·wi): SwiGLU's input matmul and activation, with a backward pass written for XLA's CPU GEMMs.

  Autodiff stores six [B, T, F] tensors of the activation for the backward pass, builds d[gate, up] as two
  zero-padded [B, T, 2, F] halves that it adds, and computes the weight gradient transposed, so XLA copies
  the [B·T, 2F] gradient into its transpose first and transposes the product again. Here the forward pass
  keeps only x and the product, the backward recomputes the sigmoid, writes d[gate, up] once (the same
  per-element formulas: `jax.vjp` of `swiglu`) and contracts x, not the gradient, for the weight gradient.
  On the benchmark model: 19% less memory traffic outside the GEMMs, 26% less workspace (benchmarks/README.md).
  The output and dx are autodiff's bit for bit; the weight gradient differs by float32 rounding (the GEMM's
  operands come in the other order).
  """
  return _swiglu_in_fwd(x_BTD, wi_DCF, alpha)[0]


def _swiglu_in_fwd(x_BTD, wi_DCF, alpha):
  h_BTCF = jnp.einsum("btd,dcf->btcf", x_BTD, wi_DCF)
  h_BTCF = h_BTCF if alpha == 1.0 else h_BTCF * alpha
  return swiglu(h_BTCF), (x_BTD, wi_DCF, h_BTCF)


def _swiglu_in_bwd(alpha, res, dout_BTF):
  x_BTD, wi_DCF, h_BTCF = res
  _, vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, h_BTCF[:, :, 0], h_BTCF[:, :, 1])
  dgate_BTF, dup_BTF = vjp(dout_BTF)
  # One select over [B, T, 2, F], not a concatenation: XLA would fuse that into a slow transposed copy.
  gate_C = jax.lax.broadcasted_iota(jnp.int32, h_BTCF.shape, 2) == 0
  dh_BTCF = jnp.where(gate_C, dgate_BTF[:, :, None], dup_BTF[:, :, None])
  dh_BTCF = dh_BTCF if alpha == 1.0 else dh_BTCF * alpha
  return jnp.einsum("btcf,dcf->btd", dh_BTCF, wi_DCF), jnp.einsum("btd,btcf->dcf", x_BTD, dh_BTCF)


swiglu_in.defvjp(_swiglu_in_fwd, _swiglu_in_bwd)


class Block(nnx.Module):
  """One transformer layer: attention and MLP branches, wired to their norms by `placement`."""

  def __init__(self, m, *, rngs):
    n = m.norm
    out_std = m.init_std / (2 * m.num_layers) ** 0.5 if m.depth_scaled_init else m.init_std
    self.tau = n.res_post_tau
    self.attn_norm = Norm(m.d_model, m=m)
    self.attn = Attention(m, out_std=out_std, rngs=rngs)
    self.mlp_norm = Norm(m.d_model, m=m)
    self.mlp = Mlp(m, out_std=out_std, rngs=rngs)
    peri = placement.has_out_norm(n.placement)
    self.attn_out_norm = Norm(m.d_model, m=m, learnable=n.out_norm_scale) if peri else None
    self.mlp_out_norm = Norm(m.d_model, m=m, learnable=n.out_norm_scale) if peri else None

  def __call__(self, x_BTD, layer, kind: str, collect: bool = False, side=None, *, segment_ids_BT=None,
               positions_BT=None, cache=None):
    """`layer` is 0-based (traced under scan); `kind` is this layer's wiring (see placement.py).

    With `collect`, returns (output, {"attn_max_logit": ...}). `side`: this layer's FP8 side inputs or None.
    `segment_ids_BT`, `positions_BT`, `cache`: see `Attention.attend`; with a cache, the stats also hold "kv",
    this layer's new (k, v) entries.
    """
    stats = {}

    def attn(h_BTD):
      out = self.attn.attend(h_BTD, _at(side, "attn"), segment_ids_BT=segment_ids_BT, positions_BT=positions_BT,
                             cache=cache)
      stats["attn_max_logit"] = out[1]
      if cache is not None:
        stats["kv"] = out[2]
      return out[0]

    wire = functools.partial(placement.residual, kind, layer=layer, tau=self.tau)
    x_BTD = wire(x_BTD, attn, self.attn_norm, self.attn_out_norm)
    x_BTD = wire(x_BTD, functools.partial(self.mlp, side=_at(side, "mlp")), self.mlp_norm, self.mlp_out_norm)
    x_BTD = constrain(x_BTD, ("batch", None, None))
    return (x_BTD, stats) if collect else x_BTD


_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nnx.Module):
  """The language model: tokens_BT -> logits_BTV."""

  def __init__(self, m, *, rngs: nnx.Rngs):
    m = ml_collections.FrozenConfigDict(m)  # hashable, so the graphdef can be a static jit argument
    self.m = m
    V, D = m.vocab_size, m.d_model
    self.embed = nnx.Param(
        munit.init_std(m, m.init_std) * jax.random.normal(rngs.params(), (V, D), jnp.dtype(m.param_dtype)),
        axes=("vocab", "embed"), info=ParamInfo("embedding", 1))

    @nnx.split_rngs(splits=m.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return Block(m, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.embed_norm = Norm(D, m=m) if m.norm.embed_norm else None
    self.final_norm = Norm(D, m=m) if m.norm.final else None
    if not m.tie_embeddings:
      self.head = Linear("btd,dv->btv", (D, V), ("embed", "vocab"), std=m.init_std, m=m, rngs=rngs, role="head")

  def __call__(self, tokens_BT, side=None, *, segment_ids_BT=None, gate=None):
    return self.logits(self.hidden(tokens_BT, side=side, segment_ids_BT=segment_ids_BT, gate=gate))

  def hidden(self, tokens_BT, *, skip=None, gate=None, collect=False, keep_states=False, side=None,
             segment_ids_BT=None, cache=None):
    """The residual stream after the last block (the final norm's input).

    skip:    optional bool[L]: layer ℓ is replaced by the identity where skip[ℓ].
    gate:    optional float[L]: layer ℓ's output is y·g_ℓ + x·(1 − g_ℓ), x its input: MSG's mask
             ramp for new layers (Yao et al., ICLR 2024; growth/events.py), exact at g = 0 and g = 1.
    collect: also return per-layer statistics {name: [L] array}: `resid_var`
             (mean over tokens of the variance over features, after each block),
             `resid_max_abs` and `attn_max_logit` (max |q·k|/√K over causal pairs).
    keep_states: with collect, add `states`: the residual stream entering each
             layer and after the last, [L+1, B, T, D].
    side:    the FP8 linears' side inputs, `fp8_side(...)` (delayed scaling's state,
             diagnostics probes), or None.
    segment_ids_BT: int [B, T], the document of each token of packed rows (1, 2, ...; 0 padding), or None:
             attention stays within each document and RoPE's positions restart at 0 at each.
    cache:   decoding with a KV cache (jaxtrain/decode.py): {"k", "v": [L, B, S, G, K], "index": the
             position of tokens_BT's first token}; returns (x_BTD, the cache with the T new entries written
             at index..index+T-1, "index" unchanged). Not with `collect`.
    """
    m = self.m
    positions_BT = None
    if segment_ids_BT is not None:
      positions_BT = attention.segment_positions(segment_ids_BT)
    if cache is not None:
      positions_BT = jnp.broadcast_to(cache["index"] + jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    x_BTD = self.embed[...][tokens_BT].astype(m.compute_dtype)
    if (em := munit.embed_multiplier(m)) != 1.0:
      x_BTD = x_BTD * em
    if self.embed_norm is not None:
      x_BTD = self.embed_norm(x_BTD)
    x_BTD = constrain(x_BTD, ("batch", None, None))
    block_def, block_params = nnx.split(self.blocks)
    skip_L = jnp.zeros((m.num_layers,), bool) if skip is None else jnp.asarray(skip, bool)
    skip_given = skip is not None
    gate_L = None if gate is None else jnp.asarray(gate, jnp.float32)
    kinds = placement.layer_kinds(m.norm.placement, m.num_layers, m.norm.mix_post_fraction,
                                   m.norm.mix_post_layers)
    per_layer = []
    for kind, first, end in placement.segments(kinds):  # Mix-LN: one scan per run of equal wiring

      def apply_block(x_BTD, xs, kind=kind):
        params, layer, skip, side_l, gate_l, kv_l = xs
        cache_l = None if kv_l is None else {"k": kv_l[0], "v": kv_l[1], "index": cache["index"]}
        y_BTD, stats = nnx.merge(block_def, params)(x_BTD, layer, kind, collect=True, side=side_l,
                                                    segment_ids_BT=segment_ids_BT, positions_BT=positions_BT,
                                                    cache=cache_l)
        if skip_given:  # the identity in place of skipped layers
          y_BTD = jnp.where(skip, x_BTD, y_BTD)
        if gate_l is not None:  # a new layer fading in: y·m + x·(1 − m), so m = 0 is x and m = 1 is y exactly
          y_BTD = (y_BTD * gate_l + x_BTD * (1 - gate_l)).astype(x_BTD.dtype)
        if not collect:
          return y_BTD, None if cache is None else {"kv": stats["kv"]}
        y32 = y_BTD.astype(jnp.float32)
        stats |= {"resid_var": jnp.mean(jnp.var(y32, axis=-1)), "resid_max_abs": jnp.max(jnp.abs(y32))}
        if keep_states:
          stats["states"] = x_BTD
        return y_BTD, stats

      if m.remat != "none":
        apply_block = jax.checkpoint(apply_block, policy=_REMAT[m.remat], prevent_cse=not m.scan_layers)
      xs = (jax.tree.map(lambda a: a[first:end], block_params), jnp.arange(first, end), skip_L[first:end],
            jax.tree.map(lambda a: a[first:end], _at(side, "blocks")), None if gate_L is None else gate_L[first:end],
            None if cache is None else (cache["k"][first:end], cache["v"][first:end]))
      if m.scan_layers:
        x_BTD, stats = jax.lax.scan(apply_block, x_BTD, xs)
        per_layer.append(stats)
      else:
        for l in range(end - first):
          x_BTD, stats = apply_block(x_BTD, jax.tree.map(lambda a: a[l], xs))
          per_layer.append(jax.tree.map(lambda a: a[None], stats))
    if cache is not None:  # each layer's new entries, [L, B, T, G, K], written into the cache at once
      k_LBTGK, v_LBTGK = (jnp.concatenate(a) for a in zip(*(s["kv"] for s in per_layer)))
      at = (0, 0, cache["index"], 0, 0)
      return x_BTD, cache | {"k": jax.lax.dynamic_update_slice(cache["k"], k_LBTGK.astype(cache["k"].dtype), at),
                             "v": jax.lax.dynamic_update_slice(cache["v"], v_LBTGK.astype(cache["v"].dtype), at)}
    if not collect:
      return x_BTD
    stats = jax.tree.map(lambda *a: jnp.concatenate(a), *per_layer)
    if keep_states:
      stats["states"] = jnp.concatenate([stats["states"], x_BTD[None]])
    return x_BTD, stats

  def logits(self, x_BTD):
    """The output head: final norm, then the (tied or untied) unembedding."""
    if self.final_norm is not None:
      x_BTD = self.final_norm(x_BTD)
    if self.m.tie_embeddings:  # refused under μS (munit.check): no multiplier here
      logits_BTV = matmul("btd,vd->btv", x_BTD, self.embed[...], jnp.dtype(self.m.compute_dtype),
                          out_dtype=jnp.float32)
    else:
      logits_BTV = self.head(x_BTD)
    return constrain(logits_BTV, ("batch", None, "vocab"))


def _at(side, key):
  """side[key], or None where there are no side inputs."""
  return None if side is None else side.get(key)


# ---------------------------------------------------------------- FP8 state and side inputs


def fp8_linears(m) -> list[tuple[str, ...]]:
  """The paths of the FP8 linears (every hidden linear when model.fp8 != none), e.g. ('blocks', 'attn', 'wq')."""
  if m.fp8 == "none":
    return []
  paths = jax.tree_util.tree_flatten_with_path(param_info(m), is_leaf=is_info)[0]
  return [tuple(k.key for k in path[:-1]) for path, info in paths if info.role == "hidden"]


def _nest(items) -> dict:
  tree = {}
  for path, value in items:
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return tree


def fp8_state(m) -> dict:
  """Delayed scaling's initial state, per FP8 linear and layer (`fp8.init_meta`, stacked [L, ...]); {} otherwise.

  Kept in the train state as `state["fp8"]`, beside (not in) the parameters.
  """
  if m.fp8 != "delayed":
    return {}
  meta = jax.tree.map(lambda a: jnp.broadcast_to(a, (m.num_layers, *a.shape)), fp8_lib.init_meta(m.fp8_history))
  return _nest((path, meta) for path in fp8_linears(m))


def fp8_side(m, state: dict | None, probes: bool):
  """The side inputs of every FP8 linear for one forward pass: {'meta': its state, 'probe': zeros [L, 3, 3]}.

  Differentiate the loss with respect to them: the cotangents are the new delayed-scaling state ('meta') and
  the cast statistics ('probe'). None when there is nothing to pass (model.fp8=none, or static without probes).
  """
  paths = fp8_linears(m)
  if not paths or (m.fp8 == "static" and not probes):
    return None

  def one(path):
    side = {}
    if state:
      node = state
      for k in path:
        node = node[k]
      side["meta"] = node
    if probes:
      side["probe"] = jnp.zeros((m.num_layers, len(fp8_lib.TENSORS), len(fp8_lib.STATS)), jnp.float32)
    return side

  return _nest((path, one(path)) for path in paths)


# ---------------------------------------------------------------- functional use


def split(model: Transformer):
  """(graphdef, params) with params a plain nested dict of arrays."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def abstract(m):
  """(graphdef, params as ShapeDtypeStructs, logical axes of each param), with no memory used."""
  model = nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)

  def axes_of(v):
    axes = v.get_metadata()["axes"]
    return ("layers",) * (v.get_value().ndim - len(axes)) + tuple(axes)  # stacked blocks gain a layers axis

  axes = jax.tree.map(axes_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(axes)


def param_info(m):
  """A pytree like the params with a `ParamInfo` (role, fan-in) at each leaf, from what each layer declares."""
  state = nnx.state(nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0))))
  info = jax.tree.map(lambda v: v.get_metadata()["info"], state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(info)


def is_info(x) -> bool:
  return isinstance(x, ParamInfo)


def stacked(axes_tree):
  """True for each parameter stacked on a leading `layers` axis (one tensor per layer), from `abstract`'s axes."""
  return jax.tree.map(lambda a: bool(a) and a[0] == "layers", axes_tree, is_leaf=is_axes)


def init(m, key: jax.Array):
  """Fresh parameters (plain dict) from a PRNG key; jit it with out_shardings to place them."""
  return split(Transformer(m, rngs=nnx.Rngs(key)))[1]


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
