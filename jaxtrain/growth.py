"""Growth operators: a trained model's parameters -> a bigger model's, in depth and width.

Depth, from "Stacking Your Transformers" (Du et al., NeurIPS 2024, arXiv 2405.15319; official code tongxuluo/prts)
and "Composable Function-preserving Expansions for Transformer Architectures" (Gesmundo & Maile 2023,
arXiv 2308.06103, #6); spec: shared/research/growth.md §1.2-1.3, §2:

    stack          G_stack = G↑direct   layer i <- layer π(i), π(i) = i mod L (or any layer map)   not FP
    g_zero         G↑zero               layer i <- layer π(i), π(i) = ⌊i/g⌋; every repeat's W_O = W_down = 0   FP
    g_learn        G↑learn (LiGO depth) layer i <- Σ_j w_ij · layer j, w fitted to the loss from π     not FP
    g_random       G↑random             new layers on top, freshly initialized                    not FP
    insert_layers  Gesmundo #6          new layers anywhere, fresh but W_O = W_down = 0            FP

Width, Gesmundo & Maile's expansions (#1, #2, #3+#4, #5) and bert2BERT's neuron splitting (Chen et al., ACL 2022,
G→direct in Du et al.):

    expand_mlp       #1  F -> F̂: new W_in columns fresh, new W_down rows 0                       FP
    add_heads        #2  H -> Ĥ (and G -> Ĝ kv groups): new heads fresh, their W_O rows 0         FP
    expand_head_dim  #3+#4  K -> K̂ (q, k and v share head_dim here): new W_K, W_O entries 0,
                         old W_K ×√(K̂/K) for the softmax's 1/√K                                  FP iff K̂ = c·K (RoPE)
    expand_d_model   #5  D -> D̂: new embedding, W_O, W_down columns 0, norm gains ×√(D/D̂),
                         norm eps ×D/D̂                                                          FP (RMSNorm)
    split_mlp        G→direct: new MLP units copy random old ones; each copy set's W_down rows / count   FP

FP: the grown model computes the same logits as the small one, to float rounding. Each function says for which
placements and options (jaxtrain/placement.py) it is exact, and refuses with a ConfigError where it would not
be. "Fresh" entries come from the model's own initializer at the new size (`model.init(new_m, key)`), so μS's
unit init holds; under μS (jaxtrain/munit.py) every old linear is also rescaled by α_old/α_new, its static
multiplier's change with fan-in, so the product is kept.

Every operator is `(m, params, ...) -> (new_m, new_params)`, with an explicit PRNG key where new entries are
drawn (g_learn takes training batches instead), `params` the model's pytree (`model.init`, stacked blocks on a leading `layers` axis). With
`with_index_map=True` it also returns where each new entry came from: per leaf, one int array per axis,
new position -> old position or -1 for a new entry; `grow_opt_state` moves the optimizer's moments with it,
under the policies the papers use (growth.md §4): `reset` (prts, LiGO: a fresh optimizer) or `copy` (MSG: old
moments in the old slice, zeros elsewhere, the step count kept).

Mid-run (the last section): `config.growth.events` lists events (step, operator and its arguments, optimizer and
learning-rate policies); `plan(config)` checks them and works out each phase's model and schedule without
touching an array; the trainer (train.py) saves the small model at an event's step, jits `grow_state` from the
old state's shardings to the new one's, and trains on. `total_flops` counts each phase's steps at its own cost.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import flops, losses, model, munit, optim
from jaxtrain.config import ConfigError

POLICIES = ("reset", "copy")
# Placements where a residual branch whose output projection is zero is the identity: x + N_out(0) = x.
IDENTITY_PLACEMENTS = ("pre", "peri", "lns")


class AxisMap(NamedTuple):
  """Where one leaf's new entries come from: per axis, new index -> old index, or -1 for a new entry."""
  idx: tuple[np.ndarray, ...]


# ---------------------------------------------------------------- the machinery shared by every operator


def _path(keys) -> tuple[str, ...]:
  return tuple(k.key for k in keys)


def _axes(m) -> dict:
  """Each parameter's logical axis names (model.abstract), the attention's unnamed head-dim axis as 'head_dim'."""
  axes = model.abstract(m)[2]

  def name(path, a):
    return tuple("head_dim" if n is None and _path(path)[:2] == ("blocks", "attn") else n for n in a)

  return jax.tree_util.tree_map_with_path(name, axes, is_leaf=lambda x: isinstance(x, tuple))


