"""Growth operators: function preservation to float32 rounding, the depth maps, the optimizer state, bad input."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import growth, losses, model, munit, optim
from jaxtrain.config import ConfigError


def small(**change):
  m = cfg_lib.base().model
  m.update(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=32)
  norm = change.pop("norm", {})
  m.update(change)
  m.norm.update(norm)
  return m


def perturbed(m, seed=0):
  """Trained-looking parameters: init plus noise, so gains are not 1 and nothing is conveniently zero."""
  params = model.init(m, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def logits(m, params, tokens):
  return _forward(model.abstract(m)[0])(params, tokens)


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
  return jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))


TOKENS = jax.random.randint(jax.random.key(7), (2, 16), 0, 64)
KEY = jax.random.key(3)

# Each function-preserving operator, growing whatever model it is given (so that they chain).
EXACT_OPS = {
    "expand_mlp": lambda m, p: growth.expand_mlp(m, p, KEY, mlp_dim=cfg_lib.mlp_dim(m) + 32),
    "split_mlp": lambda m, p: growth.split_mlp(m, p, KEY, mlp_dim=cfg_lib.mlp_dim(m) + 32),
    "add_heads_to_groups": lambda m, p: growth.add_heads(m, p, KEY, num_heads=m.num_heads * 3 // 2),  # R 2 -> 3
    "add_kv_groups": lambda m, p: growth.add_heads(m, p, KEY, num_heads=2 * m.num_heads,
                                                   num_kv_heads=2 * cfg_lib.num_kv_heads(m)),
    "expand_head_dim": lambda m, p: growth.expand_head_dim(m, p, KEY, head_dim=2 * cfg_lib.head_dim(m)),
    "expand_d_model": lambda m, p: growth.expand_d_model(m, p, KEY, d_model=m.d_model + 16),
    "insert_layers": lambda m, p: growth.insert_layers(m, p, KEY, at=[0, 2, m.num_layers, m.num_layers]),
    "g_zero": lambda m, p: growth.g_zero(m, p, g=2),
}
DEPTH_IDENTITY = ("insert_layers", "g_zero")  # exact only where a zero branch is the identity

# Each README claim of exactness in at least one config (post: mix's first layer).
CONFIGS = {
    "pre": dict(),
    "qk_norm": dict(qk_norm=True),
    "untied_gelu_mha_no_final_norm": dict(tie_embeddings=False, mlp="gelu", num_kv_heads=None, norm=dict(final=False)),
    "peri_embed_norm": dict(norm=dict(placement="peri", embed_norm=True)),
    "lns": dict(norm=dict(placement="lns")),
    "mix": dict(norm=dict(placement="mix", mix_post_layers=1)),
    "mus_res_post_qk": dict(parametrization="mus", tie_embeddings=False, qk_norm=True,
                            norm=dict(placement="res_post")),
    "mus_inv_attn": dict(parametrization="mus", tie_embeddings=False, mus=dict(attn_scale="inv"),
                         norm=dict(placement="res_post")),
}


def _assert_same(a, b):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_all_operators_composed_preserve_the_function(config):
  """Every exact operator in turn (the depth ones where the placement allows), one comparison of the logits."""
  m = small(**CONFIGS[config])
  params = perturbed(m)
  ops = [op for op in EXACT_OPS if op not in DEPTH_IDENTITY or m.norm.placement in growth.IDENTITY_PLACEMENTS]
  new_m, new_params = m, params
  for op in ops:  # each one grows the model, to the shapes its new config says
    n = model.count_params(new_params)
    new_m, new_params = EXACT_OPS[op](new_m, new_params)
    assert model.count_params(new_params) > n, op
    assert jax.tree.map(jnp.shape, new_params) == jax.tree.map(jnp.shape, model.abstract(new_m)[1]), op
  assert (new_m.d_model, new_m.mlp_dim, new_m.head_dim, new_m.num_heads) == (48, 128, 16, 12)
  _assert_same(logits(m, params, TOKENS), logits(new_m, new_params, TOKENS))


def test_new_entries_are_not_all_zero():
  """The constraint zeros only what the papers constrain: new W_in columns and W_Q/K/V rows are fresh."""
  m = small()
  new_m, p = growth.expand_d_model(m, perturbed(m), KEY, d_model=48)
  assert float(jnp.abs(p["blocks"]["attn"]["wq"]["w"][:, 32:]).max()) > 0
  assert float(jnp.abs(p["blocks"]["attn"]["wo"]["w"][..., 32:]).max()) == 0
  assert float(jnp.abs(p["embed"][:, 32:]).max()) == 0
  assert new_m.norm.eps == pytest.approx(m.norm.eps * 32 / 48)


def test_expand_d_model_needs_the_eps_rescale():
  """Without ε·D/D̂ the logits move: the rescale is what makes #5 exact with a non-zero eps."""
  m = small(norm=dict(eps=1e-2))
  params = perturbed(m)
  new_m, new_params = growth.expand_d_model(m, params, KEY, d_model=48)
  _assert_same(logits(m, params, TOKENS), logits(new_m, new_params, TOKENS))
  new_m.norm.eps = m.norm.eps
  assert not np.allclose(logits(m, params, TOKENS), logits(new_m, new_params, TOKENS), rtol=1e-4, atol=1e-4)


def test_head_dim_expansion_not_a_multiple_breaks_under_rope():
  m = small()
  params = perturbed(m)
  with pytest.raises(ConfigError, match="not function-preserving under RoPE"):
    growth.expand_head_dim(m, params, KEY, head_dim=12)
  new_m, new_params = growth.expand_head_dim(m, params, KEY, head_dim=12, exact=False)
  assert not np.allclose(logits(m, params, TOKENS), logits(new_m, new_params, TOKENS), rtol=1e-3, atol=1e-3)


def test_rope_exact_map():
  assert list(growth.rope_exact_map(4, 8)) == [0, -1, 1, -1, 2, -1, 3, -1]
  assert list(growth.rope_exact_map(4, 12)) == [0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1]


