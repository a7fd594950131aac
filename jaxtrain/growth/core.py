"""What every growth operator shares: index maps, and the one transfer of old parameters into the grown model.

An operator is a map per axis, new position -> old position (-1: a new entry). For a leaf W with axes (a_1..a_n)
and maps (π_1..π_n) the grown leaf is

    Ŵ[i_1..i_n] = s · W[π_1(i_1)..π_n(i_n)]   where every π_k(i_k) >= 0
    Ŵ[i_1..i_n] = fresh or 0                   where any π_k(i_k) = -1

the "transfer" of Net2Net (Chen, Goodfellow & Shlens, ICLR 2016, arXiv 1511.05641), bert2BERT (Chen et al.,
ACL 2022, arXiv 2110.07143) and MSG's `transfer_states` (Yao et al. 2023, arXiv 2305.02869; code cofe-ai/MSG).
"Fresh" entries come from the model's own initializer at the new size (`model.init(new_m, key)`), so μS's unit
init holds; "0" is the constraint that makes an expansion function-preserving (Gesmundo & Maile 2023, arXiv
2308.06103). Under μS (μnit Scaling, jaxtrain/munit.py) every old linear is also scaled by α_old/α_new, its
static multiplier's change with fan-in, so that α·W is kept.

The same maps move the optimizer's moments (growth.events.grow_opt_state), and compose across operators.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import config as cfg_lib
from jaxtrain import model, munit


class AxisMap(NamedTuple):
  """Where one leaf's new entries come from: per axis, new index -> old index, or -1 for a new entry."""
  idx: tuple[np.ndarray, ...]


def path_of(keys) -> tuple[str, ...]:
  """A pytree key path as a tuple of names: ('blocks', 'attn', 'wq', 'w')."""
  return tuple(k.key for k in keys)


def is_axes(x) -> bool:
  """A leaf of the logical-axes tree: a tuple of axis names (None for an unnamed axis)."""
  return isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)


def param_axes(m) -> dict:
  """Each parameter's logical axis names (model.abstract), the attention's unnamed head-dim axis as 'head_dim'."""
  axes = model.abstract(m)[2]

  def name(path, a):
    return tuple("head_dim" if n is None and path_of(path)[:2] == ("blocks", "attn") else n for n in a)

  return jax.tree_util.tree_map_with_path(name, axes, is_leaf=lambda x: isinstance(x, tuple))


def grown_config(m, **changes):
  """A copy of `m` with `changes`; head_dim and mlp_dim pinned, as their defaults follow d_model and num_heads."""
  n = ml_collections.ConfigDict(m.to_dict() if hasattr(m, "to_dict") else m)
  n.head_dim, n.mlp_dim = cfg_lib.head_dim(m), cfg_lib.mlp_dim(m)
  for k, v in changes.items():
    if isinstance(v, dict):
      n[k].update(v)
    else:
      n[k] = v
  return n


def pad(n_old: int, n_new: int) -> np.ndarray:
  """The map of an axis grown at its end: old entries stay, n_new - n_old new ones after them."""
  return np.concatenate([np.arange(n_old), -np.ones(n_new - n_old, int)])


def blocks_paths(m, *names) -> set:
  """The param paths under blocks/ whose last module is one of `names` (e.g. 'wo', 'down')."""
  leaves = jax.tree_util.tree_flatten_with_path(model.abstract(m)[1])[0]
  return {path_of(p) for p, _ in leaves if path_of(p)[0] == "blocks" and path_of(p)[-2] in names}


def mus_factors(m, new_m) -> dict:
  """α_old/α_new per linear (path -> float): μS's multiplier follows fan-in; multiplying old weights keeps α·W."""
  out = {}
  if m.parametrization != "mus":
    return out
  old, new = (jax.tree_util.tree_flatten_with_path(model.param_info(c), is_leaf=model.is_info)[0] for c in (m, new_m))
  for (path, i), (_, j) in zip(old, new):
    if i.role in ("hidden", "head") and i.fan_in != j.fan_in:
      out[path_of(path)] = munit.multiplier(m, i.role, i.fan_in) / munit.multiplier(new_m, j.role, j.fan_in)
  return out


def regrid(old: jax.Array, amap: AxisMap, fill: jax.Array, scale=1.0) -> jax.Array:
  """The new leaf: old[idx] · scale where every axis maps to an old entry, `fill` where any axis is new (-1)."""
  idx = [np.asarray(i) for i in amap.idx]
  gathered = old[np.ix_(*[np.maximum(i, 0) for i in idx])]
  new_mask = np.zeros(tuple(len(i) for i in idx), bool)
  for a, i in enumerate(idx):
    new_mask |= (i < 0).reshape([-1 if b == a else 1 for b in range(len(idx))])
  return jnp.where(new_mask, fill.astype(old.dtype), (gathered * scale).astype(old.dtype))


def repeats(idx) -> np.ndarray:
  """Per new position of one axis map, whether it is new: -1, or an old index that already appeared before it.

  The first appearance of each old index is the old entry (it keeps what it had); later ones are copies: MSG's
  new blocks (Yao et al., ICLR 2024; github.com/cofe-ai/MSG `stack_block`) and Net2Net's split units."""
  idx, seen, out = np.asarray(idx), set(), []
  for i in idx.tolist():
    out.append(i < 0 or i in seen)
    seen.add(i)
  return np.array(out, bool)