def _grown_config(m, **changes):
  """A copy of `m` with `changes`; head_dim and mlp_dim pinned, as their defaults follow d_model and num_heads."""
  n = ml_collections.ConfigDict(m.to_dict() if hasattr(m, "to_dict") else m)
  n.head_dim, n.mlp_dim = cfg_lib.head_dim(m), cfg_lib.mlp_dim(m)
  for k, v in changes.items():
    if isinstance(v, dict):
      n[k].update(v)
    else:
      n[k] = v
  return n


def _pad(n_old: int, n_new: int) -> np.ndarray:
  """The map of an axis grown at its end: old entries stay, n_new - n_old new ones after them."""
  return np.concatenate([np.arange(n_old), -np.ones(n_new - n_old, int)])


def _mus_factors(m, new_m) -> dict:
  """α_old/α_new per linear (path -> float): μS's multiplier follows fan-in; multiplying old weights keeps α·W."""
  out = {}
  if m.parametrization != "mus":
    return out
  old, new = (jax.tree_util.tree_flatten_with_path(model.param_info(c), is_leaf=model.is_info)[0] for c in (m, new_m))
  for (path, i), (_, j) in zip(old, new):
    if i.role in ("hidden", "head") and i.fan_in != j.fan_in:
      out[_path(path)] = munit.multiplier(m, i.role, i.fan_in) / munit.multiplier(new_m, j.role, j.fan_in)
  return out


def regrid(old: jax.Array, amap: AxisMap, fill: jax.Array, scale=1.0) -> jax.Array:
  """The new leaf: old[idx] · scale where every axis maps to an old entry, `fill` where any axis is new (-1)."""
  idx = [np.asarray(i) for i in amap.idx]
  gathered = old[np.ix_(*[np.maximum(i, 0) for i in idx])]
  new_mask = np.zeros(tuple(len(i) for i in idx), bool)
  for a, i in enumerate(idx):
    new_mask |= (i < 0).reshape([-1 if b == a else 1 for b in range(len(idx))])
  return jnp.where(new_mask, fill.astype(old.dtype), (gathered * scale).astype(old.dtype))


def _grow(m, params, new_m, key, maps, *, zero=(), scale=None, leaf_maps=None, moment_maps=None,
          with_index_map=False):
  """Apply per-axis maps to every leaf; new entries fresh (`key`) or 0 for leaves in `zero` (the FP constraint).

  maps:        {axis name: new -> old index array} for every leaf with that axis ('layers', 'embed', 'heads', ...)
  zero:        param paths (tuples) whose new entries must be 0
  scale:       {path: factor on the old entries}, a float or an array broadcasting to the new leaf
  leaf_maps:   {path: {axis name: map}} overriding `maps` for one leaf (G_zero's zeroed repeats)
  moment_maps: {path: {axis name: map}} where the optimizer's moments follow a different map than the values
  """
  axes = _axes(m)
  abstract_new = jax.eval_shape(lambda: model.init(new_m, jax.random.key(0)))
  scale = dict(scale or {})
  for path, f in _mus_factors(m, new_m).items():
    scale[path] = scale.get(path, 1.0) * f
  leaf_maps, moment_maps = leaf_maps or {}, moment_maps or {}

  def amap(path, a, old, overrides):
    own = {**maps, **overrides.get(path, {})}
    return AxisMap(tuple(np.asarray(own[n]) if n in own else np.arange(old.shape[k]) for k, n in enumerate(a)))

  def check(keys, old, a, new):  # the maps, from shapes alone: (the values' map, the moments' map, fresh or 0)
    path = _path(keys)
    am = amap(path, a, old, leaf_maps)
    if tuple(len(i) for i in am.idx) != new.shape:
      raise ValueError(f"growth map of {'/'.join(path)} gives {tuple(len(i) for i in am.idx)}, not {new.shape}")
    needs_fresh = any((i < 0).any() for i in am.idx) and path not in zero
    if needs_fresh and key is None:
      raise ValueError(f"{'/'.join(path)} gains entries that need a PRNG key")
    return am, amap(path, a, old, {**leaf_maps, **moment_maps}), needs_fresh

  is_leaf = lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)
  plan = jax.tree_util.tree_map_with_path(check, params, axes, abstract_new, is_leaf=is_leaf)
  is_plan = lambda x: isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], AxisMap)

  @jax.jit  # one program per call: eagerly, each small op would compile on its own
  def values(params, key):
    fresh = model.init(new_m, key) if key is not None else abstract_new

    def one(keys, old, leaf_plan, new):
      am, _, needs_fresh = leaf_plan
      fill = new if needs_fresh else jnp.zeros(new.shape, new.dtype)
      return regrid(old, am, fill, scale.get(_path(keys), 1.0))

    return jax.tree_util.tree_map_with_path(one, params, plan, fresh, is_leaf=is_plan)

  new_params = values(params, key)
  if not with_index_map:
    return new_m, new_params
  return new_m, new_params, jax.tree.map(lambda x: x[1], plan, is_leaf=is_plan)


