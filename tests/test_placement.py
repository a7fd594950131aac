"""Norm placement: each wiring against its formula, Mix-LN's split, LNS's factor, the diagnostics,
and every placement on the 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import analysis, diagnostics, losses, model, placement, sharding, train

from jaxtrain.placement import PLACEMENTS


def small(placement_, **kw):
  m = cfg_lib.base().model
  m.update({**dict(vocab_size=64, d_model=32, num_layers=4, num_heads=4, mlp_dim=64), **kw})
  m.norm.placement = placement_
  return m


def rms(x, scale, eps=1e-6):  # written out again, independent of model.Norm
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


@pytest.mark.parametrize("kind", ["pre", "post", "peri", "lns", "res_post"])
def test_block_matches_its_formula(kind):
  m = small("peri" if kind == "peri" else "pre")
  block = model.Block(ml_collections_frozen(m), rngs=nnx.Rngs(0))
  for norm in (block.attn_norm, block.mlp_norm, block.attn_out_norm, block.mlp_out_norm):
    if norm is not None:  # non-trivial scales, so a wrong norm cannot hide
      norm.scale[...] = 1 + 0.1 * jax.random.normal(jax.random.key(7), norm.scale.shape)
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 8, 32)))
  layer, tau = 2, 0.5
  f_a, f_m = (lambda v: np.asarray(block.attn(jnp.asarray(v)))), (lambda v: np.asarray(block.mlp(jnp.asarray(v))))
  g = {k: np.asarray(getattr(block, k).scale[...]) for k in ("attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm")
       if getattr(block, k) is not None}
  if kind == "pre":
    h = x + f_a(rms(x, g["attn_norm"]))
    y = h + f_m(rms(h, g["mlp_norm"]))
  elif kind == "post":
    h = rms(x + f_a(x), g["attn_norm"])
    y = rms(h + f_m(h), g["mlp_norm"])
  elif kind == "peri":
    h = x + rms(f_a(rms(x, g["attn_norm"])), g["attn_out_norm"])
    y = h + rms(f_m(rms(h, g["mlp_norm"])), g["mlp_out_norm"])
  elif kind == "lns":
    c = 1 / np.sqrt(layer + 1)  # 1-based ℓ = layer + 1
    h = x + f_a(c * rms(x, g["attn_norm"]))
    y = h + f_m(c * rms(h, g["mlp_norm"]))
  else:
    h = np.sqrt(1 - tau) * x + np.sqrt(tau) * rms(f_a(x), g["attn_norm"])
    y = np.sqrt(1 - tau) * h + np.sqrt(tau) * rms(f_m(h), g["mlp_norm"])
  np.testing.assert_allclose(block(jnp.asarray(x), layer, kind), y, rtol=2e-5, atol=2e-5)


def ml_collections_frozen(m):
  import ml_collections  # pylint: disable=import-outside-toplevel
  return ml_collections.FrozenConfigDict(m)


@pytest.mark.parametrize("L, alpha, k", [(12, 0.25, 3), (24, 0.25, 6), (32, 0.0625, 2), (4, 0.25, 1), (3, 0.25, 0),
                                         (10, 0.0, 0), (10, 1.0, 10), (7, 1 / 3, 2), (100, 0.29, 29), (50, 0.58, 29)])
def test_mix_ln_split(L, alpha, k):
  kinds = placement.layer_kinds("mix", L, alpha)
  assert kinds == ["post"] * k + ["pre"] * (L - k)
  segs = placement.segments(kinds)
  assert sum(e - s for _, s, e in segs) == L and all(a[2] == b[1] for a, b in zip(segs, segs[1:]))


@pytest.mark.parametrize("L, alpha, count, k", [(24, 0.33, None, 7), (24, 0.33, 8, 8), (12, 0.25, 0, 0),
                                                (12, 0.0, 12, 12), (32, 0.25, 2, 2)])
def test_mix_ln_split_by_count(L, alpha, count, k):
  """The official POST_NUM as a count overrides α: the paper's "33%" of 24 layers is 8, which α = 0.33 floors to 7."""
  assert placement.layer_kinds("mix", L, alpha, count) == ["post"] * k + ["pre"] * (L - k)
  assert placement.layer_kinds("pre", L, alpha, count) == ["pre"] * L  # only Mix-LN reads it


