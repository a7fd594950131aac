"""jaxtrain.flops: the FLOP formula against the matmuls the train step really runs, and the peak table.

The matmul count walks `jax.make_jaxpr` of the model and of the real train step (no compilation):
2·(batch)·(free lhs)·(contracted)·(free rhs) per dot_general, a scan body times its length. Attention's
q·kᵀ and p·v (and their gradients) are the dot_generals with batch dimensions (batch and heads); every
linear layer is an einsum against a weight, which has none.
"""

import math
import types
import warnings

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.extend import core as jex_core

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import flops, model, optim
from jaxtrain import step as step_lib

B, T = 2, 16  # T < 128: the attention kernel computes the full T×T square, masked (one query block)


def matmul_flops(jaxpr, times: int = 1) -> dict[str, int]:
  """{'attention': ..., 'other': ...}: FLOPs of every dot_general in `jaxpr` and the jaxprs inside it."""
  out = {"attention": 0, "other": 0}
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      n = 2 * math.prod(lhs) * math.prod(rhs) // math.prod(lhs[d] for d in (*batch, *contract))
      out["attention" if batch else "other"] += times * n
    inner = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
    for param in eqn.params.values():  # call_jaxpr of custom_vjp (not its fwd/bwd thunks), scan/jit/remat bodies
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = sub.jaxpr if isinstance(sub, jex_core.ClosedJaxpr) else sub
        if isinstance(sub, jex_core.Jaxpr):
          counted = matmul_flops(sub, inner)
          assert eqn.primitive.name not in ("cond", "while") or not any(counted.values()), (
              f"matmuls under {eqn.primitive.name}: a branch or trip count this walk cannot count")
          out = {k: out[k] + counted[k] for k in out}
  return out


def small_config(**model):
  c = cfg_lib.base()
  c.model.update(d_model=32, num_layers=2, num_heads=4, mlp_dim=64, vocab_size=96, max_seq_len=256)
  c.model.update(**model)
  c.train.update(global_batch=B)
  return c


def forward_count(m, seq_len=T):
  graphdef, params, _ = model.abstract(m)
  tokens = jax.ShapeDtypeStruct((B, seq_len), jnp.int32)
  return matmul_flops(jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, tokens).jaxpr)


def train_count(c):
  """The matmuls of one step of `step.make_train_step`: loss, gradient, optimizer, metrics."""
  graphdef, _, axes = model.abstract(c.model)
  tx, schedule = optim.make(c, axes)
  state = jax.eval_shape(step_lib.make_state_fn(c, tx), jax.random.key(0))
  step = step_lib.make_train_step(c, graphdef, tx, schedule, param_axes=axes)
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
  return matmul_flops(jax.make_jaxpr(step)(state, {"inputs": tokens, "targets": tokens}).jaxpr)