# ---------------------------------------------------------------- depth maps


def _layers(params, path=("attn", "wq", "w")):
  x = params["blocks"]
  for k in path:
    x = x[k]
  return np.asarray(x)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(g=2), [0, 1, 2, 0, 1, 2]),
    (dict(layer_map=growth.interleave_map(3, 2)), [0, 0, 1, 1, 2, 2]),
    (dict(layer_map=[0, 1, 1, 1, 2]), [0, 1, 1, 1, 2]),  # partial stacking, "1-2x3-3"
    (dict(g=8 / 3), [0, 1, 2, 0, 1, 2, 1, 2]),  # a non-integer factor: the remainder from the top (bert2BERT, MSG)
])
def test_stack_places_the_right_layers(kwargs, expected):
  m = small()
  params = perturbed(m)
  new_m, new_params = growth.stack(m, params, **kwargs)
  assert new_m.num_layers == len(expected)
  for path in (("attn", "wq", "w"), ("mlp", "down", "w"), ("attn_norm", "scale")):
    np.testing.assert_array_equal(_layers(new_params, path), _layers(params, path)[expected])
  np.testing.assert_array_equal(new_params["embed"], params["embed"])
  # not function-preserving: every copied block acts again
  assert not np.allclose(logits(m, params, TOKENS), logits(new_m, new_params, TOKENS), atol=1e-3)


def test_g_zero_repeats_are_the_identity_on_the_residual():
  m = small()
  params = perturbed(m)
  new_m, new_params = growth.g_zero(m, params, g=2)  # [0, 0, 1, 1, 2, 2]: odd layers are repeats
  graphdef = model.abstract(new_m)[0]
  _, stats = nnx.merge(graphdef, new_params).hidden(TOKENS, collect=True, keep_states=True)
  states = np.asarray(stats["states"])  # [L+1, B, T, D]: entering each layer, and after the last
  for layer in (1, 3, 5):
    np.testing.assert_array_equal(states[layer + 1], states[layer])
    assert not np.allclose(states[layer], states[layer - 1])
  np.testing.assert_array_equal(_layers(new_params)[1], _layers(params)[0])  # repeats keep their q, k, v, W_in


@pytest.mark.parametrize("layer_map", [[1, 0, 0, 1], [0, 0, 0], [0, 2, 1], [0, 1]])
def test_g_zero_refuses_maps_it_is_not_exact_for(layer_map):
  """First appearances out of the small model's order, or missing layers: not function-preserving, so refused in
  one line, before anything is built (abstract parameters), and by growth.plan before anything compiles."""
  m = small()
  with pytest.raises(ConfigError, match=r"first appearances .* must be the small model's layers in order") as e:
    growth.g_zero(m, jax.eval_shape(lambda: model.init(m, jax.random.key(0))), layer_map=layer_map)
  assert "\n" not in str(e.value)
  c = cfg_lib.base()
  c.model = m
  c.train.steps = 10
  c.growth.events = ({"step": 5, "op": "g_zero", "layer_map": layer_map},)
  with pytest.raises(ConfigError, match=r"growth.events\[0\] \(g_zero at step 5\): g_zero: layer_map"):
    growth.plan(c)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(g=2), [0, 0, 1, 1, 2, 2]), (dict(layer_map=[0, 1, 1, 2, 2, 2]), [0, 1, 1, 2, 2, 2]),
    (dict(g=5 / 3), [0, 0, 1, 1, 2]),  # prts G_zero_depthwise: ⌊i·L/L̂⌋
])
def test_g_zero_is_exact_for_first_appearance_maps(kwargs, expected):
  m = small()
  params = perturbed(m)
  new_m, new_params = growth.g_zero(m, params, **kwargs)
  np.testing.assert_array_equal(_layers(new_params), _layers(params)[expected])
  np.testing.assert_allclose(logits(new_m, new_params, TOKENS), logits(m, params, TOKENS), rtol=1e-5, atol=1e-5)


def test_g_random_appends_fresh_layers():
  m = small()
  params = perturbed(m)
  new_m, a = growth.g_random(m, params, jax.random.key(1), num_layers=5)
  _, b = growth.g_random(m, params, jax.random.key(2), num_layers=5)
  np.testing.assert_array_equal(_layers(a)[:3], _layers(params))
  assert not np.allclose(_layers(a)[3:], _layers(b)[3:])
  std = _layers(a)[3:].std()
  assert 0.01 < std < 0.03  # the model's own init (init_std 0.02), not the perturbed values
  assert not np.allclose(logits(m, params, TOKENS), logits(new_m, a, TOKENS), atol=1e-3)


# ---------------------------------------------------------------- optimizer state


def _opt(m, name="adamw"):
  c = cfg_lib.base()
  c.model = m
  c.optim.name = name
  return optim.make(c, model.abstract(m)[2])[0]


