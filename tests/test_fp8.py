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


def _probes(m, tokens):
  """The FP8 cast statistics of one forward and backward pass of the mean cross-entropy, for each batch in `tokens`
  (one compile): [{linear path: [L, 3, len(fp8.STATS)]}]."""
  graphdef = model.abstract(m)[0]
  params = model.init(m, jax.random.key(0))
  side = model.fp8_side(m, model.fp8_state(m), probes=True)

  def loss(params, side, tokens_BT):
    logits = nnx.merge(graphdef, params)(tokens_BT[:, :-1], side=side)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens_BT[:, 1:]).mean()

  grad = jax.jit(jax.grad(loss, 1))
  return [fp8.split_side(grad(params, side, t))[1] for t in tokens]


def _g(probes, stat):
  """One stat of the output gradients' casts: [linears, L]."""
  return np.array([p[:, 2, fp8.STATS.index(stat)] for p in jax.tree.leaves(probes)])


def test_e5m2_underflow_at_init_is_what_the_docs_state():
  # docs/munit_fp8.md: this model (d = 128, 2 layers, N = 2048 tokens, so S = N·d = 262144), 3 batches: with the
  # static scale 0.10-0.11% of the output gradients' non-zero entries underflow on average over the 12 linears, at
  # most 0.61-0.66% (attn.wq: its first positions' gradients are tiny, the first token's exactly 0); without it
  # (S = 1) 98% on average and 100% at worst.
  tokens = [jax.random.randint(jax.random.key(s + 1), (16, 129), 0, 256) for s in range(3)]
  for auto in _probes(_mus(), tokens):
    under = _g(auto, "underflow")
    assert 0.0008 < under.mean() < 0.0013 and 0.005 < under.max() < 0.008, (under.mean(), under.max())
    assert _g(auto, "saturation").max() == 0.0
    assert _g(auto, "lost").max() < 1e-9  # what underflows holds almost none of the gradient's squared norm
    # The forward casts at init: unit-scale weights, nothing saturates (μS's premise).
    w_rms = np.array([p[:, 1, 0] for p in jax.tree.leaves(auto)])
    np.testing.assert_allclose(w_rms, 1.0, atol=0.05)
    assert np.array([p[:, :2, 2] for p in jax.tree.leaves(auto)]).max() == 0.0
  for plain in _probes(_mus(fp8_grad_scale=1.0), tokens):
    under = _g(plain, "underflow")
    assert under.mean() > 0.97 and under.max() == 1.0, (under.mean(), under.max())


def test_per_linear_gradient_scales_are_static_and_undone():
  """fp8_grad_rule=per_linear: each linear's S·2^k, a constant of the program (no state), undone in its backward."""
  m = _mus(fp8_grad_rule="per_linear")
  mult = {name: fp8.grad_multiplier(m, name) for name in fp8.PER_LINEAR_SHIFT}
  assert mult == {k: 2.0**v for k, v in fp8.PER_LINEAR_SHIFT.items()}
  assert fp8.grad_multiplier(_mus(), "attn.wq") == 1.0
  tokens = [jax.random.randint(jax.random.key(1), (16, 129), 0, 256)]
  uniform, per = _probes(_mus(), tokens)[0], _probes(m, tokens)[0]
  # The cast sees g·S·2^k: its RMS moves by 2^k per linear (same parameters, same batch; the casts upstream round
  # differently, hence not exactly) ...
  names = [".".join(k.key for k in path[1:]) for path, _ in jax.tree_util.tree_flatten_with_path(per)[0]]
  ratio = _g(per, "rms") / _g(uniform, "rms")
  np.testing.assert_allclose(ratio, np.array([[mult[n]] * ratio.shape[1] for n in names]), rtol=2e-3)
  assert _g(per, "underflow").mean() < _g(uniform, "underflow").mean()
  # ... and the gradients reaching the parameters are those of S alone, to FP8's noise.
  x = jax.random.normal(jax.random.key(0), (256, 64))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  grad = lambda r: jax.grad(lambda w: jnp.mean(jnp.sin(fp8.einsum("md,df->mf", x, w, alpha=0.125, recipe=r,
                                                                           out_dtype=jnp.float32))))(w)
  want_w = jax.grad(lambda w: jnp.mean(jnp.sin(jnp.einsum("md,df->mf", x, w) * 0.125)))(w)
  assert rel(grad(fp8.Recipe("static", grad_mult=2.0**10)), want_w) < 0.10


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
if sys.argv[1] == "gather":  # FSDP over 8 H100s: what each all-gather moves
  c = tiny_config(sys.argv[4], **{"model.parametrization": "mus", "model.norm.placement": "res_post",
      "model.tie_embeddings": False, "model.fp8": sys.argv[3], "model.compute_dtype": "bfloat16",
      "model.attention": "xla", "model.d_model": 128, "model.mlp_dim": 256, "model.num_heads": 2,
      "model.num_layers": 2})
  devices = aot.topology_devices(aot.parse_topology("h100:8"))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, devices)
  prog = train.build(c, mesh)
  bsh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=bsh) for k in ("inputs", "targets")}
  with jax.set_mesh(mesh):
    txt = prog.train_step.jitted.lower(prog.abstract_state, batch).compile().as_text()
  done = [l.split(" all-gather")[0] for l in txt.splitlines() if re.search(r"= .* all-gather(-done)?\(", l)
          and "all-gather-start" not in l.split("=")[0]]
  arrays = [a for l in done for a in re.findall(r"(\w+)\[([\d,]+)\]", l.split("=", 1)[1])]
  print(" ".join(f"{t}:{d}" for t, d in arrays))
  sys.exit(0)
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


