"""FP8 linears (jaxtrain/fp8.py): saturating casts, numerics against float32, the static gradient scale, delayed
scaling's state, the health probes, and (with the CUDA plugin) real FP8 GEMMs in the program compiled for an H100."""

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
from jaxtrain import preflight
from jaxtrain import compile as aot
from jaxtrain import fp8, model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATIC = fp8.Recipe("static")


def rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("dtype, big", [(fp8.E4M3, 448.0), (fp8.E5M2, 57344.0)])
def test_saturating_cast_is_finite_where_a_plain_cast_is_not(dtype, big):
  x = jnp.array([1e6, -1e6, 1024.0, 61440.0, 1e30, -big, 1.0], jnp.float32)
  q = fp8.saturate(x, dtype).astype(jnp.float32)
  assert bool(jnp.all(jnp.isfinite(q)))
  np.testing.assert_array_equal(q, [big, -big, min(1024.0, big), min(61440.0, big), big, -big, 1.0])
  assert not bool(jnp.all(jnp.isfinite(x.astype(dtype).astype(jnp.float32))))  # why we clip: NaN (E4M3), Inf (E5M2)


def _linear_case(recipe, side=None, alpha=512**-0.5):
  x = jax.random.normal(jax.random.key(0), (4, 64, 512))
  w = jax.random.normal(jax.random.key(1), (512, 8, 128))
  ct = jax.random.normal(jax.random.key(2), (4, 64, 8, 128))
  f = lambda x, w: fp8.einsum("btd,dhk->bthk", x, w, alpha=alpha, recipe=recipe, out_dtype=jnp.float32, side=side)
  ref = lambda x, w: jnp.einsum("btd,dhk->bthk", x, w) * alpha
  y, vjp = jax.vjp(jax.jit(f), x, w)
  y0, vjp0 = jax.vjp(ref, x, w)
  return (y, *vjp(ct)), (y0, *vjp0(ct))


@pytest.mark.parametrize("recipe", [STATIC, fp8.Recipe("static", grad_scale=1e4), fp8.Recipe("delayed")],
                         ids=["static-auto", "static-S=1e4", "delayed-current"])
def test_linear_output_and_both_gradients_within_10pct_of_float32(recipe):
  got, want = _linear_case(recipe)
  errors = [rel(a, b) for a, b in zip(got, want)]
  assert max(errors) < 0.10, errors
  assert min(errors) > 1e-3, errors  # really quantized (an unquantized path would be ~1e-7)
  assert float(got[0].std()) == pytest.approx(1.0, abs=0.05)  # unit in, unit out with α = 1/√fan_in


def test_gradient_scale_is_undone_inside_the_backward():
  # A gradient of 1e-6 underflows E5M2 (min subnormal 1.5e-5) unless scaled; the scale must not leak out.
  x = jax.random.normal(jax.random.key(0), (256, 64))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  loss = lambda w, r: 1e-6 * jnp.sum(fp8.einsum("md,df->mf", x, w, alpha=0.125, recipe=r, out_dtype=jnp.float32))
  want = jax.grad(lambda w: 1e-6 * jnp.sum(jnp.einsum("md,df->mf", x, w) * 0.125))(w)
  scaled = jax.grad(loss)(w, fp8.Recipe("static", grad_scale=1e6))
  unscaled = jax.grad(loss)(w, fp8.Recipe("static", grad_scale=1.0))
  assert rel(scaled, want) < 0.10
  assert float(jnp.abs(unscaled).max()) == 0.0  # all underflowed: what the scale is for


