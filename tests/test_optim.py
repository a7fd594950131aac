"""jaxtrain/optim.py: per-group learning rates (μS, SP), weight decay by role and mode, Lion, the schedule driven by
the train step (skips cannot make it lag), optim.schedule_steps, ⊥Grad's units in the optimizer, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import model, optim, sharding, train
from jaxtrain.orthograd import project

ONE = jax.devices()[:1]
ETA, LAM = 2.0**-7, 2.0**-13  # a one-step check of μS's rules (Table 2) by hand


def wide(d, **optim_fields):
  """A one-layer model of width d (mlp 4d, untied head, d_base 256) and an optimizer with no clipping or warmup."""
  c = cfg_lib.base()
  c.model.update(vocab_size=256, d_model=d, num_layers=1, num_heads=4, mlp_dim=4 * d, tie_embeddings=False)
  c.optim.update(lr=ETA, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=LAM)
  c.optim.update(optim_fields)
  return c


def ones_step(c, grad=1.0, steps=1):
  """Parameters of ones after `steps` updates with every gradient entry = `grad`; returns {path: array}."""
  _, abstract, axes = model.abstract(c.model)
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grad), params)
  tx, _ = optim.make(c, axes)
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(grads, state, params, step=jnp.int32(t))
    params = optax.apply_updates(params, updates)
  return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(params)}


def assert_each(got, want):
  """`want` maps every parameter path to its value (one number: all entries equal it exactly)."""
  assert sorted(got) == sorted(want), "parameters changed: extend this test's table"
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], np.full_like(got[k], v), err_msg=k)


# Parameter paths of `wide`'s model, grouped as the μS rules treat them.
QKVO_WI = [f"blocks/attn/{w}/w" for w in ("wq", "wk", "wv", "wo")] + ["blocks/mlp/wi/w"]  # fan-in d
DOWN = ["blocks/mlp/down/w"]                                                              # fan-in 4d
EMBED_HEAD = ["embed", "head/w"]
NORMS = ["blocks/attn_norm/scale", "blocks/mlp_norm/scale", "final_norm/scale"]


@pytest.mark.parametrize("d", [256, 1024])
def test_mus_one_step_by_hand_at_two_widths(d):
  """Lion, unit gradients, weights 1, η = 2⁻⁷, λ = 2⁻¹³, d_base = 256: hidden weights take η·√(fan_in at 256 /
  fan_in) and every decayed weight loses λ whatever its rate; norm gains take η and no decay (by hand, exact in
  float32)."""
  got = ones_step(wide(d, name="lion", lr_rule="mus", weight_decay_mode="independent"))
  if d == 256:   # the base width: every group takes η, the down projection (fan-in 1024 = its base fan-in) too
    hidden = down = 1 - 2**-7 - 2**-13
  else:          # fan-in 1024 vs 256 and 4096 vs 1024: η/2 (by hand: hidden 1 − 2⁻⁸ − 2⁻¹³)
    hidden = down = 1 - 2**-8 - 2**-13
  assert_each(got, {**{k: hidden for k in QKVO_WI}, **{k: down for k in DOWN},
                    **{k: 1 - 2**-7 - 2**-13 for k in EMBED_HEAD},  # by hand: other 1 − 2⁻⁷ − 2⁻¹³
                    **{k: 1 - 2**-7 for k in NORMS}})


def test_sp_rule_scales_every_group_by_d_base_over_d():
  got = ones_step(wide(1024, name="lion", lr_rule="sp", weight_decay=0.0))  # c = 256/1024 for all
  assert_each(got, {k: 1 - 2**-9 for k in QKVO_WI + DOWN + EMBED_HEAD + NORMS})


def test_coupled_decay_scales_with_each_groups_rate():
  """weight_decay_mode=coupled (AdamW's): p ← p − η·c·(u + λ·p); with mus, the hidden decay shrinks with c."""
  got = ones_step(wide(1024, name="lion", lr_rule="mus"))
  assert_each(got, {**{k: 1 - 2**-8 * (1 + 2**-13) for k in QKVO_WI}, **{k: 1 - 2**-8 * (1 + 2**-13) for k in DOWN},
                    **{k: 1 - 2**-7 * (1 + 2**-13) for k in EMBED_HEAD}, **{k: 1 - 2**-7 for k in NORMS}})


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_norm_gains_and_biases_are_never_decayed(mode):
  """Zero gradients: only weight decay moves anything. Matrices shrink, norm gains and biases (LayerNorm,
  QK-norm, final norm) stay exactly as they were."""
  c = wide(256, weight_decay=0.5, weight_decay_mode=mode)
  c.model.update(qk_norm=True)
  c.model.norm.kind = "layernorm"
  got = ones_step(c, grad=0.0)
  norms = [k for k in got if any(part.endswith("norm") for part in k.split("/"))]
  assert len(norms) == 10  # scale and bias of the attn, mlp, q, k and final norms
  for k in norms:
    np.testing.assert_array_equal(got[k], 1.0, err_msg=k)
  decayed = 1 - 0.5 * (ETA if mode == "coupled" else 1.0)
  for k in QKVO_WI + DOWN + EMBED_HEAD:
    np.testing.assert_allclose(got[k], decayed, rtol=1e-7, err_msg=k)


def tiny_tree(c):
  """(params, grads, axes) of the tests' tiny model: random weights and gradients."""
  _, _, axes = model.abstract(c.model)
  params = model.init(c.model, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  grads = treedef.unflatten([jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
  return params, grads, axes


def test_lion_matches_a_hand_computed_lion(tiny):
  """Three Lion steps (β from the paper: 0.9, 0.99) with fully decoupled decay against numpy, on the tiny model."""
  c = tiny(optim__name="lion", optim__lr=1e-2, optim__weight_decay=1e-3, optim__weight_decay_mode="independent",
           optim__clip_norm=0.0, optim__warmup_steps=2, optim__schedule="constant")
  params, grads, axes = tiny_tree(c)
  tx, lr = optim.make(c, axes)
  state, p = tx.init(params), params
  want = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  mask = {k: i.role != "norm" for k, i in jax.tree_util.tree_leaves_with_path(model.param_info(c.model),
                                                                              is_leaf=model.is_info)}
  mu = {k: 0.0 for k in want}
  g = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(grads)}
  for t in range(3):
    updates, state = tx.update(grads, state, p, step=jnp.int32(t))
    p = optax.apply_updates(p, updates)
    eta = [0.0, 0.5e-2, 1e-2][t]  # linear warmup over 2 steps, then constant
    for k in want:
      u = np.sign(0.1 * g[k] + 0.9 * mu[k])
      mu[k] = 0.99 * mu[k] + 0.01 * g[k]
      want[k] = want[k] * (1 - 1e-3 * eta / 1e-2 * mask[k]) - eta * u
  for k, v in jax.tree_util.tree_leaves_with_path(p):
    np.testing.assert_allclose(v, want[k], rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(k))


def test_default_optimizer_is_optax_adamw_on_matrices(tiny):
  """Default config: the same updates, bit for bit, as optax.adamw with decay on matrices (jaxtrain before μS)."""
  c = tiny()
  params, grads, axes = tiny_tree(c)
  tx, lr = optim.make(c, axes)
  matrices = jax.tree.map(lambda a: sum(n != "layers" for n in a) >= 2, axes, is_leaf=sharding.is_axes)
  ref = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=matrices))
  s, r, p, q = tx.init(params), ref.init(params), params, params
  for t in range(3):
    u, s = tx.update(grads, s, p, step=jnp.int32(t))
    v, r = ref.update(grads, r, q)
    p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
  jax.tree.map(np.testing.assert_array_equal, p, q)


def test_applied_learning_rate_is_the_logged_one_after_skipped_steps(tiny):
  """on_nonfinite=skip keeps the optimizer state; the applied learning rate must still follow state["step"].

  Three NaN steps are skipped during warmup (lr 0, 1/5, 2/5, 3/5 of peak at steps 0..3), then a good step:
  Adam's first update has |m̂/√v̂| = 1, so max |Δw| is the applied rate. Before the fix it was the rate of
  the optimizer's own frozen count (step 0: zero) while the log said 3/5 of peak.
  """
  c = tiny(train__on_nonfinite="skip", optim__weight_decay=0.0, optim__clip_norm=0.0)
  prog = train.build(c, sharding.make_mesh(preflight.validate(c, 1), ONE))
  tok = jax.random.randint(jax.random.key(0), (c.train.global_batch, c.data.seq_len + 1), 0, 256)
  batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:]}
  state = prog.init(jax.random.key(0))
  good = jax.device_get(state["params"])
  state["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(np.nan)
  for _ in range(3):
    state, m = prog.train_step(state, batch)
    assert not bool(m["finite"])
  state["params"] = jax.device_put(good, jax.tree.map(lambda x: x.sharding, state["params"]))
  state, m = prog.train_step(state, batch)
  assert bool(m["finite"]) and int(state["step"]) == 4
  logged = float(m["learning_rate"])
  assert logged == pytest.approx(3 / 5 * c.optim.lr)
  w0, w1 = good["blocks"]["attn"]["wq"]["w"], np.asarray(state["params"]["blocks"]["attn"]["wq"]["w"])
  np.testing.assert_allclose(np.abs(w1 - w0).max(), logged, rtol=1e-3)


def test_schedule_steps_keeps_the_curve_when_train_steps_grow(tiny):
  """optim.schedule_steps: a run continued from 100 to 200 steps keeps the 100-step cosine, then its floor."""
  short = tiny(train__steps=100, optim__warmup_steps=10)
  longer = tiny(train__steps=200, optim__warmup_steps=10, optim__schedule_steps=100)
  reshaped = tiny(train__steps=200, optim__warmup_steps=10)
  axes = model.abstract(short.model)[2]
  lr_short, lr_long, lr_reshaped = (optim.make(c, axes)[1] for c in (short, longer, reshaped))
  t = jnp.arange(101)
  np.testing.assert_array_equal(lr_long(t), lr_short(t))
  np.testing.assert_allclose(lr_long(jnp.arange(100, 200)), 0.1 * short.optim.lr, rtol=1e-6)  # min_lr_ratio · lr
  assert float(lr_reshaped(100)) > 3 * float(lr_short(100))  # without it, the curve is reshaped mid-run
  assert optim.schedule_length(longer) == 100 and optim.schedule_length(reshaped) == 200
  assert train.build(longer, sharding.make_mesh(preflight.validate(longer, 1), ONE)).lr_schedule(150) == lr_long(150)


def test_orthograd_in_the_optimizer_projects_each_parameter(tiny):
  """optim.orthograd: ⊥Grad per layer of the stacked blocks and, in SwiGLU's fused wi, gate and up each on
  their own (the official unit: one parameter), then the same AdamW."""
  c = tiny()
  params, grads, axes = tiny_tree(c)
  units = optim.projection_units(axes)
  assert units["blocks"]["mlp"]["wi"]["w"] == (0, 2) and units["blocks"]["attn"]["wq"]["w"] == (0,)
  assert units["embed"] == ()
  c.optim.orthograd = True
  tx_perp, _ = optim.make(c, axes)
  c.optim.orthograd = False
  tx, _ = optim.make(c, axes)
  got, _ = tx_perp.update(grads, tx_perp.init(params), params, step=jnp.int32(3))
  wi, g_wi = params["blocks"]["mlp"]["wi"]["w"], grads["blocks"]["mlp"]["wi"]["w"]  # [L, D, 2, F]
  flags = model.stacked(axes)
  by_hand = jax.tree.map(lambda g, w, s: jax.vmap(project)(g, w) if s else project(g, w), grads, params, flags)
  by_hand["blocks"]["mlp"]["wi"]["w"] = jnp.stack(
      [jnp.stack([project(g_wi[l, :, i], wi[l, :, i]) for i in range(2)], axis=1) for l in range(wi.shape[0])])
  for l in range(wi.shape[0]):  # gate and up: each orthogonal to its own weights, with its own norm kept
    for i in range(2):
      h, w = np.asarray(by_hand["blocks"]["mlp"]["wi"]["w"][l, :, i]), np.asarray(wi[l, :, i])
      assert abs(np.vdot(h, w)) < 1e-5 * np.linalg.norm(h) * np.linalg.norm(w)
      np.testing.assert_allclose(np.linalg.norm(h), np.linalg.norm(g_wi[l, :, i]), rtol=1e-5)
  want, _ = tx.update(by_hand, tx.init(params), params, step=jnp.int32(3))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, want)
  whole = jax.vmap(project)(g_wi, wi)  # the old unit, [gate; up] as one vector, gives another update
  assert float(jnp.abs(whole - by_hand["blocks"]["mlp"]["wi"]["w"]).max()) > 1e-3