def _blocks_paths(m, *names) -> set:
  """The param paths under blocks/ whose last module is one of `names` (e.g. 'wo', 'down')."""
  leaves = jax.tree_util.tree_flatten_with_path(model.abstract(m)[1])[0]
  return {_path(p) for p, _ in leaves if _path(p)[0] == "blocks" and _path(p)[-2] in names}


def _need_identity_placement(m, op: str):
  if m.norm.placement not in IDENTITY_PLACEMENTS:
    raise ConfigError(f"{op}: a layer with zero output projections is the identity only for model.norm.placement in "
                      f"{IDENTITY_PLACEMENTS}, not {m.norm.placement!r}; use stack or g_random (not exact)")
  if m.norm.placement == "peri" and m.norm.eps <= 0:
    raise ConfigError(f"{op}: Peri-LN's output norm of a zero branch is 0/0 with model.norm.eps=0; set eps > 0")


def _lns_gains(m, src: list[int]) -> dict:
  """LNS scales layer ℓ's pre-norm outputs by 1/√(ℓ+1): a layer moved from ℓ to i gets its gains ×√((i+1)/(ℓ+1))."""
  if m.norm.placement != "lns":
    return {}
  f = np.array([math.sqrt((i + 1) / (s + 1)) if s >= 0 else 1.0 for i, s in enumerate(src)], np.float32)[:, None]
  return {("blocks", n, "scale"): f for n in ("attn_norm", "mlp_norm")}


def _check_map(layer_map, L: int, op: str) -> list[int]:
  layer_map = [int(i) for i in layer_map]
  if not layer_map or any(not 0 <= i < L for i in layer_map):
    raise ConfigError(f"{op}: layer_map {layer_map} must be a non-empty list of layer indices in [0, {L}) "
                      f"(the small model's layers)")
  return layer_map


# ---------------------------------------------------------------- depth


def cycle_map(num_layers: int, g: int) -> list[int]:
  """G_stack's map (prts `stacking_list = [0..L-1] * g`): the whole stack repeated g times."""
  return list(range(num_layers)) * g


