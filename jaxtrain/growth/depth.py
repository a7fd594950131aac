"""Depth growth: a trained L-layer model's blocks -> an L̂-layer model's, by a layer map π: [0, L̂) -> [0, L) ∪ {-1}.

From "Stacking Your Transformers: A Closer Look at Model Growth for Efficient LLM Pre-Training" (Du et al.,
NeurIPS 2024, arXiv 2405.15319; official code github.com/tongxuluo/prts), LiGO ("Learning to Grow Pretrained
Models for Efficient Transformer Training", Wang et al., ICLR 2023, arXiv 2303.00980; code VITA-Group/LiGO) and
"Composable Function-preserving Expansions for Transformer Architectures" (Gesmundo & Maile 2023, arXiv
2308.06103, expansion #6):

    stack          G_stack = G↑direct   θ̂_i = θ_π(i), π(i) = i mod L (or any layer map)           not FP
    g_zero         G↑zero               θ̂_i = θ_π(i), π(i) = ⌊i/g⌋; repeats' W_O = W_down = 0     FP
    g_learn        G↑learn (LiGO depth) θ̂_i = Σ_j w_ij θ_j, w fitted to the loss from one-hot(π)  not FP
    g_random       fresh layers on top (the paper's G↑random only with the event's
                   ramp_steps: MSG's mask, prts `msg.py`)                                          not FP (FP at m = 0)
    insert_layers  Gesmundo #6          new layers anywhere, fresh but W_O = W_down = 0           FP

A non-integer growth factor g (g·L a whole number of layers L̂) gives stack and g_learn bert2BERT's and MSG's map
(`top_fill_map`: the stack ⌊g⌋ times, the remainder from the top layers) and g_zero prts' ⌊i·L/L̂⌋.

FP (function-preserving): the grown model computes the small one's logits, to float rounding. A block whose
output projections are 0 is the identity, x + f_out(0) = x, only where the norm is not on the residual stream
(IDENTITY_PLACEMENTS); the operators that rely on it refuse other placements with a ConfigError.

Every operator is `(m, params, ...) -> (new_m, new_params)` (`with_index_map=True`: also the index map, core.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain import losses, model
from jaxtrain.config import ConfigError
from jaxtrain.growth import core

# Placements where a residual branch whose output projection is zero is the identity: x + N_out(0) = x.
IDENTITY_PLACEMENTS = ("pre", "peri", "lns")


def cycle_map(num_layers: int, g: int) -> list[int]:
  """G_stack's map (prts `stacking_list = [0..L-1] * g`): the whole stack repeated g times."""
  return list(range(num_layers)) * g


