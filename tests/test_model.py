"""The transformer: shapes, causality, scan = unrolled, variants, and the FLOP formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import attention, flops, losses, model


def forward(m, params, tokens):
  graphdef = model.abstract(m)[0]
  return jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)


@pytest.fixture
def m():
  c = cfg_lib.base().model
  c.update(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=32)
  return c


def tokens(B=2, T=16, V=64, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


def test_shapes_and_parameter_layout(m):
  params = model.init(m, jax.random.key(0))
  assert forward(m, params, tokens()).shape == (2, 16, 64)
  b = params["blocks"]
  assert b["attn"]["wq"]["w"].shape == (3, 32, 4, 8)    # L, D, H, K
  assert b["attn"]["wk"]["w"].shape == (3, 32, 2, 8)    # L, D, G, K: grouped-query heads
  assert b["mlp"]["wi"]["w"].shape == (3, 32, 2, 64)
  _, abstract, axes = model.abstract(m)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)
  assert axes["blocks"]["attn"]["wq"]["w"] == ("layers", "embed", "heads", None)
  expected = 64 * 32 + 32 + 3 * (32 * 8 * (4 + 2 + 2) + 4 * 8 * 32 + 3 * 32 * 64 + 2 * 32)
  assert model.count_params(params) == expected


def test_causal(m):
  params = model.init(m, jax.random.key(0))
  x = tokens()
  y = x.at[:, 10:].set((x[:, 10:] + 1) % 64)  # change only the future of position 9
  a, b = forward(m, params, x), forward(m, params, y)
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
  assert not np.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_equals_unrolled(m, remat):
  params = model.init(m, jax.random.key(1))
  m.remat = remat
  scanned = forward(m, params, tokens())
  m.scan_layers = False
  np.testing.assert_allclose(scanned, forward(m, params, tokens()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [
    dict(mlp="gelu", norm=dict(kind="layernorm", eps=1e-5)), dict(qk_norm=True), dict(tie_embeddings=False),
    dict(num_kv_heads=None), dict(compute_dtype="bfloat16"), dict(head_dim=16),
    dict(parametrization="mus", tie_embeddings=False, norm=dict(placement="res_post")),
    dict(fp8="static", compute_dtype="bfloat16"), dict(fp8="delayed"),
    dict(parametrization="mus", tie_embeddings=False, norm=dict(placement="res_post"), fp8="static", remat="dots"),
])
def test_variants_run(m, change):
  m.update(change)
  params = model.init(m, jax.random.key(0))
  logits = forward(m, params, tokens())
  assert logits.shape == (2, 16, 64) and bool(jnp.isfinite(logits).all())
  assert logits.dtype == jnp.float32  # the LM head never rounds its output to the compute dtype


def test_default_matmul_is_the_plain_einsum():
  """sp and fp8=none add nothing to the program: the same jaxpr as the einsum in the compute dtype."""
  x, w = jnp.ones((2, 3, 8)), jnp.ones((8, 4, 2))
  for dtype in (jnp.float32, jnp.bfloat16):
    plain = jax.make_jaxpr(lambda x, w: jnp.einsum("btd,dhk->bthk", x.astype(dtype), w.astype(dtype)))(x, w)
    ours = jax.make_jaxpr(lambda x, w: model.matmul("btd,dhk->bthk", x, w, dtype))(x, w)
    assert str(ours) == str(plain)


def test_fp8_scan_equals_unrolled(m):
  """The FP8 linears and μS multipliers under lax.scan compute what the unrolled layers do, same parameters."""
  m.update(parametrization="mus", tie_embeddings=False, fp8="static")
  m.norm.placement = "res_post"
  params = model.init(m, jax.random.key(1))
  scanned = forward(m, params, tokens())
  m.scan_layers = False
  np.testing.assert_allclose(scanned, forward(m, params, tokens()), rtol=1e-5, atol=1e-5)


def test_init_is_seeded(m):
  a, b, c = (model.init(m, jax.random.key(s)) for s in (0, 0, 1))
  assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), a, b)))
  assert not np.allclose(a["blocks"]["attn"]["wq"]["w"], c["blocks"]["attn"]["wq"]["w"])


def test_initial_loss_is_log_vocab(m):
  params = model.init(m, jax.random.key(0))
  x, y = tokens(), tokens(seed=1)
  loss, aux = losses.cross_entropy(forward(m, params, x), y, z_loss=1e-4)
  assert abs(float(aux["ce"]) - np.log(64)) < 0.05
  np.testing.assert_allclose(loss, aux["ce"] + aux["z_loss"], rtol=1e-6)
  np.testing.assert_allclose(aux["z_loss"], 1e-4 * np.mean(np.asarray(jax.nn.logsumexp(
      forward(m, params, x), -1)) ** 2), rtol=1e-5)


def test_flop_formula_matches_xla_count(m):
  """Our forward FLOPs against XLA's own count of the compiled unrolled forward pass."""
  m.scan_layers = False
  T = 16
  graphdef = model.abstract(m)[0]
  params = model.init(m, jax.random.key(0))
  compiled = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)).lower(params, tokens(1, T)).compile()
  xla = compiled.cost_analysis()["flops"]
  ours = flops.forward_flops_per_token(m, T) * T
  # XLA counts full (not causal-halved) attention and the elementwise work; matmuls dominate.
  full_attention = m.num_layers * 2 * T * m.num_heads * cfg_lib.head_dim(m) * T
  assert 0.9 < xla / (ours + full_attention) < 1.25