def interleave_map(num_layers: int, g: int) -> list[int]:
  """Each layer repeated g times in place: [0,0,1,1,...] (LiGO's interpolation, Apollo's `extend`, prts G_zero)."""
  return [i // g for i in range(g * num_layers)]


def _depth_args(m, g, layer_map, default, op):
  if (g is None) == (layer_map is None):
    raise ConfigError(f"{op}: give exactly one of g (a growth factor) or layer_map (a list of source layers)")
  if g is not None and (int(g) != g or g < 1):
    raise ConfigError(f"{op}: growth factor g={g} must be a positive integer")
  return _check_map(default(m.num_layers, int(g)) if g is not None else layer_map, m.num_layers, op)


def stack(m, params, *, g: int | None = None, layer_map=None, with_index_map=False):
  """G_stack (Du et al. 2024, prts `stackingpt.py`): layer i of the grown model is layer π(i) of the small one.

  π = `layer_map` (any list of source layers: interleaved, partial stacking "123-456x7", ...) or, with `g`, the
  whole stack repeated g times. Embedding, final norm and head are kept. Not function-preserving: each copied
  block acts again on the residual stream.
  """
  src = _depth_args(m, g, layer_map, cycle_map, "stack")
  return _grow(m, params, _grown_config(m, num_layers=len(src)), None, {"layers": np.array(src)},
               with_index_map=with_index_map)


def g_zero(m, params, *, g: int | None = None, layer_map=None, with_index_map=False):
  """G↑zero (Du et al. 2024, prts `G_zero_depthwise.py`): layer i <- layer π(i), every repeat starts as the identity.

  π defaults to ⌊i/g⌋ (each layer followed by its g-1 repeats); a repeat is any layer whose source already
  appeared; its W_O and W_down are 0, so x + f(N(x)) = x. Function-preserving when the first appearances keep
  the small model's order (the default map) and the placement is pre, peri or lns (lns: gains rescaled to each
  layer's new depth). The optimizer's `copy` policy gives the zeroed projections zero moments.
  """
  _need_identity_placement(m, "g_zero")
  src = _depth_args(m, g, layer_map, interleave_map, "g_zero")
  seen, repeat = set(), []
  for s in src:
    repeat.append(s in seen)
    seen.add(s)
  zeroed = np.where(repeat, -1, src)
  outs = _blocks_paths(m, "wo", "down")
  return _grow(m, params, _grown_config(m, num_layers=len(src)), None, {"layers": np.array(src)}, zero=outs,
               scale=_lns_gains(m, src), leaf_maps={p: {"layers": zeroed} for p in outs}, with_index_map=with_index_map)


def g_learn(m, params, batches, *, g: int | None = None, layer_map=None, fit_steps: int = 100, fit_lr: float = 1e-3,
            with_index_map=False):
  """G↑learn (Du et al. 2024; LiGO's depth operator, Wang et al., ICLR 2023): layer i <- Σ_j w_ij · layer j.

  One w ∈ R^{L̂×L} per block tensor (LiGO ties it per parameter type), initialized at G_stack's map (one-hot at
  π(i), `layer_map` or the stack repeated g times) and fitted by Adam (`fit_lr`, ours: LiGO's is not published
  in the spec) to the grown model's loss on `batches` ({"inputs", "targets"}: [fit_steps, B, T]), one step per batch,
  as LiGO fits its operator for 100 steps before training the grown model. The loss is plain cross-entropy with
  the model's output activation. Width is not learned here. Not function-preserving; with fit_steps = 0 it is `stack`.
  """
  src = _depth_args(m, g, layer_map, cycle_map, "g_learn")
  if batches["inputs"].shape[0] != fit_steps:
    raise ConfigError(f"g_learn: fit_steps={fit_steps} but {batches['inputs'].shape[0]} batches were given")
  new_m, _, index_map = stack(m, params, layer_map=src, with_index_map=True)
  graphdef = model.abstract(new_m)[0]
  w0 = jax.tree.map(lambda _: jax.nn.one_hot(np.array(src), m.num_layers), params["blocks"])

  def grown(w):
    mix = lambda w_ij, x: jnp.einsum("ij,j...->i...", w_ij, x.astype(jnp.float32)).astype(x.dtype)
    return {**params, "blocks": jax.tree.map(mix, w, params["blocks"])}

  def loss(w, batch):
    logits_BTV = nnx.merge(graphdef, grown(w))(batch["inputs"])
    return losses.cross_entropy(logits_BTV, batch["targets"], output=m.output)[0]

  tx = optax.adam(fit_lr)

  def fit(carry, batch):
    w, opt = carry
    updates, opt = tx.update(jax.grad(loss)(w, batch), opt, w)
    return (optax.apply_updates(w, updates), opt), None

  (w, _), _ = jax.lax.scan(fit, (w0, tx.init(w0)), batches)
  return (new_m, grown(w), index_map) if with_index_map else (new_m, grown(w))


def g_random(m, params, key: jax.Array, *, num_layers: int, with_index_map=False):
  """G↑random (Du et al. 2024; MSG's new layers without the mask ramp): fresh layers on top. Not function-preserving."""
  if num_layers <= m.num_layers:
    raise ConfigError(f"g_random: num_layers={num_layers} must exceed the model's {m.num_layers}")
  return _grow(m, params, _grown_config(m, num_layers=num_layers), key, {"layers": _pad(m.num_layers, num_layers)},
               with_index_map=with_index_map)


def insert_layers(m, params, key: jax.Array, *, at: list[int], with_index_map=False):
  """Gesmundo & Maile #6: a fresh layer before each small-model index in `at` (L: on top), W_O = W_down = 0.

  `at` may repeat an index (several layers there). Exact for pre, peri and lns (lns: moved layers' gains
  ×√((new depth)/(old depth)), 1-based); under post-type placements a zero branch is not the identity.
  """
  _need_identity_placement(m, "insert_layers")
  L = m.num_layers
  if not at or any(not 0 <= int(a) <= L for a in at):
    raise ConfigError(f"insert_layers: at={list(at)} must be a non-empty list of positions in [0, {L}] "
                      f"(a new layer goes before small-model layer a; {L} is on top)")
  src = []
  for l in range(L + 1):
    src += [-1] * sum(int(a) == l for a in at) + ([l] if l < L else [])
  return _grow(m, params, _grown_config(m, num_layers=len(src)), key, {"layers": np.array(src)},
               zero=_blocks_paths(m, "wo", "down"), scale=_lns_gains(m, src), with_index_map=with_index_map)


# ---------------------------------------------------------------- width


def expand_mlp(m, params, key: jax.Array, *, mlp_dim: int, with_index_map=False):
  """Gesmundo & Maile #1: F -> F̂ MLP units; new W_in columns fresh, new W_down rows 0.

  The MLP's output is unchanged, so it is exact for every placement, norm kind, SwiGLU and GELU.
  """
  F = cfg_lib.mlp_dim(m)
  if mlp_dim <= F:
    raise ConfigError(f"expand_mlp: mlp_dim={mlp_dim} must exceed the model's {F}")
  return _grow(m, params, _grown_config(m, mlp_dim=mlp_dim), key, {"mlp": _pad(F, mlp_dim)},
               zero=_blocks_paths(m, "down"), with_index_map=with_index_map)


def split_mlp(m, params, key: jax.Array, *, mlp_dim: int, with_index_map=False):
  """G→direct in the MLP (bert2BERT's FPI, Net2Net): unit j <- unit γ(j), γ(j) = j for old units, uniform else.

  Copies compute the same activation, so dividing each old unit's W_down row by its number of copies c_j keeps
  the sum: exact for every placement. With `copy`, the optimizer gives the new units zero moments.
  """
  F = cfg_lib.mlp_dim(m)
  if mlp_dim <= F:
    raise ConfigError(f"split_mlp: mlp_dim={mlp_dim} must exceed the model's {F}")
  with jax.ensure_compile_time_eval():  # γ is the index map: concrete even when called under jit (with a concrete key)
    gamma = np.concatenate([np.arange(F), np.asarray(jax.random.randint(key, (mlp_dim - F,), 0, F))])
  counts = np.bincount(gamma, minlength=F)
  down = _blocks_paths(m, "down")
  per_unit = (1.0 / counts[gamma]).astype(np.float32)[None, :, None]  # [1, F̂, 1]
  return _grow(m, params, _grown_config(m, mlp_dim=mlp_dim), None, {"mlp": gamma},
               scale={p: per_unit for p in down},
               moment_maps={p: {"mlp": _pad(F, mlp_dim)} for p in _blocks_paths(m, "wi", "down")},
               with_index_map=with_index_map)


def add_heads(m, params, key: jax.Array, *, num_heads: int, num_kv_heads: int | None = None, with_index_map=False):
  """Gesmundo & Maile #2 with grouped-query heads: H -> Ĥ query heads in Ĝ kv groups; new W_O rows 0.

  Query head h serves kv group ⌊h/R⌋, R = H/G; old head (g, r) moves to g·R̂ + r so it keeps its group. New
  heads join existing groups (R̂ > R) and/or come with new groups (Ĝ > G; fresh W_K, W_V). `num_kv_heads`
  defaults to G (MHA models stay MHA). Exact for every placement, with or without QK-norm.
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
  new_m = _grown_config(m, num_heads=num_heads, num_kv_heads=None if m.num_kv_heads is None and num_kv_heads is None
                        else G2, head_dim=K)
  return _grow(m, params, new_m, key, {"heads": heads, "kv_heads": _pad(G, G2)}, zero=_blocks_paths(m, "wo"),
               with_index_map=with_index_map)


def rope_exact_map(K: int, K2: int) -> np.ndarray:
  """The head-dim map that keeps RoPE: old pair (i, K/2+i) -> (c·i, K̂/2+c·i), c = K̂/K.

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
  idx = rope_exact_map(K, head_dim) if head_dim % K == 0 else _pad(K, head_dim)
  logit = lambda k: k**-0.5 * munit.query_multiplier(m, k)
  rho = logit(K) / logit(head_dim)
  s = math.sqrt(head_dim / K)
  attn = lambda n, leaf="w": ("blocks", "attn", n, leaf)
  if m.qk_norm:
    zero = {attn("wq"), attn("wk"), attn("wo")}
    scale = {attn("wq"): s, attn("wk"): s, attn("q_norm", "scale"): 1 / s, attn("k_norm", "scale"): rho / s}
  else:
    zero, scale = {attn("wk"), attn("wo")}, {attn("wk"): rho}
  return _grow(m, params, _grown_config(m, head_dim=head_dim), key, {"head_dim": idx}, zero=zero, scale=scale,
               with_index_map=with_index_map)


def expand_d_model(m, params, key: jax.Array, *, d_model: int, with_index_map=False):
  """Gesmundo & Maile #5 with the LLaMA extensions (growth.md §2): the residual stream D -> D̂, new entries 0.

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
  axes = _axes(m)
  gains = {_path(p) for p, a in jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0]
           if _path(p)[-1] == "scale" and "embed" in a}
  scale = {p: s for p in gains}
  if m.qk_norm:
    scale |= {("blocks", "attn", "wq", "w"): s, ("blocks", "attn", "wk", "w"): s}
  new_m = _grown_config(m, d_model=d_model, norm={"eps": m.norm.eps * D / d_model})
  zero = {("embed",)} | _blocks_paths(m, "wo", "down")
  return _grow(m, params, new_m, key, {"embed": _pad(D, d_model)}, zero=zero, scale=scale,
               with_index_map=with_index_map)


# ---------------------------------------------------------------- index maps and the optimizer state


def compose_index_maps(first, second):
  """The index map of `second` applied after `first` (both as returned with `with_index_map=True`)."""

  def one(a, b):
    return AxisMap(tuple(np.where(j < 0, -1, i[np.maximum(j, 0)]) for i, j in zip(a.idx, b.idx)))

  return jax.tree.map(one, first, second, is_leaf=lambda x: isinstance(x, AxisMap))


def grow_opt_state(policy: str, old_opt_state, new_params_abstract, index_map):
  """The optimizer state for the grown parameters, the optax tree kept (adamw's mu and nu, lion's mu, ...).

  reset: a fresh state (zero moments, count 0), as G_stack's code, LiGO and the multi-level framework do;
         equal to `tx.init(new_params)` for jaxtrain's optimizers.
  copy:  every moment moved by the parameters' index map (MSG's `transfer_states`): old values in the old slice,
         0 for new entries, counts kept. Moments are copied, not rescaled with the parameters.
  Every subtree of the state shaped like the parameters is a moment; other leaves are counts.
  """
  if policy not in POLICIES:
    raise ConfigError(f"optimizer growth policy {policy!r} is not one of {POLICIES}")
  is_map = lambda x: isinstance(x, AxisMap)
  structure = jax.tree.structure(index_map, is_leaf=is_map)
  is_moment = lambda x: isinstance(x, dict) and jax.tree.structure(x) == structure

  def one(x):
    if is_moment(x):
      if policy == "reset":
        return jax.tree.map(lambda a, n: jnp.zeros(n.shape, a.dtype), x, new_params_abstract)
      return jax.tree.map(lambda a, am, n: regrid(a, am, jnp.zeros(n.shape, a.dtype)), x, index_map,
                          new_params_abstract, is_leaf=lambda y: is_map(y))
    return jnp.zeros_like(x) if policy == "reset" else x

  return jax.tree.map(one, old_opt_state, is_leaf=is_moment)


# ---------------------------------------------------------------- growth events: a run's schedule of operators

OPERATORS = {"stack": stack, "g_zero": g_zero, "g_learn": g_learn, "g_random": g_random, "insert_layers": insert_layers,
             "expand_mlp": expand_mlp, "split_mlp": split_mlp, "add_heads": add_heads,
             "expand_head_dim": expand_head_dim, "expand_d_model": expand_d_model}
LR_POLICIES = ("restart_warmup", "continue", "rewind")
EVENT_FIELDS = ("step", "op", "opt", "lr", "warmup_steps", "peak_lr")  # beside the operator's own arguments
GROWTH_KEY_SALT = 7  # event k draws its fresh entries from fold_in(fold_in(key(seed), 7), k): not init's, not rng's


def _op_args(op: str) -> list[str]:
  """The keyword arguments operator `op` takes from an event (its signature, less what the trainer passes)."""
  params = inspect.signature(OPERATORS[op]).parameters
  return [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "with_index_map"]


def apply(m, params, op: str, args: dict, key: jax.Array | None = None, batches=None, *,
          with_index_map: bool = False):
  """Operator `op` (a name in OPERATORS) on (model config, params) with `args`; `key` for the ones that draw,
  `batches` for the one that learns (g_learn: {"inputs", "targets"} of shape [steps, B, T])."""
  fn = OPERATORS[op]
  extra = {"key": (key,), "batches": (batches,)}.get(list(inspect.signature(fn).parameters)[2], ())
  return fn(m, params, *extra, **args, with_index_map=with_index_map)


def learn_steps(event: dict) -> int:
  """The batches an event's operator trains on before the grown model does (g_learn's `fit_steps`; else 0)."""
  if "batches" not in inspect.signature(OPERATORS[event["op"]]).parameters:
    return 0
  return event.get("fit_steps", inspect.signature(OPERATORS[event["op"]]).parameters["fit_steps"].default)


def event_key(seed: int, k: int) -> jax.Array:
  """The PRNG key of growth event k (1-based) of a run seeded `seed`: the same on every host and every resume."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), GROWTH_KEY_SALT), k)