def test_delayed_scaling_state_follows_flax_rule():
  meta = fp8.init_meta(4)
  side = {"meta": meta}
  x = 3.0 * jax.random.normal(jax.random.key(0), (32, 16))
  w = jax.random.normal(jax.random.key(1), (16, 8))

  def loss(x, w, side):
    return jnp.sum(fp8.einsum("md,df->mf", x, w, alpha=1.0, recipe=fp8.Recipe("delayed"), out_dtype=jnp.float32,
                              side=side) ** 2)

  new = jax.grad(loss, 2)(x, w, side)["meta"]
  assert float(new["x"]["history"][0]) == pytest.approx(float(jnp.abs(x).max()))
  assert float(new["x"]["scale"]) == 1.0  # first step: empty history, scale kept (Flax)
  new2 = jax.grad(loss, 2)(x, w, {"meta": new})["meta"]
  assert float(new2["x"]["scale"]) == pytest.approx(float(jnp.abs(x).max()) / 448.0, rel=1e-6)
  assert float(new2["g"]["scale"]) == pytest.approx(float(new["g"]["history"].max()) / 57344.0, rel=1e-6)
  # Microbatches: the same old state, different newest amaxes -> the max, exactly what one big batch records.
  a, b = jax.grad(loss, 2)(x, w, {"meta": new}), jax.grad(loss, 2)(2 * x, w, {"meta": new})
  both = fp8.combine(a, b)["meta"]["x"]["history"]
  np.testing.assert_allclose(both, b["meta"]["x"]["history"])


def _mus(**kw):
  m = cfg_lib.base().model
  m.update(vocab_size=256, d_model=128, num_layers=2, num_heads=4, mlp="gelu", tie_embeddings=False, max_seq_len=128,
           parametrization="mus", fp8="static")
  m.norm.update(kind="layernorm", placement="res_post", res_post_tau=0.4)
  m.update(kw)
  return m


def _probes(m, tokens_BT):
  """The FP8 cast statistics of one forward and backward pass of the mean cross-entropy, {linear path: [L, 3, 3]}."""
  graphdef = model.abstract(m)[0]
  params = model.init(m, jax.random.key(0))
  side = model.fp8_side(m, model.fp8_state(m), probes=True)

  def loss(params, side):
    logits = nnx.merge(graphdef, params)(tokens_BT[:, :-1], side=side)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens_BT[:, 1:]).mean()

  side_ct = jax.jit(jax.grad(loss, 1))(params, side)
  return fp8.split_side(side_ct)[1]


def test_e5m2_underflow_below_1pct_with_the_static_scale_and_near_100pct_without():
  tokens = jax.random.randint(jax.random.key(1), (16, 129), 0, 256)  # 2048 tokens: N·d = 262144, the default static scale
  g_underflow = lambda probes: np.array([p[:, 2, 1] for p in jax.tree.leaves(probes)])
  g_saturation = lambda probes: np.array([p[:, 2, 2] for p in jax.tree.leaves(probes)])
  auto = _probes(_mus(), tokens)
  assert g_underflow(auto).max() < 0.01
  assert g_saturation(auto).max() == 0.0
  plain = _probes(_mus(fp8_grad_scale=1.0), tokens)
  assert g_underflow(plain).mean() > 0.9
  # The forward casts at init: unit-scale weights, nothing saturates (μS's premise).
  w_rms = np.array([p[:, 1, 0] for p in jax.tree.leaves(auto)])
  np.testing.assert_allclose(w_rms, 1.0, atol=0.05)
  assert max(np.array([p[:, :2, 2] for p in jax.tree.leaves(auto)]).max(), 0) == 0.0


def test_default_grad_scale_does_not_overflow_and_a_huge_one_is_refused(tiny):
  c = tiny(model__parametrization="mus", model__norm__placement="res_post", model__tie_embeddings=False,
           model__fp8="static")
  preflight.validate(c, 1)
  c.model.fp8_grad_scale = 1e12
  with pytest.raises(cfg_lib.ConfigError, match="overflows E5M2"):
    preflight.validate(c, 1)


# ---------------------------------------------------------------- real FP8 GEMMs on an H100 target (CUDA plugin)