def _gpu_gathers(mode):
  env = aot.child_env("gpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env["PYTHONPATH"]) if p)
  run = subprocess.run([sys.executable, "-c", _GPU_SCRIPT, "gather", "", mode, ""], capture_output=True,
                       text=True, env=env, timeout=600, cwd=REPO)
  if run.returncode == 77:
    if "JAXTRAIN_GPU_AOT" in os.environ:
      pytest.fail(f"no CUDA plugin in {aot.aot_dir('gpu')}")
    pytest.skip("jax-cuda12-plugin and jax-cuda12-pjrt 0.10.2 are not installed")
  assert run.returncode == 0, run.stderr[-3000:]
  return [tuple(a.split(":")) for a in run.stdout.split()]


@pytest.mark.slow
def test_fsdp_all_gathers_move_the_hidden_weights_in_fp8_on_h100s():
  """FSDP over 8 H100s (ahead of time): every hidden weight is all-gathered as E4M3, 1 byte per entry.

  The static cast needs no scale, so `fp8.einsum` casts w where it lies, pinned to w's own sharding, and the
  gather moves the cast (XLA's partitioner placed it there on its own here too; the pin keeps it so). On a CPU
  mesh the count says nothing: XLA:CPU computes FP8 in 16 bits, so its gathers move f16 whatever the program.
  """
  hidden = {"128,2,64", "128,128", "128,2,256", "256,128"}  # q, k, v; attention out; SwiGLU in; MLP out
  fp8_gathers = _gpu_gathers("static")
  wide = [(t, d) for t, d in fp8_gathers if d in hidden and not t.startswith("f8")]
  assert not wide, wide
  assert sum(t == "f8e4m3fn" and d in hidden for t, d in fp8_gathers) >= 6  # the six hidden linears at least once
  none = _gpu_gathers("none")  # without FP8 the same weights move in 16 or 32 bits
  assert not any(t.startswith("f8") for t, _ in none) and any(d in hidden for _, d in none)


@pytest.mark.slow
def test_train_step_runs_every_hidden_matmul_as_an_fp8_gemm_on_an_h100(data_dir):
  f8, total = _gpu_gemm_flops("step", "static", data_dir)
  tokens, D, H, K, F = 8 * 32, 128, 2, 64, 256
  hidden = D * H * K * 3 + H * K * D + D * 2 * F + F * D  # q, k, v, attention out, SwiGLU in, MLP out (one layer)
  assert f8 == 3 * 2 * tokens * hidden  # forward and both backward GEMMs of every hidden linear, nothing else
  assert total > f8  # the head, embedding gradient and attention stay in bf16