def test_repeats_and_copies():
  assert list(growth.repeats([2, 0, 1, 2, -1, 0])) == [False, False, False, True, True, True]
  (a,) = jax.tree.leaves(growth.without_copies({"w": growth.AxisMap((np.array([0, 1, 0, 1]), np.array([0, -1]))),}),
                         is_leaf=lambda x: isinstance(x, growth.AxisMap))
  assert [list(i) for i in a.idx] == [[0, 1, -1, -1], [0, -1]]


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_opt_state_copy_duplicate_and_reset(name):
  m = small()
  params = perturbed(m)
  tx = _opt(m, name)
  state = tx.init(params)
  for _ in range(2):  # real, non-zero moments and a count of 2
    grads = jax.tree.map(lambda p: jnp.sin(3 * p), params)
    _, state = tx.update(grads, state, params, step=1)
  m1, p1, map1 = growth.expand_mlp(m, params, KEY, mlp_dim=96, with_index_map=True)
  m2, p2, map2 = growth.stack(m1, p1, layer_map=[2, 0, 1, 2], with_index_map=True)
  index_map = growth.compose_index_maps(map1, map2)
  new_tx = _opt(m2, name)
  fresh = new_tx.init(p2)
  abstract = model.abstract(m2)[1]

  old_mu = state[-2].mu
  down_old = old_mu["blocks"]["mlp"]["down"]["w"]
  for policy in ("copy", "duplicate"):
    copied = growth.grow_opt_state(policy, state, abstract, index_map)
    assert jax.tree.structure(copied) == jax.tree.structure(fresh)
    assert jax.tree.map(jnp.shape, copied) == jax.tree.map(jnp.shape, fresh)
    new_mu = copied[-2].mu
    assert int(copied[-2].count) == 2
    down_new = new_mu["blocks"]["mlp"]["down"]["w"]
    # old slice, moved layers; layer 3 repeats layer 2: MSG's copy gives it fresh (zero) moments, duplicate layer 2's
    moved = [2, 0, 1, 2] if policy == "duplicate" else [2, 0, 1]
    np.testing.assert_array_equal(down_new[:len(moved), :64], down_old[np.array(moved)])
    assert (policy == "duplicate") != (float(jnp.abs(down_new[3]).max()) == 0)
    assert float(jnp.abs(down_new[:, 64:]).max()) == 0 and float(jnp.abs(down_old).min()) > 0
    wi_new = new_mu["blocks"]["mlp"]["wi"]["w"]
    assert float(jnp.abs(wi_new[..., 64:]).max()) == 0
    np.testing.assert_array_equal(new_mu["embed"], old_mu["embed"])
    if name == "adamw":
      np.testing.assert_array_equal(copied[-2].nu["blocks"]["attn"]["wq"]["w"][:len(moved)],
                                    state[-2].nu["blocks"]["attn"]["wq"]["w"][np.array(moved)])
    new_tx.update(jax.tree.map(jnp.ones_like, p2), copied, p2, step=3)  # the grown state is usable

  reset = growth.grow_opt_state("reset", state, abstract, index_map)
  assert jax.tree.structure(reset) == jax.tree.structure(fresh)
  for a, b in zip(jax.tree.leaves(reset), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype


def _layer_count_run(events, steps_before=3):
  """(phases, tx per phase, the state at the event after `steps_before` AdamW updates on random gradients)."""
  c = cfg_lib.base()
  c.model = small()
  c.train.steps = 20
  c.optim.update(clip_norm=0.0, weight_decay=0.1)  # clipping is global: the per-layer references need it off
  c.growth.events = events
  phases = growth.plan(c)
  lr = lambda t: 1e-2
  txs = [optim.make(p.config, model.abstract(p.config.model)[2], lr, 1e-2)[0] for p in phases]
  params = perturbed(c.model)
  state = {"step": jnp.int32(steps_before), "params": params, "opt_state": txs[0].init(params),
           "rng": jax.random.key_data(KEY)}
  for i in range(steps_before):
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape), params)
    _, state["opt_state"] = txs[0].update(grads, state["opt_state"], params, step=i)
  return phases, txs, state


def _adamw_reference(adam_state, grads, params, decayed, steps):
  """The updates of an AdamW (optax.scale_by_adam, β (0.9, 0.95), then −η·(u + λ·p)) from `adam_state`."""
  adam = optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8)
  out = []
  for k in range(steps):
    u, adam_state = adam.update(grads[k], adam_state)
    u = jax.tree.map(lambda u, p, d: -1e-2 * (u + 0.1 * p) if d else -1e-2 * u, u, params, decayed)
    params = jax.tree.map(jnp.add, params, u)
    out.append(u)
  return out


def test_copy_gives_new_layers_msgs_fresh_adamw_and_old_layers_their_own():
  """opt=copy on a depth event (MSG: new blocks are new PyTorch AdamW parameters, count 0): a new layer's updates
  are those of a fresh AdamW on that layer alone, bias correction included (optax's shared count gave 0.447× at
  the first step); an old layer's and the embedding's go on as if nothing had happened."""
  phases, txs, state = _layer_count_run(({"step": 3, "op": "stack", "g": 2, "opt": "copy", "lr": "continue"},))
  assert isinstance(state["opt_state"][0], optim.ScaleByAdamLayersState)
  grown = growth.grow_state(phases, 1, state)
  assert list(grown["opt_state"][0].layer_count) == [3, 3, 3, 0, 0, 0] and int(grown["opt_state"][0].count) == 3
  _, p, imap = growth.stack(phases[0].config.model, state["params"], layer_map=[0, 1, 2, 2], with_index_map=True)
  for policy, counts in (("duplicate", [3, 3, 3, 3]), ("reset", [0, 0, 0, 0]), ("copy", [3, 3, 3, 0])):
    assert list(growth.grow_opt_state(policy, state["opt_state"], p, imap)[0].layer_count) == counts
  params, opt_state, steps = grown["params"], grown["opt_state"], 4
  grads = [jax.tree.map(lambda p: jax.random.normal(jax.random.key(10 + k), p.shape), params) for k in range(steps)]
  updates = []
  for k in range(steps):
    u, opt_state = txs[1].update(grads[k], opt_state, params, step=3 + k)
    params = jax.tree.map(jnp.add, params, u)
    updates.append(u)
  decayed = optim.decay_mask(model.param_info(phases[1].config.model))
  old = state["opt_state"][0]
  for layer in range(6):
    at = lambda t: jax.tree.map(lambda x: x[layer], t["blocks"])
    if layer < 3:  # an old layer: its own moments and count 3 go on
      start = optax.ScaleByAdamState(jnp.int32(3), at(old.mu), at(old.nu))
    else:  # a new layer (a repeat of layer - 3): a fresh AdamW
      start = optax.scale_by_adam().init(at(grown["params"]))
    ref = _adamw_reference(start, [at(g) for g in grads], at(grown["params"]), decayed["blocks"], steps)
    for k in range(steps):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-9), at(updates[k]), ref[k])
  rest = lambda t: {k: v for k, v in t.items() if k != "blocks"}
  ref = _adamw_reference(optax.ScaleByAdamState(jnp.int32(3), rest(old.mu), rest(old.nu)),
                         [rest(g) for g in grads], rest(grown["params"]), rest(decayed), steps)
  for k in range(steps):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-9), rest(updates[k]), ref[k])