CASES = {
    "gqa_swiglu_tied_scan": dict(num_kv_heads=2),
    "mha_gelu_untied_unrolled": dict(mlp="gelu", tie_embeddings=False, scan_layers=False),
    # head_dim 16 with 4 heads: H·K = 64 != d_model, so a D·D slipped in for H·K·D shows; μS adds only multipliers
    "mqa_gelu_untied_mus_headdim": dict(num_kv_heads=1, mlp="gelu", head_dim=16, tie_embeddings=False,
                                        parametrization="mus", norm=dict(placement="res_post")),
    "gqa_swiglu_untied_unrolled": dict(num_kv_heads=2, tie_embeddings=False, scan_layers=False, num_layers=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_formula_counts_the_forward_and_train_step_matmuls(case):
  c = small_config(**CASES[case])
  preflight.validate(c, num_devices=1)
  m, tokens = c.model, B * T
  no_attention = flops.forward_flops_per_token(m, 0) * tokens  # the formula without its T-dependent term
  attention = flops.forward_flops_per_token(m, T) * tokens - no_attention

  fwd = forward_count(m)
  assert fwd["other"] == no_attention  # projections, MLP, LM head, exactly
  assert fwd["attention"] == 2 * attention  # the kernel computes the whole T×T square; the formula counts half

  step = train_count(c)
  assert step["other"] == 3 * fwd["other"]  # backward: two matmuls per forward one
  # Backward attention: 4 matmuls under autodiff (3× forward in all), 5 in a kernel that recomputes q·kᵀ (3.5×).
  assert step["attention"] / fwd["attention"] in (3.0, 3.5)
  model_flops = step["other"] + 3 * fwd["attention"] / 2  # model FLOPs: 3× forward, causal half, no recompute
  assert model_flops == flops.train_flops_per_step(m, T, B)


def test_microbatches_and_remat_add_no_model_flops():
  """Accumulating over microbatches runs the same matmuls; remat's recomputation is counted by XLA, not by us."""
  c = small_config(num_kv_heads=2)
  base = train_count(c)
  c.train.microbatches = 2
  assert train_count(c) == base
  c.train.microbatches = 1
  fwd = forward_count(c.model)
  head = 2 * c.model.d_model * c.model.vocab_size * B * T
  for remat in ("full", "dots"):
    c.model.remat = remat
    step = train_count(c)
    recomputed = step["other"] - base["other"]
    if remat == "full":  # each layer's forward once more, less what the backward pass never reads (the MLP's down)
      assert 0 < recomputed <= fwd["other"] - head
    else:  # 'dots' saves the weight matmuls' outputs
      assert recomputed == 0
    assert step["attention"] == base["attention"] + fwd["attention"]  # q·kᵀ and p·v run once more


def test_long_sequences_compute_between_the_causal_half_and_the_square():
  """At T=256 the blocked kernel skips most keys after each query block: 5/8 of the square, not 1/2."""
  m = small_config(num_kv_heads=2).model
  attention = (flops.forward_flops_per_token(m, 256) - flops.forward_flops_per_token(m, 0)) * B * 256
  ratio = forward_count(m, seq_len=256)["attention"] / attention
  assert 1.0 < ratio <= 2.0  # the formula's causal half, and the square it never exceeds


# ---------------------------------------------------------------- peaks


@pytest.mark.parametrize("kind, dtype, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989e12),         # SXM
    ("NVIDIA H100 PCIe", "bfloat16", None, 756e12),              # not the SXM figure
    ("NVIDIA H100 80GB HBM3", "float32", None, 494e12),          # DEFAULT precision: TF32 tensor cores
    ("NVIDIA H100 80GB HBM3", "float32", "highest", 67e12),      # true float32: CUDA cores
    ("NVIDIA H200", "bfloat16", None, 989e12),
    ("NVIDIA H200 141GB HBM3e", "float16", None, 989e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", None, 312e12),
    ("NVIDIA A100 80GB PCIe", "float32", "tensorfloat32", 156e12),
    ("NVIDIA B200", "bfloat16", None, 2250e12),
    ("TPU v4", "bfloat16", None, 275e12),
    ("TPU v5 lite", "float32", None, 197e12),                    # DEFAULT: one bfloat16 pass, the bf16 rate
    ("TPU v5 lite", "float32", "highest", 197e12 / 6),           # six passes
    ("TPU v5", "bfloat16", None, 459e12),                        # v5p's kind
    ("TPU v6 lite", "float32", "high", 918e12 / 3),              # three passes
])
def test_peak_by_device_kind_dtype_and_precision(kind, dtype, precision, peak):
  got, source = flops.device_peak_flops(kind, dtype, precision)
  assert got == pytest.approx(peak) and kind in source


def fake_devices(kind, platform, n=4):
  return [types.SimpleNamespace(device_kind=kind, platform=platform)] * n


def test_peak_of_the_job_follows_the_matmul_precision_in_effect():
  assert flops.peak_flops("float32", devices=fake_devices("TPU v4", "tpu"))[0] == pytest.approx(4 * 275e12)
  with jax.default_matmul_precision("highest"):
    assert flops.peak_flops("float32", devices=fake_devices("TPU v4", "tpu"))[0] == pytest.approx(4 * 275e12 / 6)
  assert flops.peak_flops("bfloat16", override=1e12, devices=fake_devices("TPU v4", "tpu")) == (
      4e12, "config train.peak_flops")


@pytest.mark.parametrize("kind, platform, dtype", [
    ("NVIDIA GeForce RTX 4090", "gpu", "bfloat16"),  # a GPU the table does not know
    ("TPU7x", "tpu", "bfloat16"),
    ("TPU v5 lite", "tpu", "float16"),              # a dtype it has no figure for
])
def test_unknown_accelerator_says_so_and_times_nothing(monkeypatch, kind, platform, dtype):
  def timed(*_):
    raise AssertionError("timed a matmul on an accelerator")
  monkeypatch.setattr(flops, "time_matmul", timed)
  monkeypatch.setattr(flops, "measured_matmul_flops", timed)
  with pytest.warns(UserWarning, match=r"set --config\.train\.peak_flops=") as caught:
    peak, source = flops.peak_flops(dtype, devices=fake_devices(kind, platform))
  assert math.isnan(peak) and kind in source and kind in str(caught[0].message)


def test_cpu_keeps_its_measured_ceiling_once_per_host(monkeypatch):
  monkeypatch.setattr(flops, "measured_matmul_flops", lambda dtype: 1e11)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert flops.peak_flops("float32", devices=fake_devices("cpu", "cpu", 8)) == (
        1e11 * jax.process_count(), f"measured float32 matmul on cpu x {jax.process_count()}")
