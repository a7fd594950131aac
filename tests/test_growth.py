"""Growth operators: function preservation to float32 rounding, the depth maps, the optimizer state, bad input."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import growth, losses, model, optim
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


@pytest.mark.parametrize("events, message", [
    (({"step": 5, "op": "expand_mlp", "mlp_dim": 96, "ramp_steps": 3},), "expand_mlp adds none"),
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
    ([-0.10, -0.12, -0.09], "yes"),  # beats scratch beyond the spread
    ([0.10, 0.12, 0.09], "no"),  # worse beyond the spread
    ([-0.10, 0.10, 0.01], "within the spread"),
    ([-0.10, -0.12], "not judged (2 seeds, needs 3)"),  # fewer than three seeds: no verdict
])
def test_study_verdict_on_g_stack_comes_out_every_way(gaps, label):
  assert verdict_of(fake_study({"stack4_x25": gaps}), "stack") == label


@pytest.mark.parametrize("gaps, label", [([0.05, 0.06, 0.04], "yes"), ([-0.05, -0.06, -0.04], "no"),
                                         ([-0.05, 0.06, 0.0], "within the spread")])
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
                                         ([-0.1, 0.1, 0.0], "yes (within the spread)")])
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