def test_per_layer_counts_only_where_a_depth_copy_event_needs_them():
  """Without a depth event under copy, optax's scale_by_adam and its state (checkpoints and step unchanged); with
  equal counts the per-layer transform is optax's update: moments bit for bit, the update to float rounding."""
  depth_ops = {op for op, f in growth.OPERATORS.items() if f.__module__ == "jaxtrain.growth.depth"}
  assert depth_ops == set(optim.LAYER_OPS)
  for events in ((), ({"step": 3, "op": "stack", "g": 2},), ({"step": 3, "op": "expand_mlp", "mlp_dim": 96,
                                                                "opt": "copy"},)):
    _, txs, state = _layer_count_run(events, steps_before=0)
    assert isinstance(state["opt_state"][0], optax.ScaleByAdamState)
  m = small()
  params = perturbed(m)
  ours = optim.scale_by_adam_layers(0.9, 0.95, 1e-8, model.stacked(model.abstract(m)[2]), m.num_layers)
  theirs = optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8)
  a, b = ours.init(params), theirs.init(params)
  step = jax.jit(lambda tx_a, tx_b, g: (ours.update(g, tx_a), theirs.update(g, tx_b)))
  for k in range(5):
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(k), p.shape), params)
    (ua, a), (ub, b) = step(a, b, g)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=0), ua, ub)  # ulps: XLA's division
    jax.tree.map(np.testing.assert_array_equal, (a.mu, a.nu), (b.mu, b.nu))
  assert list(a.layer_count) == [5] * 3 and int(a.count) == int(b.count) == 5


def test_split_mlp_moments_are_zero_for_new_units():
  m = small()
  params = perturbed(m)
  _, p, index_map = growth.split_mlp(m, params, KEY, mlp_dim=96, with_index_map=True)
  abstract = model.abstract(small(mlp_dim=96))[1]
  mu = growth.grow_opt_state("copy", (params,), abstract, index_map)[0]
  np.testing.assert_array_equal(mu["blocks"]["mlp"]["down"]["w"][:, :64], params["blocks"]["mlp"]["down"]["w"])
  assert float(jnp.abs(mu["blocks"]["mlp"]["down"]["w"][:, 64:]).max()) == 0
  assert float(jnp.abs(p["blocks"]["mlp"]["down"]["w"][:, 64:]).max()) > 0  # the values themselves are copies
  dup = growth.grow_opt_state("duplicate", (params,), abstract, index_map)[0]  # copies: their source's moments
  src = index_map["blocks"]["mlp"]["down"]["w"].idx[1][64:]
  np.testing.assert_array_equal(dup["blocks"]["mlp"]["down"]["w"][:, 64:], params["blocks"]["mlp"]["down"]["w"][:, src])


def _train(m, params, steps, seed=0):
  """`steps` AdamW steps on random tokens from a fresh optimizer (the `reset` policy)."""
  tx = _opt(m)
  graphdef = model.abstract(m)[0]

  def loss(p, t):
    return losses.cross_entropy(nnx.merge(graphdef, p)(t[:, :-1]), t[:, 1:])[0]

  @jax.jit
  def step(p, opt, t, i):
    updates, opt = tx.update(jax.grad(loss)(p, t), opt, p, step=i)
    return jax.tree.map(lambda a, u: a + u, p, updates), opt

  opt = tx.init(params)
  for i in range(steps):
    params, opt = step(params, opt, jax.random.randint(jax.random.key(seed + i), (4, 17), 0, 64), i + 10)
  return params


def test_split_copies_diverge_only_with_noise():
  """Under a fresh optimizer a split copy gets its source's gradient exactly and never diverges; split_mlp's
  `noise` (Net2Net's symmetry breaking) makes the copies drift apart from their sources under training."""
  m = small()
  params = perturbed(m)
  gaps = {}
  for noise in (0.0, 0.01):
    new_m, p, imap = growth.split_mlp(m, params, KEY, mlp_dim=96, noise=noise, with_index_map=True)
    src = imap["blocks"]["mlp"]["wi"]["w"].idx[3][64:]
    diff = lambda q: q["blocks"]["mlp"]["wi"]["w"][..., 64:] - q["blocks"]["mlp"]["wi"]["w"][..., src]
    trained = _train(new_m, p, 10)
    # at the split; and how far training moved copies and sources apart (their updates' difference)
    gaps[noise] = (float(jnp.abs(diff(p)).max()), float(jnp.abs(diff(trained) - diff(p)).max()))
  assert gaps[0.0] == (0.0, 0.0)  # identical at the split, and identical updates: identical after 10 steps
  assert 0 < gaps[0.01][0] < 0.01 and gaps[0.01][1] > 1e-4  # a small start, then different updates
  new_m, p = growth.split_mlp(m, params, KEY, mlp_dim=96, noise=0.01)
  np.testing.assert_allclose(logits(new_m, p, TOKENS), logits(m, params, TOKENS), atol=0.05)  # not exact, close


