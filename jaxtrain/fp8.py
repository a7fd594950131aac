"""FP8 linear layers: static scaling (μnit Scaling) and delayed scaling (the amax-history baseline).

μnit Scaling (Narayan, Gupta, Paul, Blalock; "μnit Scaling: Simple and Scalable FP8 LLM Training", ICML 2025,
arXiv 2502.05967) keeps every hidden tensor near unit scale, so weights, activations and gradients are cast to
FP8 directly, with no scale state:

    forward     y = α · (sat(x, E4M3) · sat(w, E4M3))                    α = 1/√fan_in (μS) or 1 (SP)
    backward    ĝ = sat(S·g, E5M2)                                       S: static gradient scale
                dx = (α/S) · ĝ · sat(w)ᵀ        dw = (α/S) · sat(x)ᵀ · ĝ

`sat(x, f) = clip(x, ±max_f).astype(f)`: a plain cast turns E4M3FN overflow into NaN and E5M2 overflow into
Inf; clipping saturates instead (paper A.1.2). α is a compile-time constant, so XLA folds it into the GEMM's
`alpha` on GPU. S is the gap the paper leaves (it says only that gradients "can be directly cast", §3.3): with a
mean loss over N tokens the gradients at the hidden outputs are ~1/(N·d) and 98-100% of them underflow E5M2;
S = N·d (μS; N for SP, whose head has no 1/d) brings them to unit scale. S multiplies g just before the cast and
is divided out of dx and dw in the same backward, so no gradient outside this function, and no optimizer, ever sees it.
`model.fp8_grad_rule=per_linear` gives each hidden linear its own static S·2^k (`grad_multiplier`): the gradients
drift apart during training, and one S for all keeps neither in the middle of E5M2's range.

Delayed scaling (`delayed`; what Flax's `Fp8DirectDotGeneralOp`, MaxText and Transformer Engine ship) divides
each tensor by a per-tensor scale from the max of its last `history` amaxes before casting, and multiplies the
GEMM output back. We reuse `flax.linen.fp8_ops`' `update_fp8_meta` (the scale rule, the amax history roll) and
`quantize` (scale, saturate, cast); not its Linen modules nor the `_overwrite_with_gradient` collection. Its
idea stays: the scale state is an input of the custom_vjp whose cotangent is the new state. The train step
differentiates with respect to it and stores the cotangent as `state["fp8"]`; over microbatches the new states
combine by max (every microbatch sees the same old state, so only the newest amax differs). Without state
(evaluation, a notebook's forward pass), delayed scaling falls back to the current tensor's amax.

Health diagnostics ride the same channel: a zero `probe` input [3, 7] whose cotangent is, for the tensors
entering the casts (x, w, g: rows), their RMS, underflow fraction (non-zeros that become 0), saturation
fraction (clipped to max), share of exact zeros, share of the squared norm lost to underflow, the underflow
an amax scale would leave and the amax: columns (`STATS`). See `cast_stats`.

Every function takes the activations as x_MK (M tokens, K = fan_in) and the weight as w_KN (N: one or more output
axes); the model reshapes its einsums to this form (`einsum`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax.linen import fp8_ops

from jaxtrain import config as cfg_lib
from jaxtrain import sharding

E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
STATS = ("rms", "underflow", "saturation", "zero", "lost", "amax_underflow", "amax")  # the probe's columns
TENSORS = ("x", "w", "g")                  # the probe's rows: activation, weight, output gradient
MODES = ("none", "static", "delayed")    # model.fp8
GRAD_RULES = ("uniform", "per_linear")     # model.fp8_grad_rule
# per_linear: each hidden linear's static backward scale is S·2^k (see `grad_multiplier`).
PER_LINEAR_SHIFT = {"attn.wq": 4, "attn.wk": 4, "attn.wv": 9, "attn.wo": 10, "mlp.wi": 10, "mlp.down": 10}
E5M2_MAX = 57344.0                       # E5M2's largest finite value
# The static gradient scale's init estimate (μS; not in the paper): S·g has RMS up to ~2·S/(tokens·width); 64× for tails.
GRAD_RMS_PER_UNIT_SCALE, GRAD_TAIL = 2.0, 64.0


class Recipe(NamedTuple):
  """How the FP8 linears of a model cast (static, hashable: part of the model's graph definition).

  mode:        'static' | 'delayed'
  grad_scale:  static: S, or 0 for auto = tokens in the call × `auto_width`
  auto_width:  d_model under μS (undoes the head's 1/d in the backward), 1 under SP
  grad_mult:   static: this linear's factor on S (`model.fp8_grad_rule=per_linear`: 2^k, `grad_multiplier`)
  """
  mode: str
  grad_scale: float = 0.0
  auto_width: int = 1
  grad_mult: float = 1.0


def saturate(x: jax.Array, dtype) -> jax.Array:
  """Cast to an FP8 format, clipping to its largest finite value first (a plain cast overflows to NaN/Inf)."""
  big = float(jnp.finfo(dtype).max)
  return jnp.clip(x, -big, big).astype(dtype)


def cast_stats(x: jax.Array, dtype) -> jax.Array:
  """[rms, underflow, saturation, zero, lost, amax_underflow, amax] of x as it enters the cast to `dtype` (float32 [7]).

  underflow:       the fraction of x's non-zero entries that the cast rounds to zero;
  saturation:      the fraction of all entries beyond the format's largest finite value (clipped);
  zero:            the fraction of entries that are exactly 0 before the cast (an all-zero gradient: 1, and
                   underflow 0, so the two are read together);
  lost:            the fraction of x's squared norm (Σx²) in the entries the cast rounds to zero: what underflow
                   costs the matmul, where `underflow` only counts entries;
  amax_underflow:  the underflow had x been scaled to put its amax at the format's max (what a per-tensor amax
                   scale, current or delayed, would reach): the floor no per-tensor scale goes below unclipped;
  amax:            max |x| (the headroom to the format's max).
  """
  x32 = x.astype(jnp.float32)
  nonzero = x32 != 0
  n_nonzero = jnp.maximum(jnp.sum(nonzero), 1)
  lost = nonzero & (saturate(x32, dtype).astype(jnp.float32) == 0)
  sq = x32 * x32
  rms = jnp.sqrt(jnp.mean(sq))
  big = float(jnp.finfo(dtype).max)
  amax = jnp.max(jnp.abs(x32))
  at_amax = x32 * jnp.where(amax > 0, big / amax, 1.0)
  stats = [rms, jnp.sum(lost) / n_nonzero, jnp.mean(jnp.abs(x32) > big), 1.0 - jnp.mean(nonzero),
           jnp.sum(jnp.where(lost, sq, 0.0)) / jnp.maximum(jnp.sum(sq), jnp.finfo(jnp.float32).tiny),
           jnp.sum(nonzero & (saturate(at_amax, dtype).astype(jnp.float32) == 0)) / n_nonzero, amax]
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in stats])


def init_meta(history: int) -> dict:
  """One linear's delayed-scaling state: per tensor (x, w, g) a scale (x_q = x / scale) and its amax history."""
  one = lambda: {"scale": jnp.ones((), jnp.float32), "history": jnp.zeros((history,), jnp.float32)}
  return {name: one() for name in TENSORS}


def _delayed(x, meta, dtype):
  """(x_q, scale, new meta) by Flax's delayed rule; without meta, the scale of x's own amax (current scaling)."""
  if meta is None:
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    scale = jnp.where(jnp.isfinite(amax) & (amax > 0), amax / float(jnp.finfo(dtype).max), 1.0)
    new = None
  else:
    scale, history = fp8_ops.update_fp8_meta(x, dtype, meta["scale"], meta["history"])
    new = {"scale": scale, "history": history}
  return fp8_ops.quantize(x.astype(jnp.float32), dtype, scale, jnp.float32), scale, new


def _dot(a, b, contract):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _fwd(x_MK, w_KN, side, alpha, recipe, out_dtype):
  meta, probe = side.get("meta"), side.get("probe")
  if recipe.mode == "static":
    xs, ws = x_MK, w_KN  # what enters the casts
    xq = saturate(xs, E4M3)
    wq = side["wq"] if "wq" in side else saturate(ws, E4M3)  # cast before an FSDP gather (`einsum`'s w_axes)
    sx = sw = 1.0  # python floats: α stays a compile-time constant
    new_x = new_w = None
  else:
    xq, sx, new_x = _delayed(x_MK, None if meta is None else meta["x"], E4M3)
    wq, sw, new_w = _delayed(w_KN, None if meta is None else meta["w"], E4M3)
    xs, ws = x_MK / sx, w_KN / sw
  y = _dot(xq, wq, ((1,), (0,))) * (alpha * sx * sw)
  stats = None if probe is None else (cast_stats(xs, E4M3), cast_stats(ws, E4M3))
  scales = None if recipe.mode == "static" else (sx, sw)  # static: nothing saved, α stays constant in the bwd
  given = "wq" in side  # its cotangent, zeros, goes back in the same place
  return y.astype(out_dtype), (xq, wq, scales, meta, new_x, new_w, stats, given or None)


def _bwd(alpha, recipe, out_dtype, res, g_MN):
  xq, wq, scales, meta, new_x, new_w, stats, given = res
  sx, sw = (1.0, 1.0) if scales is None else scales
  n_out = g_MN.ndim - 1
  g32 = g_MN.astype(jnp.float32)
  if recipe.mode == "static":
    S = (recipe.grad_scale or g_MN.shape[0] * recipe.auto_width) * recipe.grad_mult  # auto: tokens × width
    gs = g32 * S
    gq, post = saturate(gs, E5M2), alpha / S
    new_g = None
  else:
    gq, sg, new_g = _delayed(g32, None if meta is None else meta["g"], E5M2)
    gs, post = g32 / sg, alpha * sg
  out_axes = tuple(range(1, 1 + n_out))
  dx_MK = _dot(gq, wq, (out_axes, out_axes)) * (post * sw)
  dw_KN = _dot(xq, gq, ((0,), (0,))) * (post * sx)
  side_ct = {}
  if given:
    side_ct["wq"] = jnp.zeros_like(wq)  # w's gradient is dw_KN
  if meta is not None:
    side_ct["meta"] = {"x": new_x, "w": new_w, "g": new_g}
  if stats is not None:
    side_ct["probe"] = jnp.stack([*stats, cast_stats(gs, E5M2)])
  return dx_MK.astype(out_dtype), dw_KN, side_ct


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def linear(x_MK, w_KN, side, alpha: float, recipe: Recipe, out_dtype):
  """α · x_MK · w_KN with FP8 operands in the forward and both backward GEMMs -> y_M..., in `out_dtype`.

  x_MK must be in `out_dtype` and w_KN in float32 (their gradients come back in those dtypes).

  `side` is a dict with optional entries `meta` (delayed scaling's state, `init_meta`), `probe` (zeros [3,
  len(STATS)]) and, static only, `wq` (w_KN already cast to E4M3: `einsum` casts it before an FSDP gather);
  their cotangents are the new state, the cast statistics and zeros.
  """
  return _fwd(x_MK, w_KN, side, alpha, recipe, out_dtype)[0]


linear.defvjp(_fwd, _bwd)


def einsum(eq: str, x, w, *, alpha: float, recipe: Recipe, out_dtype, side=None, w_axes=None):
  """`jnp.einsum(eq, x, w) · α` through `linear`: eq must contract x's trailing axes with w's leading ones.

  'btd,dhk->bthk', 'bthk,hkd->btd', 'btd,dcf->btcf' and 'btf,fd->btd' all do: x becomes [tokens, fan_in]
  (the 2-D form XLA's FP8 GEMM rewrite matches), w only merges its contracted axes.

  w_axes: w's logical axes (jaxtrain/sharding.py). With static FP8, w is cast to E4M3 where it lies, pinned to its
  own sharding, so that the all-gather FSDP needs before the GEMM moves FP8 (1 byte per entry), not float32 or the
  16-bit copy XLA otherwise gathers and casts after: the trick Transformer Engine and torchao use for FP8 FSDP
  (not in the μS paper). A static cast needs no scale, so the sharded cast is exactly the gathered one.
  """
  (xs, ws), out = eq.split("->")[0].split(","), eq.split("->")[1]
  k = len([a for a in ws if a in xs and a not in out])
  if xs[len(xs) - k:] != ws[:k] or out != xs[:len(xs) - k] + ws[k:]:
    raise ValueError(f"fp8.einsum: {eq!r} does not contract x's trailing axes with w's leading axes")
  lead, K = x.shape[:x.ndim - k], math.prod(x.shape[x.ndim - k:])
  x_MK, w_KN = x.astype(out_dtype).reshape(-1, K), w.astype(jnp.float32).reshape(K, *w.shape[k:])
  side = dict(side or {})
  if recipe.mode == "static" and w_axes is not None:
    side["wq"] = sharding.constrain(saturate(w, E4M3), tuple(w_axes)).reshape(K, *w.shape[k:])
  y = linear(x_MK, w_KN, side, alpha, recipe, jnp.dtype(out_dtype))
  return y.reshape(*lead, *w.shape[k:])


def grad_multiplier(m, name: str) -> float:
  """The factor on S of the hidden linear `name` (e.g. 'attn.wq'): 1, or 2^k under `fp8_grad_rule=per_linear`.

  Why per linear. S = N·d (N tokens, d the width) is unit scaling's loss-gradient rule (its cross-entropy sums over
  the batch and divides only the forward by the batch; Blake, Orr, Luschi, "Unit Scaling", ICML 2023, arXiv
  2303.11257; graphcore-research/unit-scaling `functional.cross_entropy`) times the μS head's 1/d undone: every
  output gradient starts near unit scale (RMS 0.25-2.5 at init). It does not stay there, and not alike: over the
  study's 200-step runs (width 128, 3 seeds) q's and k's gradient RMS grows ~15-20× (0.05-0.07 → ~1) and turns
  heavy-tailed as the softmax sharpens (amax/RMS up to ~100; a fifth to two fifths of their entries sit more than
  2^32, E5M2's whole range, below their amax), v's grows 3×, while attention-out's, MLP-in's and MLP-down's stay at
  RMS 0.05-0.13 with amax ≤ ~10. One S leaves the latter ~2^12 of unused room at the top and q, k short of it.
  So each linear gets its own static factor, as unit scaling gives each op its own backward scale (`scale_bwd`):
  as high as keeps its largest amax over a run ≥ ~6× under E5M2's max (57344): v ×2^9, attention out and the
  MLP's ×2^10 (their amax ×2^k stayed ≥ 11× under the max on three seeds), q and k ×2^4 (their amax varies ~3×
  between seeds: at ×2^6 one seed's k clipped 8e-6 of its entries at a spike). A static table, set from the
  study's width-128 μS runs at S = N·d and checked on its seeds: no run-time amax. It is a property of this
  model and recipe (depth, τ, η, run length), not a law: a longer run or a larger η moves q's and k's amax.
  """
  if m.fp8_grad_rule != "per_linear":
    return 1.0
  return 2.0 ** PER_LINEAR_SHIFT.get(name, 0)


def recipe(m, name: str = "") -> Recipe | None:
  """The FP8 recipe of model config `m`'s hidden linear `name`; None when `model.fp8=none`."""
  if m.fp8 == "none":
    return None
  return Recipe(m.fp8, float(m.fp8_grad_scale), m.d_model if m.parametrization == "mus" else 1,
                grad_multiplier(m, name) if m.fp8 == "static" else 1.0)


def split_side(tree):
  """(meta tree, probe tree) of the side inputs (or their cotangents), each nested by the linears' paths."""
  if tree is None:
    return {}, {}
  if "meta" in tree or "probe" in tree:
    return tree.get("meta"), tree.get("probe")
  metas, probes = {}, {}
  for k, v in tree.items():
    meta, probe = split_side(v)
    if jax.tree.leaves(meta):
      metas[k] = meta
    if jax.tree.leaves(probe):
      probes[k] = probe
  return metas, probes


def combine(a, b):
  """Two microbatches' side cotangents: new states by max (they differ only in the newest amax), probes summed."""
  is_meta = lambda path: any(getattr(k, "key", None) == "meta" for k in path)
  return jax.tree_util.tree_map_with_path(lambda p, x, y: jnp.maximum(x, y) if is_meta(p) else x + y, a, b)


# ---------------------------------------------------------------- checks


def _version(s: str) -> tuple[int, ...]:
  return tuple(int(p) for p in str(s).split(".") if p.isdigit())


def check(config, target: cfg_lib.Target) -> None:
  """What the FP8 casts cannot run with (one line each).

  `target.compute_capability` (a GPU's, e.g. '9.0'): FP8 GEMMs need sm_89 (Ada) or newer; older GPUs would
  silently fall back to an emulated, slower path.
  """
  m, platform, cc = config.model, target.platform, target.compute_capability
  cfg_lib.check_choices(config, {"model.fp8": MODES, "model.fp8_grad_rule": GRAD_RULES})
  if m.fp8 != "none" and platform == "tpu":
    raise cfg_lib.ConfigError(
        f"model.fp8={m.fp8}: FP8 matmuls run on NVIDIA GPUs (sm_89+) or emulated on CPU; use none on TPU")
  if m.fp8 != "none" and platform == "gpu" and cc and _version(cc) < (8, 9):
    raise cfg_lib.ConfigError(f"model.fp8={m.fp8}: this GPU (compute capability {cc}) has no FP8 GEMMs, "
                              "which need sm_89 (Ada, Hopper) or newer; use model.fp8=none here")
  if not m.fp8_history >= 1:
    raise cfg_lib.ConfigError(f"model.fp8_history={m.fp8_history} must be >= 1")
  if not m.fp8_grad_scale >= 0:
    raise cfg_lib.ConfigError(f"model.fp8_grad_scale={m.fp8_grad_scale} must be >= 0 (0: auto)")
  auto = cfg_lib.microbatch_tokens(config) * (m.d_model if m.parametrization == "mus" else 1)
  mult = max(PER_LINEAR_SHIFT.values()) if m.fp8_grad_rule == "per_linear" else 0
  peak = m.fp8_grad_scale * 2.0**mult / auto * GRAD_RMS_PER_UNIT_SCALE * GRAD_TAIL
  if m.fp8 == "static" and peak > E5M2_MAX:
    raise cfg_lib.ConfigError(
        f"model.fp8_grad_scale={m.fp8_grad_scale:g} overflows E5M2 at init (gradients ~{peak:.3g} > "
        f"{E5M2_MAX:g}); use 0 (auto: {auto:g}) or at most {auto * E5M2_MAX / GRAD_RMS_PER_UNIT_SCALE / GRAD_TAIL / 2.0**mult:g}")