class Phase(NamedTuple):
  """A stretch of a run between growth events: steps start+1 .. the next phase's start train `config.model`."""
  start: int                  # the step whose end began it (0 for the first phase)
  config: ml_collections.ConfigDict  # the run's config with this phase's model (what its checkpoints hold)
  event: dict | None          # the event that began it, defaults filled in (None for the first phase)
  lr_schedule: Callable       # step -> peak learning rate, over the run's global steps
  peak_lr: float


def _event(config, k: int, ev) -> dict:
  """Event k (1-based) of config.growth.events, checked, with the growth section's defaults filled in."""
  g, where = config.growth, f"growth.events[{k - 1}]"
  if not isinstance(ev, dict) or "step" not in ev or "op" not in ev:
    raise ConfigError(f"{where}={ev!r} must be a dict with at least 'step' and 'op', e.g. "
                      "{'step': 1500, 'op': 'stack', 'g': 4}")
  if ev["op"] not in OPERATORS:
    raise ConfigError(f"{where}: unknown op {ev['op']!r}; choose one of {sorted(OPERATORS)}")
  known = set(EVENT_FIELDS) | set(_op_args(ev["op"]))
  unknown = sorted(set(ev) - known)
  if unknown:
    raise ConfigError(f"{where}: {ev['op']} takes {_op_args(ev['op'])} (and {list(EVENT_FIELDS)}), not {unknown}")
  out = {"opt": g.opt, "lr": g.lr, "warmup_steps": g.warmup_steps, "peak_lr": g.peak_lr, **ev}
  if out["opt"] not in POLICIES:
    raise ConfigError(f"{where}: opt={out['opt']!r} is not one of {POLICIES}")
  if out["lr"] not in LR_POLICIES:
    raise ConfigError(f"{where}: lr={out['lr']!r} is not one of {LR_POLICIES}")
  if out["warmup_steps"] < 0:
    out["warmup_steps"] = config.optim.warmup_steps
  if not out["peak_lr"] > 0:
    out["peak_lr"] = config.optim.lr
  if not isinstance(out["step"], int) or not 0 < out["step"] < config.train.steps:
    raise ConfigError(f"{where}: step={out['step']!r} must be an integer in [1, train.steps={config.train.steps}): "
                      "growth happens at the end of a step, with steps left to train the grown model")
  return out