def test_a_gate_fades_new_layers_in_exactly():
  """Transformer.hidden's gate (MSG's mask): g = 0 is the identity for that layer, bit for bit, so G↑random's fresh
  layers at m = 0 compute the small model; g = 1 is the block itself, bit for bit."""
  m = small()
  params = perturbed(m)
  new_m, new_params = growth.g_random(m, params, KEY, num_layers=5)
  net = nnx.merge(model.abstract(new_m)[0], new_params)
  small_x = nnx.merge(model.abstract(m)[0], params).hidden(TOKENS)
  np.testing.assert_array_equal(net.hidden(TOKENS, gate=jnp.array([1, 1, 1, 0, 0.])), small_x)
  np.testing.assert_array_equal(net.hidden(TOKENS, gate=jnp.ones(5)), net.hidden(TOKENS))
  half = net.hidden(TOKENS, gate=jnp.array([1, 1, 1, 0.5, 0.5]))
  assert not np.allclose(half, small_x, atol=1e-4) and not np.allclose(half, net.hidden(TOKENS), atol=1e-4)
  ramp = growth.Ramp(start=10, steps=4, new=(False, False, False, True, True))
  assert [list(np.asarray(growth.layer_gate(ramp, t))) for t in (10, 11, 14, 20)] == [
      [1, 1, 1, 0, 0], [1, 1, 1, 0.25, 0.25], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
  # what the steps apply: a depth ramp has no width mask, no ramp neither (the steps compile as without growth)
  assert growth.ramp_at(ramp, 11)[1] is None and growth.masked_params(ramp, new_params, 0.5) is new_params
  assert growth.ramp_at(None, 11) == (None, None) and growth.masked_params(None, new_params, None) is new_params


@pytest.mark.parametrize("events, message", [
    (({"step": 5, "op": "expand_d_model", "d_model": 48, "ramp_steps": 3},), "expand_d_model's new hidden dims have "
                                                                             "no mask"),
    (({"step": 5, "op": "split_mlp", "mlp_dim": 96, "ramp_steps": 3},), "already compute the small model's function"),
    (({"step": 5, "op": "g_random", "num_layers": 4, "ramp_steps": 3},
      {"step": 7, "op": "stack", "g": 2}), "falls inside event 0's mask ramp"),
    (({"step": 5, "op": "g_random", "num_layers": 4, "ramp_steps": -1},), "ramp_steps=-1 must be an integer >= 0"),
])
def test_bad_ramps(events, message):
  c = cfg_lib.base()
  c.model = small()
  c.train.steps = 20
  c.growth.events = events
  with pytest.raises(ConfigError, match=message) as e:
    growth.plan(c)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("event, new", [
    ({"op": "g_random", "num_layers": 5}, (False,) * 3 + (True,) * 2),
    ({"op": "stack", "g": 2}, (False,) * 3 + (True,) * 3),  # MSG's copies: the repeats fade in
    ({"op": "g_zero", "g": 2}, (False, True) * 3),
    ({"op": "insert_layers", "at": [1]}, (False, True, False, False)),
])
def test_the_ramp_fades_in_the_layers_each_operator_adds(event, new):
  c = cfg_lib.base()
  c.model = small()
  c.train.steps = 20
  c.growth.events = ({"step": 5, "ramp_steps": 4, **event},)
  assert growth.plan(c)[1].ramp == growth.Ramp(5, 4, new)
  c.growth.events = ({"step": 5, **event},)
  assert growth.plan(c)[1].ramp is None


WIDTH_EVENTS = {"expand_mlp": {"op": "expand_mlp", "mlp_dim": 96},
                "add_heads": {"op": "add_heads", "num_heads": 8, "num_kv_heads": 4}}  # 2 heads per group: new groups
# What the mask scales, per op: (param path, axis, new indices) of the grown `small()` (64 units; heads (g, r) at
# 2g + r, groups 2 and 3 new).
WIDTH_MASKED = {
    "expand_mlp": [(("blocks", "mlp", "wi", "w"), 3, (False,) * 64 + (True,) * 32)],
    "add_heads": [(("blocks", "attn", "wq", "w"), 2, (False,) * 4 + (True,) * 4),
                  (("blocks", "attn", "wk", "w"), 2, (False,) * 2 + (True,) * 2),
                  (("blocks", "attn", "wv", "w"), 2, (False,) * 2 + (True,) * 2)]}
WRITE = {"expand_mlp": (("blocks", "mlp", "down", "w"), 1), "add_heads": (("blocks", "attn", "wo", "w"), 1)}


def _width_ramp(op, **model_change):
  c = cfg_lib.base()
  c.model, c.train.steps = small(**model_change), 20
  event = {"step": 5, "ramp_steps": 4, **WIDTH_EVENTS[op]}
  c.growth.events = (event,)
  return c, event, growth.plan(c)[1].ramp


def _leaf(tree, path):
  return functools.reduce(lambda t, k: t[k], path, tree)


def _path(keys):
  return tuple(k.key for k in keys)


def _along(flags, axis, ndim):
  """Per-index flags shaped to broadcast along `axis` of an ndim array."""
  return np.asarray(flags).reshape([-1 if a == axis else 1 for a in range(ndim)])


@pytest.mark.parametrize("op", sorted(WIDTH_EVENTS))
def test_a_width_ramp_masks_the_new_units_inputs(op):
  """MSG's width mask (ramp_steps on expand_mlp, add_heads): the new units' write rows are fresh (MSG's random new
  entries) and the columns that feed them × m in the step: at m = 0 the small model's logits, in between those
  columns × m and nothing else, from the ramp's end the grown model bit for bit; the layers have no gate."""
  c, event, ramp = _width_ramp(op)
  assert not any(ramp.new) and [(p, a, n) for p, a, n in ramp.masked] == WIDTH_MASKED[op]
  params = perturbed(c.model)
  new_m, grown = growth.apply(c.model, params, op, growth.event_args(event), KEY)
  write, axis = WRITE[op]
  new_rows = np.asarray(WIDTH_MASKED[op][0][2])
  assert float(jnp.abs(jnp.take(_leaf(grown, write), np.flatnonzero(new_rows), axis)).min()) > 0  # not 0
  at = lambda step: growth.masked_params(ramp, grown, growth.ramp_at(ramp, step)[1])
  assert growth.ramp_at(ramp, 5)[0] is None  # no layer gate
  _assert_same(logits(c.model, params, TOKENS), logits(new_m, at(5), TOKENS))  # m = 0 on the first step after
  half = at(7)  # m = 2/4
  for path, axis, new in ramp.masked:
    scale = np.where(_along(new, axis, _leaf(grown, path).ndim), 0.5, 1.0)
    np.testing.assert_array_equal(_leaf(half, path), _leaf(grown, path) * scale)  # old columns bit for bit
  masked_paths = {p for p, _, _ in ramp.masked}
  flat = lambda t: {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  for path, x in flat(half).items():
    if path not in masked_paths:
      np.testing.assert_array_equal(x, flat(grown)[path])
  for step in (9, 30):  # from start + T on: the grown model itself
    jax.tree.map(np.testing.assert_array_equal, at(step), grown)
  assert not np.allclose(logits(new_m, half, TOKENS), logits(c.model, params, TOKENS), atol=1e-4)
  c.growth.events = ({k: v for k, v in event.items() if k != "ramp_steps"},)  # no ramp: Gesmundo's exact zeros
  assert growth.plan(c)[1].ramp is None and "fresh_write" not in growth.event_args(c.growth.events[0])


def _msg_mlp(m, p, x_BTD, mask_F):
  """MSG's FFN mask written out (github.com/cofe-ai/MSG, model_ex/bert_ex_v2.py, BertIntermediateEx.forward):
  act(dense(x) · mask), the mask on every new unit's pre-activation; SwiGLU's gate and up are both the input
  projection's outputs (prts' MsgLayer on w1 and w2): silu(m·g)·(m·u)."""
  D, F = m.d_model, p["down"]["w"].shape[0]
  a_in, a_down = _mult(m, D), _mult(m, F)
  h_BTCF = a_in * jnp.einsum("btd,dcf->btcf", x_BTD, p["wi"]["w"]) * mask_F
  h_BTF = jax.nn.silu(h_BTCF[:, :, 0]) * h_BTCF[:, :, 1] if m.mlp == "swiglu" else jax.nn.gelu(h_BTCF[:, :, 0])
  return a_down * jnp.einsum("btf,fd->btd", h_BTF, p["down"]["w"])


def _msg_attention(m, p, x_BTD, mask_H, mask_G):
  """MSG's head mask written out (bert_ex_v2.py, BertSelfAttentionEx.forward): q, k and v × the mask, nothing on the
  heads' output, so a new head adds m·softmax(m²·s)·v through W_O; causal, grouped-query, RoPE."""
  D, (H, K), G = m.d_model, p["wq"]["w"].shape[1:], p["wk"]["w"].shape[1]
  a = _mult(m, D)
  q_BTHK = a * jnp.einsum("btd,dhk->bthk", x_BTD, p["wq"]["w"]) * mask_H[:, None]
  k_BTGK = a * jnp.einsum("btd,dgk->btgk", x_BTD, p["wk"]["w"]) * mask_G[:, None]
  v_BTGK = a * jnp.einsum("btd,dgk->btgk", x_BTD, p["wv"]["w"]) * mask_G[:, None]
  q_BTHK, k_BTGK = model.rope(q_BTHK, m.rope_theta), model.rope(k_BTGK, m.rope_theta)
  q_BTGRK = q_BTHK.reshape(*q_BTHK.shape[:2], G, H // G, K) * munit.query_multiplier(m, K)
  s_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BTGK) / K**0.5
  T = x_BTD.shape[1]
  s_BGRTS = jnp.where(np.tril(np.ones((T, T), bool)), s_BGRTS, -jnp.inf)
  out_BTHK = jnp.einsum("bgrts,bsgk->btgrk", jax.nn.softmax(s_BGRTS, -1), v_BTGK).reshape(q_BTHK.shape)
  return _mult(m, H * K) * jnp.einsum("bthk,hkd->btd", out_BTHK, p["wo"]["w"])


def _mult(m, fan_in):  # μS's static multiplier of a hidden linear (1 under SP)
  return munit.multiplier(m, "hidden", fan_in)


@pytest.mark.parametrize("op, change", [
    ("expand_mlp", {"mlp": "gelu"}), ("expand_mlp", {"mlp": "swiglu"}), ("expand_mlp", {"parametrization": "mus"}),
    ("add_heads", {}), ("add_heads", {"parametrization": "mus", "mus": {"attn_scale": "inv"}}),
])
def test_the_width_mask_is_msgs_mask_on_the_new_units_projections(op, change):
  """The parameter mask in the step (growth.masked_params on the new columns of W_in; W_Q, W_K, W_V) against MSG's
  masks written out on the projections' outputs: gelu(m·h) (SwiGLU: silu(m·g)·(m·u)); a new head's q, k, v × m.
  Value and every gradient (parameters, input) agree at m = 0.5 and m = 0 (where the new units add nothing); masking
  the write rows instead (the output, linear in m) fails this at m = 0.5."""
  mus = change.pop("mus", {})
  c, event, ramp = _width_ramp(op, **change)
  c.model.mus.update(mus)
  params = perturbed(c.model)
  new_m, grown = growth.apply(c.model, params, op, growth.event_args(event), KEY)
  leaves, tree = jax.tree.flatten(grown)  # some steps into the ramp: the new heads' logits are no longer ≈ 0
  keys = jax.random.split(jax.random.key(4), len(leaves))
  grown = jax.tree.unflatten(tree, [w + 0.3 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)])
  branch = "mlp" if op == "expand_mlp" else "attn"
  make = model.Mlp if op == "expand_mlp" else model.Attention
  graphdef = nnx.split(make(new_m, out_std=new_m.init_std, rngs=nnx.Rngs(0)))[0]
  layer = lambda p, i=1: jax.tree.map(lambda w: w[i], p["blocks"][branch])
  x_BTD = jax.random.normal(jax.random.key(5), (2, 16, new_m.d_model))
  r_BTD = jax.random.normal(jax.random.key(6), x_BTD.shape)

  def ours(p, x_BTD, m):  # what the train step computes: the model's own module on the masked parameters
    return jnp.sum(nnx.merge(graphdef, layer(growth.masked_params(ramp, p, m)))(x_BTD) * r_BTD)

  def msg_out(p, x_BTD, m):
    masks = [jnp.where(np.asarray(new), m, 1.0) for _, _, new in WIDTH_MASKED[op]]  # the new units, heads, groups
    if op == "expand_mlp":
      return _msg_mlp(new_m, layer(p), x_BTD, masks[0])
    return _msg_attention(new_m, layer(p), x_BTD, masks[0], masks[1])

  msg = lambda p, x_BTD, m: jnp.sum(msg_out(p, x_BTD, m) * r_BTD)

  for m in (0.5, 0.0):
    a, b = (jax.value_and_grad(f, argnums=(0, 1))(grown, x_BTD, jnp.float32(m)) for f in (ours, msg))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5 * float(jnp.abs(y).max()) + 1e-7),
                 a, b)
  # at m = 0 the new units add nothing: the same as their write rows at 0 (Gesmundo's exact expansion)
  write, axis = WRITE[op]
  new_rows = _along(WIDTH_MASKED[op][0][2], axis, _leaf(grown, write).ndim)
  zeroed = jax.tree_util.tree_map_with_path(lambda k, w: jnp.where(new_rows, 0.0, w) if _path(k) == write else w,
                                            grown)
  _assert_same(msg_out(zeroed, x_BTD, 1.0), msg_out(grown, x_BTD, 0.0))
  # the mask on the write rows (the new units' output, linear in m) is another function at m = 0.5
  halved = jax.tree_util.tree_map_with_path(lambda k, w: jnp.where(new_rows, 0.5 * w, w) if _path(k) == write
                                            else w, grown)
  added = msg_out(grown, x_BTD, 0.5) - msg_out(zeroed, x_BTD, 1.0)  # what the new units add at m = 0.5
  gap = msg_out(halved, x_BTD, 1.0) - msg_out(grown, x_BTD, 0.5)
  assert float(jnp.abs(gap).max()) > 0.05 * float(jnp.abs(added).max())