def test_query_blocks_cover_the_sequence():
  assert attention.query_blocks(32) == [(0, 32)]  # blocks under 64 rows cost more than they save
  assert attention.query_blocks(128) == [(0, 64), (64, 128)]
  assert attention.query_blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
  assert attention.query_blocks(200) == [(0, 100), (100, 200)]
  assert attention.query_blocks(257) == [(0, 64), (64, 128), (128, 192), (192, 257)]


@pytest.mark.parametrize("G, T", [(4, 12), (2, 12), (1, 12), (2, 128), (1, 256), (2, 257)])
def test_attention_value_and_gradient_match_plain_softmax(G, T):
  """Every CPU kernel (value and gradient; the blocked one recomputes) equals autodiff of the textbook formula."""
  B, H, K = 2, 4, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (B, T, n, K)) * 2 for i, n in enumerate((H, G, G)))

  def plain(q, k, v):
    k, v = jnp.repeat(k, H // G, axis=2), jnp.repeat(v, H // G, axis=2)
    logits = jnp.einsum("bthk,bshk->bhts", q, k) / np.sqrt(K)
    logits = jnp.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits, -1), v), logits

  ref, logits = plain(q, k, v)
  ct = jax.random.normal(jax.random.key(9), ref.shape)
  ref_grads = jax.grad(lambda *a: jnp.sum(plain(*a)[0] * ct), argnums=(0, 1, 2))(q, k, v)
  for kind in ("blocked", "xla"):  # every kernel that runs on CPU
    out, max_logit = attention.causal(q, k, v, kind)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda *a: jnp.sum(attention.causal(*a, kind)[0] * ct), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    if kind == "blocked":
      np.testing.assert_allclose(max_logit, jnp.max(jnp.where(jnp.isfinite(logits), jnp.abs(logits), 0)), rtol=1e-6)
    else:
      assert np.isnan(max_logit)  # XLA's and cuDNN's kernels hide the logits



@pytest.mark.parametrize("dtype, alpha", [("float32", 1.0), ("float32", 0.3), ("bfloat16", 1.0)])
def test_swiglu_backward_pass_equals_autodiff(dtype, alpha):
  """`swiglu_in`'s hand-written backward pass: the value and dx bit for bit, the weight gradient to rounding."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 32)).astype(dtype)
  wi = (0.2 * jax.random.normal(jax.random.key(1), (32, 2, 48))).astype(dtype)
  ct = jax.random.normal(jax.random.key(2), (2, 16, 48)).astype(dtype)
  auto = lambda x, w: model.swiglu(jnp.einsum("btd,dcf->btcf", x, w) * alpha)
  out, vjp = jax.vjp(lambda x, w: model.swiglu_in(x, w, alpha), x, wi)
  ref, ref_vjp = jax.vjp(auto, x, wi)
  (dx, dw), (ref_dx, ref_dw) = vjp(ct), ref_vjp(ct)
  assert out.dtype == ref.dtype and dx.dtype == ref_dx.dtype and dw.dtype == ref_dw.dtype
  np.testing.assert_array_equal(out.astype(np.float32), ref.astype(np.float32))
  np.testing.assert_array_equal(dx.astype(np.float32), ref_dx.astype(np.float32))
  tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(dw.astype(np.float32), ref_dw.astype(np.float32), **tol)

def test_auto_attention_picks_the_platform_kernel():
  assert attention.kernel("auto", "float32", "cpu") == "blocked"
  assert attention.kernel("auto", "bfloat16", "gpu") == "cudnn"
  assert attention.kernel("auto", "float32", "gpu") == "xla"  # cuDNN's fused kernel needs 16-bit inputs
  assert attention.kernel("auto", "bfloat16", "tpu") == "splash"
  assert attention.kernel("xla", "float32", "cpu") == "xla"
