"""Width growth: a trained model's MLP units, heads, head dims and residual stream -> a wider model's.

Gesmundo & Maile's function-preserving expansions ("Composable Function-preserving Expansions for Transformer
Architectures", 2023, arXiv 2308.06103: #1, #2, #3+#4, #5, with the LLaMA extensions RMSNorm, SwiGLU, RoPE,
grouped-query attention) and neuron splitting (Net2Net's Net2WiderNet, Chen, Goodfellow & Shlens, ICLR 2016,
arXiv 1511.05641; bert2BERT's function-preserving initialization, Chen et al., ACL 2022, arXiv 2110.07143,
G→direct in Du et al. 2024):

    expand_mlp       #1  F -> F̂: new W_in columns fresh, new W_down rows 0                       FP
    add_heads        #2  H -> Ĥ (and G -> Ĝ kv groups): new heads fresh, their W_O rows 0         FP
    (either with fresh_write: the new write rows fresh too, as MSG draws every new entry: FP only under its
    mask ramp, a growth event's ramp_steps, which scales the new units' input columns by m = 0 → 1)
    expand_head_dim  #3+#4  K -> K̂ (q, k and v share head_dim here): new W_K, W_O entries 0,
                         old W_K ×√(K̂/K) for the softmax's 1/√K                                  FP iff K̂ = c·K (RoPE)
    expand_d_model   #5  D -> D̂: new embedding, W_O, W_down columns 0, norm gains ×√(D/D̂),
                         norm eps ×D/D̂                                                          FP (RMSNorm)
    split_mlp        Net2WiderNet: new MLP units copy random old ones; W_down rows / copies      FP (noise=0)

FP: the grown model computes the same logits as the small one, to float rounding. Each operator says for which
placements and options (jaxtrain/placement.py) it is exact, and refuses with a ConfigError where it would not be.
Every operator is `(m, params, key, ...) -> (new_m, new_params)` (`with_index_map=True`: also the index map).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import config as cfg_lib
from jaxtrain import munit
from jaxtrain.config import ConfigError
from jaxtrain.growth import core


def expand_mlp(m, params, key: jax.Array, *, mlp_dim: int, fresh_write: bool = False, with_index_map=False):
  """Gesmundo & Maile #1: F -> F̂ MLP units; new W_in columns fresh, new W_down rows 0.

  The MLP's output Σ_f W_down[f] φ(x W_in[:, f]) gains terms 0·φ(...): unchanged, so it is exact for every
  placement, norm kind, SwiGLU and GELU. `fresh_write`: the new W_down rows from the init too, as MSG's new units
  (Yao et al., ICLR 2024; github.com/cofe-ai/MSG, model_ex/utils_ex_v2.py, expand_linear draws every new entry),
  exact only under a growth event's mask ramp (`ramp_steps`, where it is the default), which scales the new W_in
  columns by m = 0 → 1: MSG's gelu(m·h) (growth/events.py).
  """
  F = cfg_lib.mlp_dim(m)
  if mlp_dim <= F:
    raise ConfigError(f"expand_mlp: mlp_dim={mlp_dim} must exceed the model's {F}")
  return core.transfer(m, params, core.grown_config(m, mlp_dim=mlp_dim), key, {"mlp": core.pad(F, mlp_dim)},
                       zero=() if fresh_write else core.blocks_paths(m, "down"), with_index_map=with_index_map)


def split_mlp(m, params, key: jax.Array, *, mlp_dim: int, noise: float = 0.0, with_index_map=False):
  """Net2WiderNet / bert2BERT's FPI in the MLP: unit j <- unit γ(j), γ(j) = j for old units, uniform else.

  Copies compute the same activation, so dividing each old unit's W_down row by its number of copies c_j,
  Ŵ_down[j] = W_down[γ(j)] / c_γ(j), keeps the sum: exact for every placement. With the optimizer's `copy`, the
  new units get zero moments (MSG); with `duplicate`, their source's.

  A copy and its source then get the same gradient (same activation, same W_down row) and, under a fresh
  optimizer, stay identical forever. `noise` > 0 breaks the symmetry as Net2Net suggests (Chen, Goodfellow &
  Shlens, ICLR 2016: a little noise on the new units): each copy's W_in column gains N(0, (noise·σ)²) entries,
  σ the layer's W_in standard deviation, so the function moves by O(noise) (not exact) and the copies diverge
  under training. bert2BERT's AKI (Chen et al., ACL 2022: the new units' weights from the next layer) is not
  implemented.
  """
  F = cfg_lib.mlp_dim(m)
  if mlp_dim <= F:
    raise ConfigError(f"split_mlp: mlp_dim={mlp_dim} must exceed the model's {F}")
  with jax.ensure_compile_time_eval():  # γ is the index map: concrete even when called under jit (with a concrete key)
    gamma = np.concatenate([np.arange(F), np.asarray(jax.random.randint(key, (mlp_dim - F,), 0, F))])
  counts = np.bincount(gamma, minlength=F)
  down = core.blocks_paths(m, "down")
  per_unit = (1.0 / counts[gamma]).astype(np.float32)[None, :, None]  # [1, F̂, 1]
  if noise < 0:
    raise ConfigError(f"split_mlp: noise={noise} must be >= 0 (a relative standard deviation)")
  out = core.transfer(m, params, core.grown_config(m, mlp_dim=mlp_dim), None, {"mlp": gamma},
                      scale={p: per_unit for p in down}, with_index_map=with_index_map)
  if not noise:
    return out
  new_params = out[1]
  wi_LDCF = new_params["blocks"]["mlp"]["wi"]["w"]
  sigma_L = jnp.std(params["blocks"]["mlp"]["wi"]["w"].astype(jnp.float32), axis=(1, 2, 3), keepdims=True)
  draw = jax.random.normal(jax.random.fold_in(key, 1), wi_LDCF.shape, jnp.float32)
  copies = np.arange(mlp_dim) >= F  # the new units (the old ones keep their weights)
  wi_LDCF = (wi_LDCF + jnp.where(copies, noise * sigma_L * draw, 0.0)).astype(wi_LDCF.dtype)
  new_params = {**new_params, "blocks": {**new_params["blocks"], "mlp": {
      **new_params["blocks"]["mlp"], "wi": {**new_params["blocks"]["mlp"]["wi"], "w": wi_LDCF}}}}
  return (out[0], new_params, *out[2:])


def add_heads(m, params, key: jax.Array, *, num_heads: int, num_kv_heads: int | None = None,
              fresh_write: bool = False, with_index_map=False):
  """Gesmundo & Maile #2 with grouped-query heads: H -> Ĥ query heads in Ĝ kv groups; new W_O rows 0.

  Query head h serves kv group ⌊h/R⌋, R = H/G; old head (g, r) moves to g·R̂ + r so it keeps its group. New
  heads join existing groups (R̂ > R) and/or come with new groups (Ĝ > G; fresh W_K, W_V). `num_kv_heads`
  defaults to G (MHA models stay MHA). Exact for every placement, with or without QK-norm. `fresh_write`: the
  new W_O rows from the init too, as MSG's new heads, exact only under a growth event's mask ramp (m on the new
  heads' q, k and v; new heads in new kv groups only, no QK-norm: growth/events.py).
  """
  H, G, K = m.num_heads, cfg_lib.num_kv_heads(m), cfg_lib.head_dim(m)
  G2 = num_heads if m.num_kv_heads is None and num_kv_heads is None else (num_kv_heads or G)
  if num_heads < H or G2 < G or (num_heads, G2) == (H, G):
    raise ConfigError(f"add_heads: num_heads={num_heads}, num_kv_heads={G2} must not be below the model's {H}, {G} "
                      f"and must add some")
  if num_heads % G2:
    raise ConfigError(f"add_heads: num_heads={num_heads} is not a multiple of num_kv_heads={G2}")
  R, R2 = H // G, num_heads // G2
  if R2 < R:
    raise ConfigError(f"add_heads: {num_heads} heads in {G2} groups is {R2} per group, fewer than the model's {R}: "
                      f"old heads would change groups; add groups with num_heads = {R}·num_kv_heads")
  heads = -np.ones(num_heads, int)
  for h in range(H):
    heads[(h // R) * R2 + h % R] = h
  new_m = core.grown_config(m, num_heads=num_heads, num_kv_heads=None if m.num_kv_heads is None and num_kv_heads is None
                            else G2, head_dim=K)
  return core.transfer(m, params, new_m, key, {"heads": heads, "kv_heads": core.pad(G, G2)},
                       zero=() if fresh_write else core.blocks_paths(m, "wo"), with_index_map=with_index_map)


def rope_exact_map(K: int, K2: int) -> np.ndarray:
  """The head-dim map that keeps RoPE (RoFormer, Su et al. 2021): old pair (i, K/2+i) -> (c·i, K̂/2+c·i), c = K̂/K.

  RoPE rotates dims i and K/2+i at frequency θ^(−2i/K); at K̂ = c·K, pair c·i turns at θ^(−2ci/cK), the same.
  """
  c, h = K2 // K, K // 2
  out = -np.ones(K2, int)
  out[c * np.arange(h)] = np.arange(h)
  out[K2 // 2 + c * np.arange(h)] = h + np.arange(h)
  return out


def expand_head_dim(m, params, key: jax.Array, *, head_dim: int, exact: bool = True, with_index_map=False):
  """Gesmundo & Maile #3 (value dim) and #4 (key dim) together: here q, k and v share one head_dim K -> K̂.

  New W_V columns fresh and W_O rows 0 (#3); new W_K columns 0 and the old ones ×ρ so that the softmax's
  1/√K̂ (μS `inv`: 1/K̂) gives the old logits (#4); new W_Q columns fresh. With QK-norm the new W_Q columns are
  0 too and W_Q, W_K ×√(K̂/K), q-gain ÷√(K̂/K), k-gain ×ρ/√(K̂/K): the norms over K̂ then see the old rms and eps.
  RoPE's frequencies depend on K: exact only for K̂ = c·K, old dims laid out by `rope_exact_map`; other K̂
  raise unless exact=False (Gesmundo's layout, old dims first: not function-preserving under RoPE).
  """
  K = cfg_lib.head_dim(m)
  if head_dim <= K or head_dim % 2:
    raise ConfigError(f"expand_head_dim: head_dim={head_dim} must be even (RoPE) and exceed the model's {K}")
  if head_dim % K and exact:
    raise ConfigError(f"expand_head_dim: head_dim {K} -> {head_dim} is not function-preserving under RoPE (its "
                      f"frequencies θ^(-2i/K) move); use a multiple of {K}, or exact=False")
  idx = rope_exact_map(K, head_dim) if head_dim % K == 0 else core.pad(K, head_dim)
  logit = lambda k: k**-0.5 * munit.query_multiplier(m, k)  # the softmax's scale on q·k at head dim k
  rho = logit(K) / logit(head_dim)
  s = math.sqrt(head_dim / K)
  attn = lambda n, leaf="w": ("blocks", "attn", n, leaf)
  if m.qk_norm:
    zero = {attn("wq"), attn("wk"), attn("wo")}
    scale = {attn("wq"): s, attn("wk"): s, attn("q_norm", "scale"): 1 / s, attn("k_norm", "scale"): rho / s}
  else:
    zero, scale = {attn("wk"), attn("wo")}, {attn("wk"): rho}
  return core.transfer(m, params, core.grown_config(m, head_dim=head_dim), key, {"head_dim": idx}, zero=zero,
                       scale=scale, with_index_map=with_index_map)


def expand_d_model(m, params, key: jax.Array, *, d_model: int, with_index_map=False):
  """Gesmundo & Maile #5 with the LLaMA extensions: the residual stream D -> D̂, new entries 0.

  New embedding, W_O and W_down columns are 0, so every residual vector is x̂ = [x, 0], mean(x̂²) = (D/D̂)·mean(x²),
  and N(x̂) = x̂/√(mean x̂² + ε̂)·ĝ equals [N(x), 0] when ε̂ = ε·D/D̂ and ĝ = g·√(D/D̂) (the paper's √(h/ĥ); new
  gain entries multiply zeros). The eps is one config field, shared with QK-norm's norms
  over K: those see ε̂ too, so W_Q, W_K ×√(D/D̂) (N(s·q; s²ε) = N(q; ε)). New W_Q/K/V, W_in and head rows are
  fresh (they multiply zeros); a tied head stays exact as the embedding's new columns are 0.
  Exact for RMSNorm with every placement (pre, post, mix, peri with learnable out-norm gains, lns, res_post),
  with or without the final norm, the embedding norm, QK-norm, tied embeddings and μS; LayerNorm's mean moves.
  """
  D = m.d_model
  if d_model <= D:
    raise ConfigError(f"expand_d_model: d_model={d_model} must exceed the model's {D}")
  if m.norm.kind != "rmsnorm":
    raise ConfigError(f"expand_d_model: exact only for model.norm.kind=rmsnorm (LayerNorm's mean changes with "
                      f"zero-padded features), not {m.norm.kind!r}")
  if m.norm.placement == "peri" and not m.norm.out_norm_scale:
    raise ConfigError("expand_d_model: Peri-LN's output norms need a gain to rescale; set "
                      "model.norm.out_norm_scale=True")
  s = math.sqrt(D / d_model)
  axes = jax.tree_util.tree_flatten_with_path(core.param_axes(m), is_leaf=lambda x: isinstance(x, tuple))[0]
  gains = {core.path_of(p) for p, a in axes if core.path_of(p)[-1] == "scale" and "embed" in a}  # norms over D
  scale = {p: s for p in gains}
  if m.qk_norm:
    scale |= {("blocks", "attn", "wq", "w"): s, ("blocks", "attn", "wk", "w"): s}
  new_m = core.grown_config(m, d_model=d_model, norm={"eps": m.norm.eps * D / d_model})
  zero = {("embed",)} | core.blocks_paths(m, "wo", "down")
  return core.transfer(m, params, new_m, key, {"embed": core.pad(D, d_model)}, zero=zero, scale=scale,
                       with_index_map=with_index_map)