def test_msgs_head_mask_needs_new_kv_groups_and_no_qk_norm():
  """MSG masks a new head's k and v: heads that join an old group share its k and v with the old heads, and
  QK-norm divides m out of q and k; both refused under ramp_steps, in one line, with the fix."""
  for model_change, ev, message in (
      ({}, {"op": "add_heads", "num_heads": 6}, r"join old kv groups.*num_heads = 2·num_kv_heads"),
      ({"num_kv_heads": 1}, {"op": "add_heads", "num_heads": 8}, "join old kv groups"),  # MQA: one group
      ({"qk_norm": True}, {"op": "add_heads", "num_heads": 8, "num_kv_heads": 4}, "QK-norm undoes MSG's mask")):
    c = cfg_lib.base()
    c.model, c.train.steps = small(**model_change), 20
    c.growth.events = ({"step": 5, "ramp_steps": 4, **ev},)
    with pytest.raises(ConfigError, match=message) as e:
      growth.plan(c)
    assert "\n" not in str(e.value)
    c.growth.events = ({"step": 5, **ev},)  # Gesmundo's exact expansion, no mask: fine
    assert growth.plan(c)[1].ramp is None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, call, message", [
    ({}, lambda m, p: growth.add_heads(m, p, KEY, num_heads=6, num_kv_heads=4), "not a multiple of num_kv_heads"),
    ({}, lambda m, p: growth.add_heads(m, p, KEY, num_heads=7), "not a multiple"),
    ({}, lambda m, p: growth.add_heads(m, p, KEY, num_heads=4, num_kv_heads=4), "fewer than the model's 2"),
    ({}, lambda m, p: growth.stack(m, p, layer_map=[0, 3]), r"layer indices in \[0, 3\)"),
    ({}, lambda m, p: growth.stack(m, p, layer_map=[]), "non-empty"),
    ({}, lambda m, p: growth.stack(m, p, g=2, layer_map=[0]), "exactly one of g"),
    ({}, lambda m, p: growth.expand_head_dim(m, p, KEY, head_dim=12), "under RoPE"),
    ({}, lambda m, p: growth.expand_head_dim(m, p, KEY, head_dim=9, exact=False), "must be even"),
    ({}, lambda m, p: growth.expand_mlp(m, p, KEY, mlp_dim=64), "must exceed"),
    ({}, lambda m, p: growth.insert_layers(m, p, KEY, at=[4]), r"positions in \[0, 3\]"),
    ({}, lambda m, p: growth.grow_opt_state("keep", (), {}, {}), "not one of"),
    (dict(norm=dict(placement="post")), lambda m, p: growth.g_zero(m, p, g=2), "identity only for"),
    (dict(norm=dict(placement="res_post")), lambda m, p: growth.insert_layers(m, p, KEY, at=[0]), "identity only"),
    (dict(norm=dict(kind="layernorm")), lambda m, p: growth.expand_d_model(m, p, KEY, d_model=48), "rmsnorm"),
    (dict(norm=dict(placement="peri", out_norm_scale=False)),
     lambda m, p: growth.expand_d_model(m, p, KEY, d_model=48), "out_norm_scale"),
])
def test_bad_input(change, call, message):
  m = small(**change)
  params = jax.eval_shape(lambda: model.init(m, jax.random.key(0)))  # refused before any array is touched
  with pytest.raises(ConfigError, match=message) as e:
    call(m, params)
  assert "\n" not in str(e.value)