def _lr_schedules(config, events) -> list[tuple[Callable, float]]:
  """(schedule over global steps, its peak) per phase, under each event's lr policy (growth.md §4)."""
  o, total = config.optim, optim.schedule_length(config)
  base = optim.schedule(o, total)
  out = [(base, o.lr)]
  for ev in events:
    s = ev["step"]
    if ev["lr"] == "continue":  # Apollo: one schedule for the whole run
      out.append(out[-1])
    elif ev["lr"] == "rewind":  # MSG: the base schedule rewound to its peak (the end of warmup) at the event
      out.append((lambda t, s=s: base(o.warmup_steps + t - s), o.lr))
    else:  # G_stack's code, LiGO, multi-level: warmup again from 0 to a new peak, then decay over what is left
      fresh = ml_collections.ConfigDict(o.to_dict())
      fresh.lr, fresh.warmup_steps = ev["peak_lr"], ev["warmup_steps"]
      after = optim.schedule(fresh, max(total - s, 1))
      out.append((lambda t, s=s, after=after: after(t - s), ev["peak_lr"]))
  return out


def plan(config) -> list[Phase]:
  """The phases of a run under config.growth.events: each event checked and its model worked out, abstractly.

  Raises ConfigError (one line: the event, the problem, the fix) for an operator that cannot apply, before
  anything compiles; an event whose step is not after the previous one's, or not before train.steps, too.
  """
  raw = config.growth.events or ()
  events = [_event(config, k, ev) for k, ev in enumerate(raw, 1)]
  for a, b in zip(events, events[1:]):
    if b["step"] <= a["step"]:
      raise ConfigError(f"growth.events: step {b['step']} follows step {a['step']}: list events in increasing steps")
  schedules = _lr_schedules(config, events)
  phases = [Phase(0, config, None, *schedules[0])]
  for k, ev in enumerate(events, 1):
    m = phases[-1].config.model
    args = {n: ev[n] for n in _op_args(ev["op"]) if n in ev}
    grown = {}

    def shape_only(params, batches, ev=ev, args=args, m=m, key=jax.random.key(0)):
      grown["m"], new_params = apply(m, params, ev["op"], args, key, batches)
      return new_params

    B, T = config.train.global_batch, config.data.seq_len
    batches = {k: jax.ShapeDtypeStruct((learn_steps(ev), B, T), jnp.int32) for k in ("inputs", "targets")}
    try:
      jax.eval_shape(shape_only, jax.eval_shape(lambda: model.init(m, jax.random.key(0))), batches)
    except (ConfigError, TypeError) as e:
      raise ConfigError(f"growth.events[{k - 1}] ({ev['op']} at step {ev['step']}): {e}") from None
    c = ml_collections.ConfigDict(config.to_dict())
    c.model = grown["m"]
    phases.append(Phase(ev["step"], c, ev, *schedules[k]))
  return phases