def layer_sources(index_map) -> tuple[np.ndarray, np.ndarray]:
  """(source, new), per layer of the grown stacked blocks: the old layer it takes its values from (-1: none), and
  whether it is new: `repeats` on any block leaf's layer axis (a fresh layer, or a copy of one placed before it)."""
  maps = [a.idx[0] for a in jax.tree.leaves(index_map["blocks"], is_leaf=lambda x: isinstance(x, AxisMap))]
  return np.max(maps, axis=0), np.any([repeats(i) for i in maps], axis=0)


def without_copies(index_map):
  """The index map with every copy (`repeats`) sent to -1 on every axis: copies get what new entries get."""
  def one(a):
    return AxisMap(tuple(np.where(repeats(i), -1, i) for i in a.idx))

  return jax.tree.map(one, index_map, is_leaf=lambda x: isinstance(x, AxisMap))


def compose_index_maps(first, second):
  """The index map of `second` applied after `first` (both as returned with `with_index_map=True`)."""

  def one(a, b):
    return AxisMap(tuple(np.where(j < 0, -1, i[np.maximum(j, 0)]) for i, j in zip(a.idx, b.idx)))

  return jax.tree.map(one, first, second, is_leaf=lambda x: isinstance(x, AxisMap))


class LeafPlan(NamedTuple):
  """How one leaf grows, from shapes alone."""
  values: AxisMap    # where the values come from
  moments: AxisMap   # where the optimizer's moments come from (differs from `values` for split_mlp's copies)
  fresh: bool        # new entries drawn from the initializer (else 0)


def leaf_plans(m, params, new_m, maps, *, zero=(), leaf_maps=None, moment_maps=None, has_key=True):
  """Per leaf of `params`, its LeafPlan; a ValueError where a map does not give the new model's shape."""
  axes = param_axes(m)
  abstract_new = jax.eval_shape(lambda: model.init(new_m, jax.random.key(0)))
  leaf_maps, moment_maps = leaf_maps or {}, moment_maps or {}

  def axis_map(path, a, old, overrides):
    own = {**maps, **overrides.get(path, {})}
    return AxisMap(tuple(np.asarray(own[n]) if n in own else np.arange(old.shape[k]) for k, n in enumerate(a)))

  def one(keys, old, a, new):
    path = path_of(keys)
    values = axis_map(path, a, old, leaf_maps)
    if tuple(len(i) for i in values.idx) != new.shape:
      raise ValueError(f"growth map of {'/'.join(path)} gives {tuple(len(i) for i in values.idx)}, not {new.shape}")
    fresh = any((i < 0).any() for i in values.idx) and path not in zero
    if fresh and not has_key:
      raise ValueError(f"{'/'.join(path)} gains entries that need a PRNG key")
    return LeafPlan(values, axis_map(path, a, old, {**leaf_maps, **moment_maps}), fresh)

  return jax.tree_util.tree_map_with_path(one, params, axes, abstract_new, is_leaf=is_axes)


def transfer(m, params, new_m, key, maps, *, zero=(), scale=None, leaf_maps=None, moment_maps=None,
             with_index_map=False):
  """The grown model's parameters: Ŵ = s·W[π] on old entries, fresh (`key`) or 0 (leaves in `zero`) on new ones.

  maps:        {axis name: new -> old index array} for every leaf with that axis ('layers', 'embed', 'heads', ...)
  zero:        param paths (tuples) whose new entries must be 0
  scale:       {path: factor s on the old entries}, a float or an array broadcasting to the new leaf
  leaf_maps:   {path: {axis name: map}} overriding `maps` for one leaf (G_zero's zeroed repeats)
  moment_maps: {path: {axis name: map}} where the optimizer's moments follow a different map than the values

  Returns (new_m, new_params), and with `with_index_map` the moments' index map (an AxisMap per leaf).
  """
  scale = dict(scale or {})
  for path, f in mus_factors(m, new_m).items():
    scale[path] = scale.get(path, 1.0) * f
  plans = leaf_plans(m, params, new_m, maps, zero=zero, leaf_maps=leaf_maps, moment_maps=moment_maps,
                     has_key=key is not None)
  is_plan = lambda x: isinstance(x, LeafPlan)
  abstract_new = jax.eval_shape(lambda: model.init(new_m, jax.random.key(0)))

  @jax.jit  # one program per call: eagerly, each small op would compile on its own
  def values(params, key):
    fresh = model.init(new_m, key) if key is not None else abstract_new

    def one(keys, old, plan, new):
      fill = new if plan.fresh else jnp.zeros(new.shape, new.dtype)
      return regrid(old, plan.values, fill, scale.get(path_of(keys), 1.0))

    return jax.tree_util.tree_map_with_path(one, params, plans, fresh, is_leaf=is_plan)

  new_params = values(params, key)
  if not with_index_map:
    return new_m, new_params
  return new_m, new_params, jax.tree.map(lambda p: p.moments, plans, is_leaf=is_plan)
