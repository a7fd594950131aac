"""StableMax, the float64 loss region, Softmax Collapse metrics and ⊥Grad (arXiv 2501.04697)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import collapse, losses, stablemax
from jaxtrain.orthograd import orthograd, project

C = 113  # the paper's number of classes
# Jitted: one compile per call site instead of one per eager op (the tests stay fast on 2 cores).
collapse_stats = jax.jit(losses.collapse_stats, static_argnames=("output", "dtype"))
softmax_ce = jax.jit(losses.softmax_cross_entropy, static_argnames="dtype")
stablemax_ce = jax.jit(losses.stablemax_cross_entropy, static_argnames="dtype")


def one_high(gaps, classes=C):
  """Rows with logit 0 equal to `gap` and every other logit 0."""
  z = np.zeros((len(gaps), classes), np.float32)
  z[:, 0] = gaps
  return jnp.asarray(z)


# ---------------------------------------------------------------- s(x) and StableMax


def test_s_values_and_derivative():
  x = jnp.array([-3.0, -1.0, -0.0, 0.0, 1.0, 3.0])
  np.testing.assert_allclose(stablemax.s(x), [0.25, 0.5, 1, 1, 2, 4], rtol=1e-7)
  ds = jax.vmap(jax.grad(stablemax.s))(x)
  np.testing.assert_allclose(ds, [1 / 16, 0.25, 1, 1, 1, 1], rtol=1e-7)  # C¹ at 0


def test_s_edges_are_finite():
  # x = 1 would divide by zero in the unselected branch 1/(1-x): the double where keeps the gradient finite.
  x = jnp.array([-jnp.inf, -1e38, -1e30, 1.0, 1e30, 1e38])
  y, ds = stablemax.s(x), jax.vmap(jax.grad(stablemax.s))(x)
  assert np.all(np.isfinite(ds)) and not np.any(np.isnan(y))
  np.testing.assert_array_equal(ds[3:], [1, 1, 1])
  assert y[0] == 0 and y[1] >= 0 and np.isclose(y[2], 1e-30, rtol=1e-6)


def test_stablemax_probabilities_and_ties():
  z = jnp.array([[2.0, -1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [1e6, -1e6, 0.0, 3.0]])
  p = stablemax.stablemax(z)
  np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)
  assert p[0, 2] == p[0, 3] and p[0, 0] > p[0, 2] > p[0, 1]  # monotone, ties equal
  np.testing.assert_allclose(p[1], 0.25)
  assert np.all(p > 0)  # no probability underflows to 0, even at -1e6


@pytest.mark.parametrize("gap,expected", [(10, 2.41), (40, 1.32), (1e3, 0.106), (1e6, 1.1e-4)])
def test_stablemax_loss_decays_like_one_over_gap(gap, expected):
  # -log((g+1)/(g+1+112)) = log(1 + 112/(g+1)); expected values at 113 classes (one logit at g, 112 at 0).
  exact = np.log1p((C - 1) / (gap + 1))
  got = stablemax_ce(one_high([gap]), jnp.array([0]), dtype=jnp.float64)
  np.testing.assert_allclose(got, exact, rtol=1e-6)
  np.testing.assert_allclose(got, expected, rtol=0.02)


def test_float64_keeps_what_float32_rounds_away():
  gap, y = 1e9, jnp.array([0])
  exact = np.log1p((C - 1) / (gap + 1))                  # 1.12e-7
  f64 = stablemax_ce(one_high([gap]), y, dtype=jnp.float64)
  f32 = stablemax_ce(one_high([gap]), y, dtype=jnp.float32)
  np.testing.assert_allclose(f64, exact, rtol=1e-6)
  assert abs(float(f32[0]) - exact) > 1e-3 * exact     # float32 sums 1e9 + 112 to a multiple of 64
  # StableMax's loss is never exactly 0 in float64 at any sane gap; softmax's is at 60.
  assert stablemax_ce(one_high([1e12]), y, dtype=jnp.float64)[0] > 0
  assert softmax_ce(one_high([60.0]), y, dtype=jnp.float64)[0] == 0


def test_stablemax_gradient_matches_closed_form():
  z = np.random.default_rng(0).normal(size=(5, 7)) * 3
  y = np.array([0, 3, 6, 2, 2])
  g = jax.grad(lambda z: stablemax_ce(z, jnp.asarray(y)).sum())(jnp.asarray(z, jnp.float32))
  s = np.where(z < 0, 1 / (1 - np.minimum(z, 0)), z + 1)
  ds = np.where(z < 0, 1 / (1 - np.minimum(z, 0)) ** 2, 1.0)
  expected = ds / s.sum(-1, keepdims=True)
  expected[np.arange(5), y] -= ds[np.arange(5), y] / s[np.arange(5), y]
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- float64 inside a float32 program


def test_float64_loss_in_jitted_float32_step():
  """The loss region runs in float64; parameters and their gradients stay float32; x64 stays off."""
  assert not jax.config.x64_enabled
  w = jnp.asarray(np.random.default_rng(1).normal(size=(4, C)), jnp.float32)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)) * 8, jnp.float32)
  y = jnp.arange(6)

  def loss(w, output, dtype):
    return losses.cross_entropy(x @ w, y, output=output, dtype=dtype)[0]

  for output in losses.OUTPUTS:
    l64, g64 = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))(w, output, "float64")
    l32, g32 = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))(w, output, "float32")
    assert l64.dtype == g64.dtype == jnp.float32 and np.all(np.isfinite(g64))
    np.testing.assert_allclose(l64, l32, rtol=1e-5)
    np.testing.assert_allclose(g64, g32, rtol=1e-4, atol=1e-6)
  text = jax.jit(jax.grad(loss), static_argnums=(1, 2)).lower(w, "softmax", "float64").as_text()
  assert "f64" in text  # the region really is float64 (a silent float32 would pass the checks above)
  assert not jax.config.x64_enabled and jnp.ones(1).dtype == jnp.float32


def test_float64_gradient_is_more_precise():
  # Softmax at gap 20: float32's correct-class gradient 1/Σ - 1 is ≈ -1e-7 with a coarse ulp; float64 is exact.
  z, y = one_high([20.0]), jnp.array([0])
  exact = -(C - 1) * np.exp(-20.0) / (1 + (C - 1) * np.exp(-20.0))
  g64 = jax.grad(lambda z: softmax_ce(z, y, dtype=jnp.float64).sum())(z)
  np.testing.assert_allclose(g64[0, 0], exact, rtol=1e-6)


# ---------------------------------------------------------------- Softmax Collapse, by hand


def test_collapse_hand_computed():
  # Rows (113 classes, one logit at `gap`, the rest 0) and their labels:
  #   gap 10, label 0: Σ exp(z - max) = 1 + 112·e^-10 ≈ 1.005       -> no SC, loss ≈ 0.005
  #   gap 30, label 0: 112·e^-30 ≈ 1e-11 < 2^-24 (half ulp of 1)    -> SC, loss exactly 0
  #   gap 30, label 5: SC as well, but the loss is 30, not 0
  #   all ties:        Σ = 113                                      -> no SC, loss log 113
  z = one_high([10.0, 30.0, 30.0, 0.0])
  y = jnp.array([0, 0, 5, 0])
  np.testing.assert_array_equal(collapse.softmax_collapsed(z), [False, True, True, False])
  stats = collapse_stats(z, y)
  assert stats == {"sc_fraction": 0.5, "zero_loss_fraction": 0.25}
  ce = softmax_ce(z, y)
  np.testing.assert_allclose(ce, [np.log1p(112 * np.exp(-10.0)), 0, 30, np.log(C)], rtol=1e-5, atol=1e-6)
  assert ce[1] == 0
  # float64 (ulp 2^-52): gap 30 no longer collapses; gap 60 (112·e^-60 ≈ 1e-24) does.
  assert collapse_stats(z, y, dtype="float64") == {"sc_fraction": 0.0, "zero_loss_fraction": 0.0}
  z60 = one_high([60.0, 60.0])
  assert collapse_stats(z60, jnp.array([0, 1]), dtype="float64") == {
      "sc_fraction": 1.0, "zero_loss_fraction": 0.5}
  # StableMax does not collapse at these gaps, nor at 1e6.
  assert collapse_stats(one_high([30.0, 1e6]), jnp.array([0, 0]), output="stablemax")["sc_fraction"] == 0
  # The trainer's path gives the same numbers, over any leading shape (tokens of an LM).
  _, aux = losses.cross_entropy(z[None], y[None], collapse=True)
  assert (aux["sc_fraction"], aux["zero_loss_fraction"]) == (0.5, 0.25)


def test_cross_entropy_contract():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 11)) * 4, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 5)))
  loss, aux = losses.cross_entropy(logits, targets, z_loss=1e-4)
  assert set(aux) == {"ce", "z_loss", "accuracy", "log_z", "ce_sum", "tokens"}
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(aux["ce"], ref.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["log_z"], jax.nn.logsumexp(logits, -1).mean(), rtol=1e-6)
  np.testing.assert_allclose(loss, aux["ce"] + aux["z_loss"], rtol=1e-7)
  assert aux["tokens"] == 10 and np.isclose(aux["ce_sum"], 10 * aux["ce"])
  _, aux = losses.cross_entropy(logits, targets, output="stablemax", collapse=True)
  np.testing.assert_allclose(aux["ce"], stablemax.cross_entropy(logits, targets).mean(), rtol=1e-6)
  assert {"sc_fraction", "zero_loss_fraction"} <= set(aux)
  with pytest.raises(ValueError, match="output activation"):
    losses.cross_entropy(logits, targets, output="sparsemax")


# ---------------------------------------------------------------- weights and gradients


def test_norms_and_cosine():
  params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[0.0, 12.0]])}
  grads = {"a": jnp.array([-3.0, -4.0]), "b": jnp.array([[1.0, 0.0]])}
  total, per = collapse.weight_norms(params)
  assert total == 13 and per == {"a": 5, "b": 12}
  cos, per_cos = collapse.grad_weight_cosine(grads, params)
  np.testing.assert_allclose(per_cos["a"], -1, rtol=1e-6)   # descent -g grows a along itself: NLM
  np.testing.assert_allclose(per_cos["b"], 0, atol=1e-7)
  np.testing.assert_allclose(cos, -25 / (np.sqrt(26) * 13), rtol=1e-6)
  assert set(collapse.flatten(per, "weight_norm")) == {"weight_norm/a", "weight_norm/b"}
  # Gradients far below float32's squared range (the collapse regime): the cosine does not underflow.
  tiny = jax.tree.map(lambda g: g * 1e-24, grads)
  cos_tiny, per_tiny = jax.jit(collapse.grad_weight_cosine)(tiny, params)
  np.testing.assert_allclose(cos_tiny, cos, rtol=1e-5)
  np.testing.assert_allclose(per_tiny["a"], -1, rtol=1e-5)
  zero_cos, _ = collapse.grad_weight_cosine(jax.tree.map(jnp.zeros_like, grads), params)
  assert zero_cos == 0


# ---------------------------------------------------------------- ⊥Grad


def tree(seed, shapes=((3, 4), (5,), (2, 3, 2))):
  rng = np.random.default_rng(seed)
  return {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}


def test_orthograd_orthogonal_with_original_norm():
  params, grads = tree(0), tree(1)
  tx = orthograd()
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for k in params:
    g, w, o = (np.asarray(t[k], np.float64).ravel() for t in (grads, params, out))
    assert abs(o @ w) < 1e-5 * np.linalg.norm(o) * np.linalg.norm(w)
    np.testing.assert_allclose(np.linalg.norm(o), np.linalg.norm(g), rtol=1e-5)
    g_perp = g - (g @ w) / (w @ w) * w
    np.testing.assert_allclose(o, g_perp * np.linalg.norm(g) / np.linalg.norm(g_perp), rtol=1e-4, atol=1e-6)
  # Edge cases: zero weights leave the gradient as it is; a gradient along the weights vanishes.
  np.testing.assert_allclose(project(grads["p0"], jnp.zeros((3, 4))), grads["p0"])
  np.testing.assert_allclose(project(2 * params["p1"], params["p1"]), 0, atol=1e-5)


def test_orthograd_stacked_layers_project_each_layer():
  params, grads = tree(4, ((3, 5, 2), (4,))), tree(5, ((3, 5, 2), (4,)))
  tx = orthograd(stacked={"p0": True, "p1": False})
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for l in range(3):  # layer l of the stack is projected as a tensor of its own
    np.testing.assert_allclose(out["p0"][l], project(grads["p0"][l], params["p0"][l]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["p1"], project(grads["p1"], params["p1"]), rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e-19, 1e-20, 1e-25, 1e20])
def test_orthograd_tiny_gradients_match_float64(scale):
  """Gradients of any magnitude against a float64 reference: the float32 sums of squares used to underflow
  (1e-3 off at 1e-19, exactly 0 at 1e-20; XLA on CPU flushes subnormals); normalized first, they do not."""
  rng = np.random.default_rng(7)
  w, g = rng.normal(size=(64, 48)), rng.normal(size=(64, 48)) * scale
  g_perp = g - (g.ravel() @ w.ravel()) / (w.ravel() @ w.ravel()) * w
  want = g_perp * np.linalg.norm(g) / np.linalg.norm(g_perp)
  got = np.asarray(jax.jit(project)(jnp.asarray(g, jnp.float32), jnp.asarray(w, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # Tiny weights too: the projection does not depend on the scale of w.
  got_w = np.asarray(jax.jit(project)(jnp.asarray(g, jnp.float32), jnp.asarray(w * 1e-22, jnp.float32)), np.float64)
  np.testing.assert_allclose(got_w, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_orthograd_units_project_each_slice():
  """units=(0, 2) on a [L, D, 2, F] tensor (stacked SwiGLU [gate, up]): each (layer, gate|up) slice on its own."""
  params, grads = tree(8, ((3, 5, 2, 4), (6,))), tree(9, ((3, 5, 2, 4), (6,)))
  tx = orthograd(units={"p0": (0, 2), "p1": ()})
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for l in range(3):
    for i in range(2):
      np.testing.assert_allclose(out["p0"][l, :, i], project(grads["p0"][l, :, i], params["p0"][l, :, i]),
                                 rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["p1"], project(grads["p1"], params["p1"]), rtol=1e-6)
  # stacked=True is units (0,): the same as the layer-by-layer projection, and different from (0, 2).
  per_layer, _ = orthograd(stacked={"p0": True, "p1": False}).update(grads, optax.EmptyState(), params)
  np.testing.assert_allclose(per_layer["p0"], project(grads["p0"], params["p0"], units=(0,)), rtol=1e-6)
  assert float(jnp.abs(per_layer["p0"] - out["p0"]).max()) > 1e-2


def test_orthograd_composes_and_needs_params():
  params, grads = tree(0), tree(1)
  tx = optax.chain(optax.clip_by_global_norm(0.1), orthograd(), optax.adamw(1e-2, weight_decay=0.0))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
  # Clipping before or after gives the same result (⊥Grad keeps each tensor's norm).
  a = optax.chain(optax.clip_by_global_norm(0.1), orthograd())
  b = optax.chain(orthograd(), optax.clip_by_global_norm(0.1))
  ua, _ = jax.jit(a.update)(grads, a.init(params), params)
  ub, _ = jax.jit(b.update)(grads, b.init(params), params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), ua, ub)
  with pytest.raises(ValueError, match="needs the parameters"):
    orthograd().update(grads, optax.EmptyState())


def test_orthograd_fsdp_sharded_equals_single_device():
  """Under jit with FSDP-sharded parameters (8 simulated devices) the result equals one device's."""
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 devices (tests/conftest.py simulates them)")
  mesh = jax.sharding.Mesh(devices.reshape(8), ("fsdp",))
  P = jax.sharding.PartitionSpec
  shapes = ((16, 24), (8,), (4, 16, 3))
  specs = {"p0": P("fsdp", None), "p1": P("fsdp"), "p2": P(None, "fsdp", None)}
  params, grads = tree(2, shapes), tree(3, shapes)
  place = lambda t: {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, specs[k])) for k, v in t.items()}
  tx = orthograd()
  expected, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  sharded_params = place(params)
  assert sharded_params["p0"].addressable_shards[0].data.shape == (2, 24)  # really split 8 ways
  sharded, _ = jax.jit(tx.update)(place(grads), tx.init(params), sharded_params)
  for k in params:
    np.testing.assert_allclose(sharded[k], expected[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the language model's head


def test_lm_stablemax_float64_on_a_mesh_equals_one_device(tiny):
  """StableMax + float64 loss + collapse stats on the transformer LM: a DP·FSDP·TP mesh gives one device's numbers."""
  from flax import nnx
  from jaxtrain import model, sharding
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py simulates them)")
  m = tiny(model__vocab_size=64).model
  graphdef, _, axes = model.abstract(m)
  params = model.init(m, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 17)), jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  def loss_fn(params, batch):
    logits_BTV = nnx.merge(graphdef, params)(batch["inputs"])
    return losses.cross_entropy(logits_BTV, batch["targets"], output="stablemax", dtype="float64", collapse=True)

  step = jax.value_and_grad(loss_fn, has_aux=True)
  (l1, aux1), g1 = jax.jit(step)(params, batch)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
  with jax.set_mesh(mesh):
    placed = jax.device_put(params, sharding.shardings(mesh, axes))
    placed_batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None))))
    (l8, aux8), g8 = jax.jit(step)(placed, placed_batch)
  assert np.isfinite(l1) and aux1["sc_fraction"] == 0 and aux1["zero_loss_fraction"] == 0
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  np.testing.assert_allclose(aux8["accuracy"], aux1["accuracy"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), g8, g1)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g8))