@pytest.mark.parametrize("count, ok", [(None, True), (0, True), (4, True), (5, False), (-1, False)])
def test_mix_post_layers_is_checked_against_the_depth(tiny, count, ok):
  c = tiny(model__num_layers=4, model__norm__placement="mix")
  c.model.norm.mix_post_layers = count
  if ok:
    preflight.validate(c, 1)
  else:
    with pytest.raises(cfg_lib.ConfigError, match=rf"model.norm.mix_post_layers={count} must be in \[0, "):
      preflight.validate(c, 1)


def test_model_reads_mix_post_layers():
  """A count of 2 Post-LN layers is the model α = 0.4 gives on 5 layers; a count of 1 is another model."""
  def hidden(**norm):
    m = small("mix", num_layers=5)
    m.norm.update(norm)
    return model.Transformer(m, rngs=nnx.Rngs(0)).hidden(jnp.arange(16).reshape(2, 8))
  by_alpha = hidden(mix_post_fraction=0.4)
  np.testing.assert_array_equal(hidden(mix_post_fraction=0.0, mix_post_layers=2), by_alpha)
  assert not np.allclose(hidden(mix_post_fraction=0.4, mix_post_layers=1), by_alpha)


@pytest.mark.parametrize("placement_", PLACEMENTS)
def test_scanned_stack_matches_a_layer_by_layer_loop(placement_):
  """The model's scans (one per run of equal wiring) against explicit per-layer application."""
  m = small(placement_, num_layers=5)
  m.norm.mix_post_fraction = 0.4  # Mix-LN: 2 Post-LN layers, then 3 Pre-LN
  tm = model.Transformer(m, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 64)
  block_def, block_params = nnx.split(tm.blocks)
  x = tm.embed[...][tokens]
  for l, kind in enumerate(placement.layer_kinds(placement_, 5, 0.4)):
    x = nnx.merge(block_def, jax.tree.map(lambda a: a[l], block_params))(x, l, kind)
  np.testing.assert_allclose(tm.hidden(tokens), x, rtol=1e-5, atol=1e-5)


def test_lns_scale_per_layer():
  """Layer ℓ's branch sees its norm output times 1/√ℓ (ℓ 1-based), with ℓ a traced scan index."""
  identity = lambda v: v  # noqa: E731

  def body(_, layer):  # x + f(N(x)·c) with f = N = identity and x = 1 gives 1 + c
    return None, placement.residual("lns", jnp.ones(()), identity, identity, layer=layer) - 1.0

  _, scale = jax.lax.scan(body, None, jnp.arange(6))
  np.testing.assert_allclose(scale, 1 / np.sqrt(np.arange(1, 7)), rtol=1e-6)


def test_peri_frozen_output_scale_and_embedding_norm():
  m = small("peri")
  m.norm.update(out_norm_scale=False, embed_norm=True)
  params = model.init(m, jax.random.key(0))
  assert "attn_out_norm" not in params["blocks"] or not params["blocks"]["attn_out_norm"]
  assert "embed_norm" in params and params["embed_norm"]["scale"].shape == (32,)
  m.norm.out_norm_scale = True
  assert model.init(m, jax.random.key(0))["blocks"]["attn_out_norm"]["scale"].shape == (4, 32)


def test_layer_statistics_match_direct_computation():
  m = small("pre")
  tm = model.Transformer(m, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 64)
  x, stats = tm.hidden(tokens, collect=True, keep_states=True)
  states = np.asarray(stats["states"])
  assert states.shape == (5, 2, 8, 32)
  np.testing.assert_allclose(states[-1], x, rtol=1e-6)
  np.testing.assert_allclose(stats["resid_var"], states[1:].var(-1).mean((1, 2)), rtol=1e-4)
  np.testing.assert_allclose(stats["resid_max_abs"], np.abs(states[1:]).max((1, 2, 3)), rtol=1e-6)
  # max attention logit of layer 0, recomputed from its q and k
  block0 = tm.blocks  # stacked; recompute layer 0 by hand
  bd, bp = nnx.split(block0)
  b = nnx.merge(bd, jax.tree.map(lambda a: a[0], bp))
  h = b.attn_norm(jnp.asarray(states[0]))
  q = model.rope(b.attn.wq(h), m.rope_theta)
  k = model.rope(b.attn.wk(h), m.rope_theta)
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(8)
  causal = np.tril(np.ones((8, 8), bool))
  np.testing.assert_allclose(stats["attn_max_logit"][0], np.abs(logits)[..., causal].max(), rtol=1e-5)