def interleave_map(num_layers: int, g) -> list[int]:
  """Each layer repeated g times in place: [0,0,1,1,...] (LiGO's interpolation, Apollo's `extend`, prts G_zero's
  ⌊i/(L̂/L)⌋, which for a non-integer g repeats some layers once more than others)."""
  L2 = round(g * num_layers)
  return [i * num_layers // L2 for i in range(L2)]


def top_fill_map(num_layers: int, target: int) -> list[int]:
  """The stack repeated ⌊L̂/L⌋ times, then the top L̂ mod L layers: bert2BERT's depth growth (Chen et al., ACL
  2022) and MSG's default new-block positions (github.com/cofe-ai/MSG `grow_ops_v2.py`). Equals cycle_map for
  an integer factor."""
  r = target % num_layers
  return list(range(num_layers)) * (target // num_layers) + list(range(num_layers - r, num_layers))


def _check_map(layer_map, L: int, op: str) -> list[int]:
  layer_map = [int(i) for i in layer_map]
  if not layer_map or any(not 0 <= i < L for i in layer_map):
    raise ConfigError(f"{op}: layer_map {layer_map} must be a non-empty list of layer indices in [0, {L}) "
                      f"(the small model's layers)")
  return layer_map


def _layer_map(m, g, layer_map, default, op) -> list[int]:
  """π from exactly one of g (the default map at growth factor g, g·L a whole number) or an explicit layer_map."""
  if (g is None) == (layer_map is None):
    raise ConfigError(f"{op}: give exactly one of g (a growth factor) or layer_map (a list of source layers)")
  L = m.num_layers
  if g is not None and (g < 1 or abs(g * L - round(g * L)) > 1e-6):
    raise ConfigError(f"{op}: growth factor g={g} must be >= 1 with g·{L} layers a whole number (e.g. g={L + 1}/{L})")
  if g is not None and g == int(g):
    g = int(g)
  return _check_map(default(L, g) if g is not None else layer_map, L, op)


def _stack_default(num_layers: int, g) -> list[int]:
  """cycle_map for an integer g, top_fill_map for another."""
  return cycle_map(num_layers, g) if isinstance(g, int) else top_fill_map(num_layers, round(g * num_layers))


def _need_identity_placement(m, op: str):
  if m.norm.placement not in IDENTITY_PLACEMENTS:
    raise ConfigError(f"{op}: a layer with zero output projections is the identity only for model.norm.placement in "
                      f"{IDENTITY_PLACEMENTS}, not {m.norm.placement!r}; use stack or g_random (not exact)")
  if m.norm.placement == "peri" and m.norm.eps <= 0:
    raise ConfigError(f"{op}: Peri-LN's output norm of a zero branch is 0/0 with model.norm.eps=0; set eps > 0")


def _lns_gains(m, src: list[int]) -> dict:
  """LayerNorm Scaling ("The Curse of Depth", Sun et al. 2025) scales layer ℓ's pre-norm outputs by 1/√(ℓ+1): a
  layer moved from ℓ to i gets its gains ×√((i+1)/(ℓ+1)), so it computes what it did."""
  if m.norm.placement != "lns":
    return {}
  f = np.array([math.sqrt((i + 1) / (s + 1)) if s >= 0 else 1.0 for i, s in enumerate(src)], np.float32)[:, None]
  return {("blocks", n, "scale"): f for n in ("attn_norm", "mlp_norm")}


def stack(m, params, *, g: int | None = None, layer_map=None, with_index_map=False):
  """G_stack (Du et al. 2024, prts `stackingpt.py`): layer i of the grown model is layer π(i) of the small one.

  π = `layer_map` (any list of source layers: interleaved, partial stacking "123-456x7", ...) or, with `g`, the
  whole stack repeated g times (a non-integer g: `top_fill_map`). Embedding, final norm and head are kept. Not
  function-preserving: each copied block acts again on the residual stream.
  """
  src = _layer_map(m, g, layer_map, _stack_default, "stack")
  return core.transfer(m, params, core.grown_config(m, num_layers=len(src)), None, {"layers": np.array(src)},
                       with_index_map=with_index_map)


def g_zero(m, params, *, g: int | None = None, layer_map=None, with_index_map=False):
  """G↑zero (Du et al. 2024, prts `G_zero_depthwise.py`): layer i <- layer π(i), every repeat starts as the identity.

  π defaults to ⌊i/g⌋ (each layer followed by its g-1 repeats); a repeat is any layer whose source already
  appeared; its W_O and W_down are 0, so x + f(N(x)) = x. Function-preserving when the first appearances are the
  small model's layers in order, 0, 1, ..., L−1 (the default map; any other map is refused: [1, 0, 0, 1] runs
  layer 1 before layer 0, [0, 0, 0] drops layers 1 and 2) and the placement is pre, peri or lns (lns: gains
  rescaled to each layer's new depth). Under the optimizer's `copy` and `duplicate` the zeroed projections get
  zero moments.
  """
  _need_identity_placement(m, "g_zero")
  src = _layer_map(m, g, layer_map, interleave_map, "g_zero")
  firsts = list(dict.fromkeys(src))
  if firsts != list(range(m.num_layers)):
    raise ConfigError(f"g_zero: layer_map {src} is not function-preserving: its first appearances {firsts} must be "
                      f"the small model's layers in order, {list(range(m.num_layers))}; use stack for other maps")
  seen, repeat = set(), []
  for s in src:
    repeat.append(s in seen)
    seen.add(s)
  zeroed = np.where(repeat, -1, src)
  outs = core.blocks_paths(m, "wo", "down")
  return core.transfer(m, params, core.grown_config(m, num_layers=len(src)), None, {"layers": np.array(src)},
                       zero=outs, scale=_lns_gains(m, src), leaf_maps={p: {"layers": zeroed} for p in outs},
                       with_index_map=with_index_map)


def g_learn(m, params, batches, *, g: int | None = None, layer_map=None, fit_steps: int = 100, fit_lr: float = 1e-3,
            with_index_map=False):
  """G↑learn (Du et al. 2024; LiGO's depth operator, Wang et al., ICLR 2023): layer i <- Σ_j w_ij · layer j.

  One w ∈ R^{L̂×L} per block tensor (LiGO ties it per parameter type), initialized at G_stack's map (one-hot at
  π(i), `layer_map` or the stack repeated g times, `top_fill_map` for a non-integer g) and fitted by Adam
  (`fit_lr`: ours, LiGO's paper does not give one) to the grown model's loss on `batches` ({"inputs", "targets"}:
  [fit_steps, B, T]), one step per batch,
  as LiGO fits its operator for 100 steps before training the grown model. The loss is plain cross-entropy with
  the model's output activation. Width is not learned here. Not function-preserving; with fit_steps = 0 it is `stack`.
  """
  src = _layer_map(m, g, layer_map, _stack_default, "g_learn")
  if batches["inputs"].shape[0] != fit_steps:
    raise ConfigError(f"g_learn: fit_steps={fit_steps} but {batches['inputs'].shape[0]} batches were given")
  new_m, _, index_map = stack(m, params, layer_map=src, with_index_map=True)
  graphdef = model.abstract(new_m)[0]
  w0 = jax.tree.map(lambda _: jax.nn.one_hot(np.array(src), m.num_layers), params["blocks"])

  def grown(w):  # θ̂_i = Σ_j w_ij θ_j, per block tensor
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
  """Fresh layers on top, from the model's own initializer. Not function-preserving.

  The paper's G↑random (Du et al. 2024, prts `msg.py`) is this with MSG's mask ramp: a growth event's
  `ramp_steps` (growth/events.py) fades the new layers in, y·m + x·(1 − m), m = 0 → 1 over T steps (the official
  code's T = 5000, `MsgConfig.grow_step`); without it the new layers act at full strength from the first step.
  """
  if num_layers <= m.num_layers:
    raise ConfigError(f"g_random: num_layers={num_layers} must exceed the model's {m.num_layers}")
  return core.transfer(m, params, core.grown_config(m, num_layers=num_layers), key,
                       {"layers": core.pad(m.num_layers, num_layers)}, with_index_map=with_index_map)


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
  return core.transfer(m, params, core.grown_config(m, num_layers=len(src)), key, {"layers": np.array(src)},
                       zero=core.blocks_paths(m, "wo", "down"), scale=_lns_gains(m, src),
                       with_index_map=with_index_map)