@contextlib.contextmanager
def event_errors(phase: Phase):
  """A ConfigError raised inside names the growth event that made `phase`'s model (none for the first phase)."""
  try:
    yield
  except ConfigError as e:
    if phase.event is None:
      raise
    raise ConfigError(f"after growth event {phase.event['op']} at step {phase.event['step']}: {e}") from None


def phase_at(phases: list[Phase], step: int) -> int:
  """The index of the phase whose model the state at the end of `step` has: an event's own step is before it."""
  return sum(p.start < step for p in phases[1:])


def grow_state(phases: list[Phase], k: int, state: dict, batches=None) -> dict:
  """The train state of phase k from phase k-1's, at k's event: a pure function, jitted on the mesh by the trainer.

  `batches`: for an operator that learns (g_learn), the `learn_steps` batches after the event, stacked.
  Parameters by the event's operator; the optimizer state by its `opt` policy (`grow_opt_state`); step and rng
  kept; FP8 delayed scaling's scales and histories start afresh for the new shapes.
  """
  ev, m_old, m_new = phases[k].event, phases[k - 1].config.model, phases[k].config.model
  args = {n: ev[n] for n in _op_args(ev["op"]) if n in ev}
  with jax.ensure_compile_time_eval():  # a concrete key inside the trainer's jit: split_mlp draws its map from it
    key = event_key(phases[0].config.seed, k)
  _, params, index_map = apply(m_old, state["params"], ev["op"], args, key,
                               batches, with_index_map=True)
  opt_state = grow_opt_state(ev["opt"], state["opt_state"], params, index_map)
  new = {"step": state["step"], "params": params, "opt_state": opt_state, "rng": state["rng"]}
  if "fp8" in state:
    new["fp8"] = model.fp8_state(m_new)
  return new


def total_flops(phases: list[Phase], step: int) -> float:
  """Model FLOPs of the run's first `step` steps, each phase's steps at its model's cost (flops.py), and of the
  operators that learn (g_learn: each of its steps a forward and backward pass of the grown model)."""
  ends = [p.start for p in phases[1:]] + [step]
  out = 0.0
  for p, end in zip(phases, ends):
    c = p.config
    per_step = flops.train_flops_per_step(c.model, c.data.seq_len, c.train.global_batch)
    learning = learn_steps(p.event) if p.event and step > p.start else 0
    out += (max(min(end, step) - p.start, 0) + learning) * per_step
  return out