def test_per_layer_grad_norm_and_angular_distance():
  g = {"a": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones((3, 2, 2))}
  expected = [np.sqrt(np.sum(np.arange(12.0).reshape(3, 4)[l] ** 2) + 4) for l in range(3)]
  np.testing.assert_allclose(diagnostics.per_layer_norm(g), expected, rtol=1e-6)
  a, b = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]])
  np.testing.assert_allclose(analysis.angular_distance(a, b), [0.25], rtol=1e-6)  # 45° = π/4 -> 1/4
  np.testing.assert_allclose(analysis.angular_distance(a, jnp.zeros((1, 2))), [0.5])  # undefined -> 0.5
  states = jax.random.normal(jax.random.key(0), (4, 2, 5, 3))
  A = analysis.stream_distances(states, last_token=False)
  s = np.asarray(states)
  cos = (s[0] * s[2]).sum(-1) / np.linalg.norm(s[0], axis=-1) / np.linalg.norm(s[2], axis=-1)
  np.testing.assert_allclose(A[1, 0], np.mean(np.arccos(cos) / np.pi), rtol=1e-5)
  assert np.isnan(A[2, 1]) and not np.isnan(A[2, 0])


def test_skip_drop_against_removing_the_layer():
  m = small("pre")
  params = model.init(m, jax.random.key(0))
  graphdef = model.abstract(m)[0]
  x = np.asarray(jax.random.randint(jax.random.key(4), (2, 9), 0, 64))
  batches = [{"inputs": x[:, :-1], "targets": x[:, 1:]}]
  base, drop = analysis.layer_skip_drops(graphdef, params, batches, 4)
  # layer 2 removed by hand: a 3-layer model with the other layers' parameters
  m3 = small("pre", num_layers=3)
  p3 = dict(params, blocks=jax.tree.map(lambda a: a[np.array([0, 1, 3])], params["blocks"]))
  without_2 = analysis.eval_loss(model.abstract(m3)[0], p3, batches)
  np.testing.assert_allclose(base + drop[2], without_2, rtol=1e-5)
  assert np.all(drop != 0)
  # The loss is the run's: StableMax in float64 gives the library's StableMax cross-entropy.
  logits = nnx.merge(graphdef, params)(x[:, :-1])
  want = float(losses.stablemax_cross_entropy(logits, x[:, 1:], dtype=jnp.float64).mean())
  got = analysis.eval_loss(graphdef, params, batches, output="stablemax", dtype="float64")
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert abs(got - base) > 1e-3


# Placements change the wiring, not the parameters or their shardings: pre, post, lns and res_post
# have Pre-LN's parameters; mix (two scans) and peri (extra norms) are the ones that could differ.
@pytest.mark.parametrize("placement_", ["mix", "peri"])
def test_placements_on_the_mesh(tiny, placement_):
  c = tiny(**{"model__norm.placement": placement_, "model__num_layers": 4, "model__vocab_size": 64,
              "train__global_batch": 16, "optim__warmup_steps": 1})
  rng = np.random.default_rng(0)
  x = rng.integers(0, 64, (16, 33), dtype=np.int32)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}

  def losses(mesh_shape, devices):
    mesh = sharding.make_mesh(mesh_shape, devices)
    prog = train.build(c, mesh)
    state = prog.init(jax.random.key(0))
    out = []
    for _ in range(2):
      state, metrics = prog.diagnostics_step(state, sharding.host_to_global(batch, mesh))
      out.append(float(metrics["loss"]))
    return out, np.asarray(metrics["layers/grad_norm"])

  one, g1 = losses({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  eight, g8 = losses({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  np.testing.assert_allclose(eight, one, rtol=2e-5)
  np.testing.assert_allclose(g8, g1, rtol=1e-4)


def test_diagnostics_over_microbatches_keep_maxima(tiny):
  """With gradient accumulation, max |activation| and max attention logit are maxima over the whole batch."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 33), dtype=np.int32)
  x[1::2, :] = 7  # row j·M + m goes to microbatch m: microbatch 1 is all repeated tokens, unlike microbatch 0
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
  got = {}
  for m in (1, 2):
    c = tiny(train__microbatches=m)
    prog = train.build(c, sharding.make_mesh(preflight.validate(c, 1), jax.devices()[:1]))
    _, metrics = prog.diagnostics_step(prog.init(jax.random.key(0)), batch)
    got[m] = jax.device_get(metrics)
  for k in ("layers/resid_max_abs", "layers/attn_max_logit", "loss", "layers/grad_norm"):
    np.testing.assert_allclose(got[2][k], got[1][k], rtol=1e-4, err_msg=k)