def test_update_without_the_step_is_an_error(tiny):
  c = tiny()
  params, grads, axes = tiny_tree(c)
  tx, _ = optim.make(c, axes)
  with pytest.raises(ValueError, match=r"needs the train step"):
    tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("overrides, error", [
    ({"optim.name": "lion", "optim.eps": 1e-8}, r"optim.eps=1e-08: Lion has no ε"),
    ({"optim.name": "sgd"}, r"optim.name='sgd' is not one of \('adamw', 'lion', 'muon'\)"),
    ({"optim.lr_rule": "mup"}, r"optim.lr_rule='mup' is not one of"),
    ({"optim.weight_decay_mode": "independent", "optim.weight_decay": 1.0}, r"λ must be < 1"),
    ({"optim.weight_decay_mode": "decoupled"}, r"optim.weight_decay_mode='decoupled' is not one of"),
    ({"optim.schedule_steps": -1}, r"optim.schedule_steps=-1 must be >= 0"),
    ({"optim.schedule_steps": 50, "optim.warmup_steps": 60}, r"warmup_steps=60 exceeds optim.schedule_steps=50"),
    ({"optim.eps": 0.0}, r"optim.eps=0.0 must be positive"),
    ({"optim.b2": 1.0}, r"optim.b2=1.0 must be in \[0, 1\)"),
])
def test_bad_optimizer_settings_are_one_line_errors(tiny, overrides, error):
  c = tiny(train__steps=1000)
  for k, v in overrides.items():
    cfg_lib.set_field(c, k, str(v))
  with pytest.raises(cfg_lib.ConfigError, match=error):
    preflight.validate(c, 1)


