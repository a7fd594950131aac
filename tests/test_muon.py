"""Muon (optim.name=muon, jaxtrain/muon.py): which tensors are matrices and how they are read; one update and
several steps against a numpy reference (Newton–Schulz quintic with Keller Jordan's coefficients, Nesterov
momentum, AdamW on the rest); the same update on a mesh; a short run learns; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import model, muon, optim, preflight, train

ONE = jax.devices()[:1]
A, B, C = 3.4445, -4.7750, 2.0315  # Keller Jordan's quintic (https://github.com/KellerJordan/Muon)


def ns_reference(g):
  """Keller Jordan's zeropower_via_newtonschulz5, in float64: Frobenius-normalize, 5 quintic steps, short side."""
  x = g / (np.linalg.norm(g) + 1e-8)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  for _ in range(5):
    a = x @ x.T
    x = A * x + (B * a + C * a @ a) @ x
  return x.T if tall else x


def as_matrices(name, w):
  """The 2-D matrices (fan-in × fan-out) of one tensor, written out per name: per layer, q/k/v [D, H·K], o
  [H·K, D], SwiGLU's gate and up apart; a function putting such a list back into `w`'s shape."""
  L = w.shape[0]
  if name in ("wq", "wk", "wv"):
    return [w[l].reshape(w.shape[1], -1) for l in range(L)], lambda ms: np.stack(ms).reshape(w.shape)
  if name == "wo":
    return [w[l].reshape(-1, w.shape[-1]) for l in range(L)], lambda ms: np.stack(ms).reshape(w.shape)
  if name == "wi":
    return ([w[l][:, c] for l in range(L) for c in range(w.shape[2])],
            lambda ms: np.stack(ms).reshape(L, w.shape[2], w.shape[1], w.shape[3]).transpose(0, 2, 1, 3))
  if name == "down":
    return [w[l] for l in range(L)], np.stack
  raise AssertionError(name)