def test_g_learn_starts_at_g_stack_and_fits_its_operator():
  """G↑learn (LiGO's depth operator): with no steps it is G_stack; its steps lower the grown model's loss."""
  m = small()
  params = perturbed(m)
  tokens = jax.random.randint(jax.random.key(5), (4, 17), 0, 64)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  repeat = lambda n: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), batch)
  stack_m, stacked = growth.stack(m, params, g=2)
  same_m, same = growth.g_learn(m, params, repeat(0), g=2, fit_steps=0)
  assert same_m == stack_m
  jax.tree.map(np.testing.assert_array_equal, same, stacked)
  learned = jax.jit(lambda p, b: growth.g_learn(m, p, b, g=2, fit_steps=30, fit_lr=1e-2)[1])(params, repeat(30))

  def loss(p):
    return float(losses.cross_entropy(logits(stack_m, p, batch["inputs"]), batch["targets"])[0])

  assert loss(learned) < loss(stacked) - 0.05
  assert jax.tree.map(jnp.shape, learned) == jax.tree.map(jnp.shape, stacked)


def test_the_package_is_below_the_trainer():
  """jaxtrain.growth imports neither the trainer nor its offline tool (which imports the trainer): no cycle."""
  code = ("import sys, jaxtrain.growth as g; "
          "print(sorted(m for m in sys.modules if m in ('jaxtrain.train', 'jaxtrain.step', 'jaxtrain.growth.offline')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]"
  assert set(growth.__all__) >= {"plan", "Phase", "phase_at", "event_errors", "learn_steps", "grow_state", "total_flops",
                                 "apply", "op_args", "check", *growth.OPERATORS}


# ---------------------------------------------------------------- the growth study's verdicts and report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "experiments", "growth")


@functools.lru_cache(maxsize=None)
def study():
  from jaxtrain import report  # pylint: disable=import-outside-toplevel
  return report.load_module(os.path.join(STUDY, "run.py"), "growth_study_run")


def fake_study(gaps: dict, speedups: dict | None = None, jumps: dict | None = None):
  """Per-seed measurements as run.py's `measure` gives them, from each run's loss gaps (and speed-ups, event jumps)."""
  n = len(next(iter(gaps.values())))
  speedups, jumps = speedups or {}, jumps or {}
  ops = {"stack4_x25": "stack", "zero4_x25": "g_zero", "random4_x25": "g_random", "width_x25": "expand_mlp",
         "random4_x25_nomask": "g_random"}
  per = []
  for i in range(n):
    finals = {r: {"speedup": speedups.get(r, [0.1] * n)[i], "gap_at_end": g[i], "loss_at_end": 1.5 + g[i],
                  "flops": 1.0} for r, g in gaps.items()}
    runs = {r: {"run": r, "label": r, "status": "ok", "events": [
        {"op": ops[r], "step": 10, "ramp_steps": 4, "before": 2.0, "after": 2.0 + jumps.get(r, [0.0] * n)[i]}]}
        for r in gaps}
    per.append({"budget": 1.0, "runs": runs, "speedups": {"eval": [{"runs": finals}]}})
  return per


def verdict_of(per, claim):
  rows = {a: c for a, _, c in study().verdicts(per)}
  return str(rows[study().cfg.CLAIMS[claim]])


@pytest.mark.parametrize("gaps, label", [
    ([-0.10, -0.12, -0.09], "yes"),  # beats scratch: the 95% interval lies below 0
    ([0.10, 0.12, 0.09], "no"),  # worse: it lies above 0
    ([-0.10, 0.10, 0.01], "within seed noise"),
    ([-0.02, -0.04, -0.005], "within seed noise"),  # mean + sd < 0, but the t-interval (n = 3) holds 0
    ([-0.10, -0.12], "not judged (2 seeds, needs 3)"),  # fewer than three seeds: no verdict
])
def test_study_verdict_on_g_stack_comes_out_every_way(gaps, label):
  assert verdict_of(fake_study({"stack4_x25": gaps}), "stack") == label


@pytest.mark.parametrize("gaps, label", [([0.05, 0.06, 0.04], "yes"), ([-0.05, -0.06, -0.04], "no"),
                                         ([-0.05, 0.06, 0.0], "within seed noise")])
def test_study_verdict_on_g_random_comes_out_every_way(gaps, label):
  """The paper: G↑random (MSG-masked) is worse than scratch, a positive gap."""
  assert verdict_of(fake_study({"random4_x25": gaps}), "random") == label


@pytest.mark.parametrize("zero, speedups, label", [
    ([-0.1, -0.1, -0.1], [0.30, 0.32, 0.31], "yes"),  # beats scratch, speed-up within 10 points of G_stack's 0.3
    ([-0.1, -0.1, -0.1], [0.60, 0.62, 0.61], "partly"),  # beats scratch, but not ≈ G_stack
    ([0.1, 0.1, 0.1], [0.60, 0.62, 0.61], "no"),
])
def test_study_verdict_on_g_zero_comes_out_every_way(zero, speedups, label):
  per = fake_study({"stack4_x25": [-0.1] * 3, "zero4_x25": zero},
                   speedups={"stack4_x25": [0.3] * 3, "zero4_x25": speedups})
  assert verdict_of(per, "zero") == label


@pytest.mark.parametrize("gaps, label", [([-0.1, -0.1, -0.11], "no"), ([0.1, 0.1, 0.11], "yes"),
                                         ([-0.1, 0.1, 0.0], "yes (within seed noise)")])
def test_study_verdict_on_width_comes_out_every_way(gaps, label):
  assert verdict_of(fake_study({"width_x25": gaps}), "width") == label


@pytest.mark.parametrize("zero_jump, label", [(0.0, "yes"), (0.5, "partly")])
def test_study_verdict_on_function_preservation(zero_jump, label):
  per = fake_study({"stack4_x25": [0.1] * 3, "zero4_x25": [0.1] * 3, "random4_x25": [0.1] * 3},
                   jumps={"stack4_x25": [0.3] * 3, "zero4_x25": [zero_jump] * 3, "random4_x25": [0.0] * 3})
  assert verdict_of(per, "fp") == label


def test_study_report_regenerates_byte_identically_from_summary(tmp_path):
  """`run.py --report-only` with the runs gone rebuilds the committed report from results/summary.json alone."""
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copy(os.path.join(STUDY, "results", "summary.json"), tmp_path / "summary.json")
  subprocess.run([sys.executable, os.path.join(STUDY, "run.py"), "--report-only", "--seeds", "3", "--out",
                  str(tmp_path), "--runs-dir", str(tmp_path / "no_runs")], check=True, capture_output=True,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=ROOT)
  with open(os.path.join(STUDY, "results", "report.md"), encoding="utf-8") as fh:
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == fh.read()
  with open(os.path.join(STUDY, "results", "summary.json"), encoding="utf-8") as fh:
    assert (tmp_path / "summary.json").read_text(encoding="utf-8") == fh.read()