def test_lion_defaults_and_cli_fields(tiny):
  c = tiny(optim__name="lion")
  preflight.validate(c, 1)
  assert optim.hyper(c.optim) == {"b1": 0.9, "b2": 0.99}
  assert optim.hyper(tiny().optim) == {"b1": 0.9, "b2": 0.95, "eps": 1e-8}
  assert optim.hyper(tiny(optim__name="lion", optim__b2=0.98).optim)["b2"] == 0.98


def test_mus_lion_orthograd_on_a_mesh_equals_one_device(tiny):
  """The whole μS optimizer (clipping, ⊥Grad per parameter, Lion, per-group rates, independent decay), jitted on
  an FSDP×TP mesh of 8 devices, gives one device's update: the groups do not depend on the sharding."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py simulates them)")
  c = tiny(optim__name="lion", optim__lr_rule="mus", optim__weight_decay=1e-3, optim__weight_decay_mode="independent",
           optim__orthograd=True, model__mus__d_base=16)
  params, grads, axes = tiny_tree(c)
  want, got, p8 = updates_on_one_device_and_a_mesh(c, params, grads, axes, step=7)
  assert p8["blocks"]["mlp"]["wi"]["w"].addressable_shards[0].data.size < params["blocks"]["mlp"]["wi"]["w"].size // 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, want)


def updates_on_one_device_and_a_mesh(c, params, grads, axes, step: int):
  """(one device's update, the update jitted on an FSDP 4 × TP 2 mesh of 8 devices, the params placed there) of
  config c's optimizer at `step`, from a fresh state."""
  tx, _ = optim.make(c, axes)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, step=jnp.int32(step)))
  want, _ = update(grads, tx.init(params), params)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
  with jax.set_mesh(mesh):
    place = lambda t: jax.device_put(t, sharding.shardings(mesh, axes))
    p8 = place(params)
    got, _ = update(place(grads), tx.init(p8), p8)
  return want, got, p8