def muon_reference(c, params, grads, steps):
  """Parameters after `steps` updates (constant η, no clipping) of Muon as its authors define it, in numpy."""
  o = c.optim
  info = {jax.tree_util.keystr(k): i for k, i in
          jax.tree_util.tree_leaves_with_path(model.param_info(c.model), is_leaf=model.is_info)}
  p = {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  g = {k: np.asarray(v, np.float64) for k, v in
       ((jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(grads))}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  beta, b1, b2, eps, lam, eta = o.muon.beta, 0.9, 0.95, 1e-8, o.weight_decay, o.lr
  base = optim.base_model(c.model, c.model.mus.d_base)
  base_fan_in = {jax.tree_util.keystr(k): i.fan_in for k, i in
                 jax.tree_util.tree_leaves_with_path(model.param_info(base), is_leaf=model.is_info)}
  for t in range(1, steps + 1):
    for k in p:
      role, name = info[k].role, k.split("'")[-4] if k.endswith("['w']") else None
      if role == "hidden":
        m[k] = beta * m[k] + (1 - beta) * g[k]
        # Nesterov: the gradient plus β times the updated momentum (optax's bias correction of each term)
        nest = beta * m[k] / (1 - beta ** (t + 1)) + (1 - beta) * g[k] / (1 - beta ** t)
        mats, back = as_matrices(name, nest)
        scale = {"moonlight": lambda a, b: 0.2 * np.sqrt(max(a, b)),
                 "keller": lambda a, b: np.sqrt(max(1, b / a)), "none": lambda a, b: 1.0}[o.muon.scale]
        u = back([ns_reference(x) * scale(*x.shape) for x in mats])
        rate = eta * o.muon.lr_scale * (np.sqrt(base_fan_in[k] / info[k].fan_in) if o.lr_rule == "mus" else 1.0)
      else:  # AdamW
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
        u = (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
        rate = eta
      decay = lam if role != "norm" else 0.0
      if o.weight_decay_mode == "coupled":
        p[k] = p[k] - rate * (u + decay * p[k])
      else:
        p[k] = p[k] * (1 - decay) - rate * u
  return p


def tree_of(c, seed=1):
  _, _, axes = model.abstract(c.model)
  params = model.init(c.model, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  grads = treedef.unflatten([jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
  return params, grads, axes


def run_tx(c, params, grads, axes, steps):
  tx, _ = optim.make(c, axes)
  state, p = tx.init(params), params
  update = jax.jit(lambda g, s, p, t: tx.update(g, s, p, step=t))
  for t in range(steps):
    u, state = update(grads, state, p, jnp.int32(t))
    p = optax.apply_updates(p, u)
  return p


def muon_config(tiny, **kw):
  fields = dict(optim__name="muon", optim__lr=0.02, optim__clip_norm=0.0, optim__warmup_steps=0,
                optim__schedule="constant", optim__weight_decay=0.01, model__num_kv_heads=2,
                model__tie_embeddings=False)
  return tiny(**(fields | kw))


def test_hidden_tensors_are_read_as_per_layer_matrices(tiny):
  """q/k/v [L, D, H, K] are L matrices D × H·K, o [L, H, K, D] L matrices H·K × D, SwiGLU's wi [L, D, 2, F] 2L
  matrices D × F (gate and up apart), down [L, F, D] L matrices F × D; embedding, head and norms are not Muon's."""
  c = muon_config(tiny)
  _, abstract, axes = model.abstract(c.model)
  got = optim.muon_matrices(model.param_info(c.model), abstract, axes)
  D, H, G, K, F = 32, 4, 2, 8, 64
  attn, mlp = got["blocks"]["attn"], got["blocks"]["mlp"]
  assert attn["wq"]["w"] == muon.Matrix(rows=(1,), cols=(2, 3), fan_in=D, fan_out=H * K)
  assert attn["wk"]["w"] == attn["wv"]["w"] == muon.Matrix(rows=(1,), cols=(2, 3), fan_in=D, fan_out=G * K)
  assert attn["wo"]["w"] == muon.Matrix(rows=(1, 2), cols=(3,), fan_in=H * K, fan_out=D)
  assert mlp["wi"]["w"] == muon.Matrix(rows=(1,), cols=(3,), fan_in=D, fan_out=F)  # axes 0 (layer), 2 (gate/up): batch
  assert mlp["down"]["w"] == muon.Matrix(rows=(1,), cols=(2,), fan_in=F, fan_out=D)
  assert got["embed"] is None and got["head"]["w"] is None
  assert got["blocks"]["attn_norm"]["scale"] is None and got["final_norm"]["scale"] is None


@pytest.mark.parametrize("fields", [
    {},                                                                          # moonlight, coupled decay
    {"optim__muon__scale": "keller", "optim__muon__lr_scale": 4.0, "optim__lr_rule": "mus",
     "model__mus__d_base": 16, "optim__weight_decay_mode": "independent"},        # keller, μS rates, decoupled
    {"optim__muon__scale": "none", "optim__muon__beta": 0.9},
])
def test_updates_equal_the_reference(tiny, fields):
  """One update, then three, equal the numpy reference for every parameter: per-layer Newton–Schulz of the
  Nesterov momentum on the hidden matrices (gate and up apart), AdamW on embedding, head and norms, per-group
  rates and decay. A reference that orthogonalized a stacked [L, ...] tensor as one matrix would fail."""
  c = muon_config(tiny, **fields)
  params, grads, axes = tree_of(c)
  for steps in (1, 3):
    got = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
           jax.tree_util.tree_leaves_with_path(run_tx(c, params, grads, axes, steps))}
    want = muon_reference(c, params, grads, steps)
    before = {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    assert sorted(got) == sorted(want)
    for k in want:  # float32 against float64: within a thousandth of the largest move
      moved = np.abs(want[k] - before[k]).max()
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-3 * moved, err_msg=k)


def test_first_update_is_keller_jordans():
  """At step 1 optax's bias-corrected Nesterov momentum points where Keller's (buf ← lerp(buf, g, 1−β),
  u ← lerp(g, buf, β)) does, so the orthogonalized update is his exactly."""
  g = np.random.default_rng(0).normal(size=(16, 24))
  beta = 0.95
  buf = (1 - beta) * g
  keller = ns_reference((1 - beta) * g + beta * buf)
  mu = (1 - beta) * g
  ours = ns_reference(beta * mu / (1 - beta ** 2) + (1 - beta) * g / (1 - beta))
  np.testing.assert_allclose(ours, keller, rtol=1e-6, atol=1e-7)  # up to the 1e-8 in the normalization


def test_update_scales_by_hand():
  assert muon.update_scale("moonlight", 256, 1024) == pytest.approx(0.2 * 32)
  assert muon.update_scale("keller", 256, 1024) == pytest.approx(2.0)
  assert muon.update_scale("keller", 1024, 256) == 1.0
  assert muon.update_scale("none", 3, 5) == 1.0
  # Moonlight's point: an orthogonal update's RMS is 1/√max(m, n), so 0.2·√max(m, n) makes it 0.2, AdamW's level
  q = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 16)))[0]
  assert np.sqrt(np.mean((q * muon.update_scale("moonlight", 64, 16)) ** 2)) == pytest.approx(0.2)


def test_muon_on_a_mesh_equals_one_device(tiny):
  """Muon's update jitted on an FSDP×TP mesh of 8 devices equals one device's: the per-layer matrices and the
  masked AdamW/Muon groups do not depend on the sharding."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py simulates them)")
  c = muon_config(tiny)
  from test_optim import updates_on_one_device_and_a_mesh  # pylint: disable=import-outside-toplevel
  want, got, _ = updates_on_one_device_and_a_mesh(c, *tree_of(c), step=3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_muon_run_learns_and_resumes(tiny, tmp_path):
  """A short run through the trainer: the loss falls well below ln 256, the checkpoint's optimizer state (Muon's
  momentum beside AdamW's moments) restores."""
  c = tiny(optim__name="muon", train__steps=20, optim__lr=1e-2)
  summary = train.train(c, str(tmp_path), devices=ONE)
  from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  losses = [r["loss"] for r in read_metrics(str(tmp_path)) if "loss" in r]
  assert losses[0] > 5.0 and losses[-1] < losses[0] - 1.5, losses
  assert summary["step"] == 20
  c.train.steps = 25  # resume from step 20's checkpoint
  assert train.train(c, str(tmp_path), devices=ONE)["step"] == 25


@pytest.mark.parametrize("overrides, error", [
    ({"optim.muon.scale": "adam"}, r"optim.muon.scale='adam' is not one of \('moonlight', 'keller', 'none'\)"),
    ({"optim.muon.beta": 1.0}, r"optim.muon.beta=1.0 must be in \[0, 1\)"),
    ({"optim.muon.ns_steps": 0}, r"optim.muon.ns_steps=0 must be positive"),
    ({"optim.muon.lr_scale": 0.0}, r"optim.muon.lr_scale=0.0 must be positive"),
    ({"growth.events": '({"step": 5, "op": "stack", "g": 2},)'}, r"optim.name=muon cannot grow the model mid-run"),
])
def test_bad_muon_settings_are_one_line_errors(tiny, overrides, error):
  c = tiny(optim__name="muon", train__steps=1000)
  for k, v in overrides.items():
    cfg_lib.set_field(c, k, str(v))
  with pytest.raises(cfg_lib.ConfigError, match=error) as e:
    preflight.validate(c, 1)
  assert "\n" not in str(e.value)


def test_a_parameter_with_no_role_is_a_one_line_error(tiny, monkeypatch):
  """A parameter whose ParamInfo has no role cannot be put in Muon's or AdamW's group: refused before compiling,
  naming it."""
  declared = model.param_info

  def without_role(m):
    info = declared(m)
    info["blocks"]["mlp"]["down"]["w"] = model.ParamInfo(None, 64)
    return info

  monkeypatch.setattr(model, "param_info", without_role)
  c = tiny(optim__name="muon")
  with pytest.raises(cfg_lib.ConfigError, match=r"parameter blocks/mlp/down/w has no optimizer role \(None\)") as e:
    preflight.validate(c, 1)
  assert "\n" not in str(e.value)