# Run in a child process (jaxtrain/compile.py's: a fresh backend, the CUDA plugin on its path). Prints the FLOPs of
# the GEMMs whose both operands are FP8 and of all GEMMs, from the optimized HLO; exit 77 without the plugin.
_GPU_SCRIPT = r'''
import math, re, sys
from jaxtrain import compile as aot, config as cfg_lib, fp8, sharding, train
try:
  aot.use_compiler("gpu")
except cfg_lib.ConfigError:
  sys.exit(77)
import jax, jax.numpy as jnp
sys.path.insert(0, "tests")
from tiny import tiny_config

devices = aot.topology_devices(aot.parse_topology("h100:1"))
dev = devices[0]
if sys.argv[1] == "linear":
  sh = jax.sharding.SingleDeviceSharding(dev)
  x = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16, sharding=sh)
  w = jax.ShapeDtypeStruct((4096, 4096), jnp.float32, sharding=sh)
  f = lambda x, w: fp8.einsum("md,df->mf", x, w, alpha=4096**-0.5, recipe=fp8.Recipe(sys.argv[3]),
                              out_dtype=jnp.bfloat16)
  hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) ** 2), (0, 1))).lower(x, w)
else:
  c = tiny_config(sys.argv[4], **{"model.parametrization": "mus", "model.norm.placement": "res_post",
      "model.tie_embeddings": False, "model.fp8": sys.argv[3], "model.compute_dtype": "bfloat16",
      "model.attention": "xla", "model.d_model": 128, "model.mlp_dim": 256, "model.num_heads": 2,
      "model.num_layers": 1})
  mesh = sharding.make_mesh(cfg_lib.mesh_shape(c.mesh, 1), devices)
  prog = train.build(c, mesh)
  bsh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=bsh) for k in ("inputs", "targets")}
  with jax.set_mesh(mesh):
    hlo = prog.train_step.jitted.lower(prog.abstract_state, batch)
txt = hlo.compile().as_text()
defs = re.findall(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]", txt)
shapes = {n: (t, [int(d) for d in s.split(",") if d]) for n, t, s in defs}
f8, total = 0, 0
for out, a, b, attrs in re.findall(r"= \w+\[([\d,]*)\][^ ]* dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)", txt):
  contracted = [int(i) for i in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs).group(1).split(",")]
  flops = 2 * math.prod(int(d) for d in out.split(",") if d) * math.prod(shapes[a][1][i] for i in contracted)
  total += flops
  if shapes[a][0].startswith("f8") and shapes[b][0].startswith("f8"):
    f8 += flops
if "cublas$lt$matmul$f8" in txt:  # a GPU-less compile emits Triton GEMMs; a tuned one may pick cuBLASLt
  sys.exit("cuBLASLt FP8 custom calls in the HLO: count them too")
print(f8, total)
'''


def _gpu_gemm_flops(kind, mode, data_dir=""):
  env = aot.child_env("gpu")  # `make test` installs the CUDA plugin outside the venv's path: only this child loads it
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env["PYTHONPATH"]) if p)
  run = subprocess.run([sys.executable, "-c", _GPU_SCRIPT, kind, "", mode, data_dir], capture_output=True,
                       text=True, env=env, timeout=600, cwd=REPO)
  if run.returncode == 77:
    if "JAXTRAIN_GPU_AOT" in os.environ:  # `make test`, which installs it: not a skip
      pytest.fail(f"no CUDA plugin in {aot.aot_dir('gpu')}")
    pytest.skip("jax-cuda12-plugin and jax-cuda12-pjrt 0.10.2 are not installed (pip install them to compile for an "
                "H100 on this machine; ~180 MB download)")
  assert run.returncode == 0, run.stderr[-3000:]
  return [int(v) for v in run.stdout.split()[-2:]]


@pytest.mark.parametrize("mode", ["static", "delayed"])
def test_fp8_linear_compiles_to_three_fp8_gemms_for_an_h100(mode):
  f8, total = _gpu_gemm_flops("linear", mode)
  assert f8 == total == 3 * 2 * 4096**3  # forward, dx and dw: every GEMM has two FP8 operands


@pytest.mark.slow
def test_train_step_runs_every_hidden_matmul_as_an_fp8_gemm_on_an_h100(data_dir):
  f8, total = _gpu_gemm_flops("step", "static", data_dir)
  tokens, D, H, K, F = 8 * 32, 128, 2, 64, 256
  hidden = D * H * K * 3 + H * K * D + D * 2 * F + F * D  # q, k, v, attention out, SwiGLU in, MLP out (one layer)
  assert f8 == 3 * 2 * tokens * hidden  # forward and both backward GEMMs of every hidden linear, nothing else
  assert total > f8  # the head, embedding gradient and attention stay in bf16
