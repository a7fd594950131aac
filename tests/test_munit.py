"""μnit Scaling (model.parametrization=mus) and FP8 through the trainer: unit scale at init, the static multipliers,
bad configs, the mesh, the diagnostics, learning, and an exact resume of delayed scaling's state after SIGKILL."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import model, sharding, train

MUS = {"model.parametrization": "mus", "model.norm.placement": "res_post", "model.tie_embeddings": False,
       "model.mlp": "gelu", "model.norm.kind": "layernorm", "model.norm.res_post_tau": 0.4}


def mus_model(**kw):
  m = cfg_lib.base().model
  m.update(vocab_size=256, d_model=256, num_layers=4, num_heads=4, tie_embeddings=False, mlp="gelu", max_seq_len=64,
           parametrization="mus")
  m.norm.update(kind="layernorm", placement="res_post", res_post_tau=0.4)
  m.update(kw)
  return m


def layer0(m, params):
  """The first block as a module (the blocks' parameters are stacked on a layers axis)."""
  block_def, block_state = nnx.split(nnx.merge(model.abstract(m)[0], params).blocks)
  return nnx.merge(block_def, jax.tree.map(lambda a: a[0], block_state))


@pytest.mark.parametrize("fp8", ["none", "static"])
def test_every_hidden_linear_has_unit_output_at_init(fp8):
  m = mus_model(fp8=fp8)
  block = layer0(m, model.init(m, jax.random.key(0)))
  x = lambda *shape: jax.random.normal(jax.random.key(1), (4, 64, *shape))
  D, F = m.d_model, cfg_lib.mlp_dim(m)
  outputs = {"wq": block.attn.wq(x(D)), "wk": block.attn.wk(x(D)), "wv": block.attn.wv(x(D)),
             "wo": block.attn.wo(x(m.num_heads, D // m.num_heads)), "wi": block.mlp.wi(x(D)),
             "down": block.mlp.down(x(F))}
  for name, y in outputs.items():
    assert 0.95 <= float(y.std()) <= 1.05, (name, float(y.std()))


def test_residual_stream_and_logits_keep_their_scale_at_init():
  m = mus_model()
  params = model.init(m, jax.random.key(0))
  assert float(params["embed"].std()) == pytest.approx(1.0, abs=0.02)  # N(0, 1), embedding multiplier 1
  assert float(params["head"]["w"].std()) == pytest.approx(1.0, abs=0.02)
  tokens = jax.random.randint(jax.random.key(1), (4, 64), 0, 256)
  net = nnx.merge(model.abstract(m)[0], params)
  x, stats = net.hidden(tokens, collect=True)
  std_L = np.sqrt(np.asarray(stats["resid_var"]))
  assert np.all((std_L > 0.9) & (std_L < 1.1)), std_L  # Res-Post-LN: √(1-τ)·x + √τ·LN(f(x)) keeps unit scale
  logits = net.logits(x)
  assert float(logits.std()) == pytest.approx(1 / math.sqrt(m.d_model), rel=0.1)  # head multiplier 1/fan_in


def test_attention_scale_option_divides_the_logits_by_sqrt_head_dim():
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  logit = {}
  for scale in ("inv_sqrt", "inv"):
    m = mus_model(num_layers=1)
    m.mus.attn_scale = scale
    _, stats = nnx.merge(model.abstract(m)[0], model.init(m, jax.random.key(0))).hidden(tokens, collect=True)
    logit[scale] = float(stats["attn_max_logit"][0])
  assert logit["inv"] == pytest.approx(logit["inv_sqrt"] / math.sqrt(256 // 4), rel=1e-3)


def test_sp_is_untouched_by_the_mus_fields():
  m = cfg_lib.base().model
  m.update(vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=32)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  logits = lambda m: nnx.merge(model.abstract(m)[0], model.init(m, jax.random.key(0)))(tokens)
  before = logits(m)
  m.mus.update(head_mult=3.0, embed_mult=2.0, attn_scale="inv")  # read only under parametrization=mus
  np.testing.assert_array_equal(logits(m), before)


@pytest.mark.parametrize("change, message", [
    ({"model.norm.placement": "pre"}, "needs model.norm.placement=res_post"),
    ({"model.tie_embeddings": True}, "needs model.tie_embeddings=False"),
    ({"model.mus.d_base": 0}, "model.mus.d_base=0 must be positive"),
    ({"model.mus.attn_scale": "sqrt"}, "model.mus.attn_scale='sqrt' is not one of"),
    ({"model.fp8": "e4m3"}, "model.fp8='e4m3' is not one of"),
    ({"model.fp8": "delayed", "model.fp8_history": 0}, "model.fp8_history=0 must be >= 1"),
    ({"model.fp8": "static", "model.fp8_grad_scale": -1.0}, "model.fp8_grad_scale=-1.0 must be >= 0"),
    ({"model.fp8": "static", "model.fp8_grad_rule": "amax"}, "model.fp8_grad_rule='amax' is not one of"),
])
def test_bad_mus_and_fp8_configs_are_one_line_errors(tiny, change, message):
  c = tiny(**{k.replace(".", "__"): v for k, v in (MUS | change).items()})
  with pytest.raises(cfg_lib.ConfigError, match=message) as e:
    preflight.validate(c, 1)
  assert "\n" not in str(e.value)


def test_fp8_on_tpu_is_refused_before_compiling(tiny):
  c = tiny(model__fp8="static")
  preflight.validate(c, 1, platform="cpu")
  with pytest.raises(cfg_lib.ConfigError, match="not on TPU|use none on TPU"):
    preflight.validate(c, 1, platform="tpu")


def test_fp8_on_a_gpu_without_fp8_gemms_is_refused(tiny):
  c = tiny(model__fp8="delayed")
  for cc in ("8.9", "9.0", "10.0"):  # Ada, Hopper, Blackwell
    preflight.validate(c, 1, platform="gpu", compute_capability=cc)
  with pytest.raises(cfg_lib.ConfigError, match=r"compute capability 8.0\) has no FP8 GEMMs"):
    preflight.validate(c, 1, platform="gpu", compute_capability="8.0")  # A100
  preflight.validate(tiny(), 1, platform="gpu", compute_capability="8.0")  # no FP8: fine


# ---------------------------------------------------------------- through the train step


def run(c, mesh_shape, devices, steps=3, diagnose_last=False):
  mesh = sharding.make_mesh(mesh_shape, devices)
  prog = train.build(c, mesh)
  state = prog.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  losses, metrics = [], {}
  for i in range(steps):
    x = rng.integers(0, c.model.vocab_size, (c.train.global_batch, c.data.seq_len + 1), dtype=np.int32)
    step = prog.diagnostics_step if diagnose_last and i == steps - 1 else prog.train_step
    state, metrics = step(state, sharding.host_to_global({"inputs": x[:, :-1], "targets": x[:, 1:]}, mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("fp8", ["static", "delayed"])
def test_fp8_on_the_mesh_and_in_microbatches_matches_one_device(tiny, fp8):
  c = tiny(**{k.replace(".", "__"): v for k, v in MUS.items()}, model__fp8=fp8, model__num_kv_heads=2,
           model__fp8_history=8, train__global_batch=16, optim__warmup_steps=1)
  ref_losses, ref_state, _ = run(c, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  assert ref_losses[-1] < ref_losses[0]
  losses, state, _ = run(c, {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  # FP8 rounding can flip where a float32 sum over shards differs in the last bit: looser than float32's 2e-5.
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-3)
  if fp8 == "static":  # no scale state; microbatches through the same linear: the delayed run (suite time)
    assert "fp8" not in state
    return
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3), state["fp8"], ref_state["fp8"])
  hist = state["fp8"]["blocks"]["mlp"]["down"]["g"]["history"]
  assert hist.shape == (2, 8) and np.count_nonzero(hist[0]) == 3  # one amax per step, per layer
  c.train.microbatches = 2
  micro_losses, micro_state, _ = run(c, {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  np.testing.assert_allclose(micro_losses, ref_losses, rtol=2e-3)
  # step 1's amaxes (same parameters): x as one batch; g of a half-batch mean loss: 2×
  first = lambda s, t: s["fp8"]["blocks"]["mlp"]["down"][t]["history"][:, -2]  # the roll puts step 1 at -2
  np.testing.assert_allclose(first(micro_state, "x"), first(ref_state, "x"), rtol=2e-3)
  # the last layer only: below it, g went through step 1's cold-start casts (scale 1), which 2× changes
  np.testing.assert_allclose(first(micro_state, "g")[-1], 2 * first(ref_state, "g")[-1], rtol=2e-3)


def test_diagnostics_step_reports_fp8_health_per_layer(tiny):
  c = tiny(**{k.replace(".", "__"): v for k, v in MUS.items()}, model__fp8="static")
  _, _, metrics = run(c, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1], steps=1, diagnose_last=True)
  names = {k for k in metrics if k.startswith("layers/fp8/")}
  linears = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.wi", "mlp.down")
  stats = ("rms", "underflow", "saturation", "zero", "lost", "amax_underflow", "amax")
  assert names == {f"layers/fp8/{n}/{t}_{s}" for n in linears for t in "xwg" for s in stats}
  assert all(metrics[n].shape == (c.model.num_layers,) for n in names)
  np.testing.assert_allclose(metrics["layers/fp8/attn.wq/w_rms"], 1.0, atol=0.1)  # unit weights under μS
  assert max(metrics[f"layers/fp8/{n}/g_underflow"].max() for n in linears) < 0.05  # the static gradient scale


def test_sp_forced_into_static_fp8_shows_why_it_fails(tiny):
  c = tiny(model__fp8="static")  # SP: weights ~0.02, no multipliers, so the casts lose the small values
  _, _, metrics = run(c, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1], steps=1, diagnose_last=True)
  _, _, mus = run(tiny(**{k.replace(".", "__"): v for k, v in MUS.items()}, model__fp8="static"),
                  {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1], steps=1, diagnose_last=True)
  assert metrics["layers/fp8/attn.wq/w_rms"].max() < 0.05
  assert metrics["layers/fp8/attn.wq/w_underflow"].min() > 10 * mus["layers/fp8/attn.wq/w_underflow"].max()


@pytest.mark.slow
def test_munit_config_with_fp8_learns(tmp_path, data_dir, train_optimized):
  rows = train_optimized("configs/munit.py", [f"data.data_dir={data_dir}", "train.steps=30", "train.eval_every=30",
                                              "train.checkpoint_every=1000", "train.log_every=10",
                                              "train.eval_batches=2", "train.peak_flops=1e11",
                                              "optim.warmup_steps=5"], tmp_path)
  final = [r["eval_loss"] for r in rows if "eval_loss" in r][-1]
  assert final < 4.6, rows[-3:]  # from log(256) = 5.55 at init; measured 4.01


@pytest.mark.slow
def test_delayed_fp8_resumes_exactly_after_sigkill(tmp_path, data_dir):
  from test_train import killed_and_resumed
  ref, got = killed_and_resumed(tmp_path, data_dir, 120, **{"model.fp8": "delayed", "model.fp8_history": 16})
  assert sorted(got) == list(range(1, 121))
  assert got == ref  # bit-identical: the scales and amax histories came back with the parameters


def test_munit_config_does_not_clip_gradients():
  """The paper names no gradient clipping and the study (experiments/munit) uses none; the base config clips at 1."""
  assert cfg_lib.base().optim.clip_norm == 1.0
  for spec in ("configs/munit.py", "configs/munit.py:bf16"):
    assert cfg_lib.load(spec).optim.clip_norm == 0.0


# ---------------------------------------------------------------- the study's width-transfer verdict

def study():
  import os  # pylint: disable=import-outside-toplevel
  from jaxtrain import report  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return report.load_module(os.path.join(root, "experiments", "munit", "run.py"), "munit_study_run")


def synthetic(exponent, noise, seeds=3, widths=(64, 128, 256), rng=0):
  """Per seed {width: applied η*} following η* ∝ d^exponent, with log2-normal noise of sd `noise`."""
  r = np.random.default_rng(rng)
  return [{w: 2.0 ** (-4 + exponent * math.log2(w / 64) + noise * r.normal()) for w in widths} for _ in range(seeds)]


def test_width_transfer_verdict_comes_out_differently_for_mus_and_sp():
  run = study()
  mus_like = run.exponent_fit(synthetic(-0.5, 0.05))
  sp_like = run.exponent_fit(synthetic(-1.0, 0.05))
  assert mus_like["lo"] < -0.5 < mus_like["hi"] and mus_like["n"] == 3
  assert str(run.exponent_verdict(mus_like)) == "μS's rule"
  assert str(run.exponent_verdict(sp_like)) == "SP's rule"
  assert str(run.exponent_verdict(run.exponent_fit(synthetic(-0.75, 0.6)))) == "cannot tell"  # too noisy
  assert str(run.exponent_verdict(run.exponent_fit(synthetic(0.3, 0.02)))) == "neither"
  assert str(run.exponent_verdict(run.exponent_fit(synthetic(-0.5, 0.05, seeds=1)))) == "not measured"
  # The committed one-seed study's exponents (-0.79 μS, -1.11 SP) sat in one band (-1.5 to -0.5) that called
  # both a "yes"; an interval from three seeds at the noise this study sees cannot hold both rules.
  assert run.exponent_verdict(mus_like).label != run.exponent_verdict(sp_like).label


def test_width_transfer_fit_drops_widths_whose_mean_curve_has_its_optimum_at_the_grid_edge():
  run = study()
  grid = [2.0**-5, 2.0**-4, 2.0**-3]

  def rows(best_log2):  # a parabola in log2 η around each width's optimum
    return [{"d_model": w, "lr": lr, "final_eval_loss": 2.5 + 0.05 * (math.log2(lr) - b) ** 2, "status": "ok"}
            for w, b in best_log2.items() for lr in grid]

  # μS-like under the μS rule: the best optim.lr stays at 2^-4 (interior) at 64 and 128, and sits below the grid at
  # 256 (edge): 256 is dropped and the fit uses 64 and 128.
  seeds = [rows({64: -4.1 + 0.1 * s, 128: -4.0, 256: -6.0}) for s in range(3)]
  tabs = [{"mus": run.transfer_table(r, (64, 128, 256)), "sp": []} for r in seeds]
  mean_tab = {"mus": run.transfer_table(run.report.mean_rows([x for r in seeds for x in r], run.POINT),
                                        (64, 128, 256)), "sp": []}
  assert run.interior_widths(mean_tab["mus"]) == [64, 128]
  fits = run.transfer_fits(tabs, mean_tab, 32)
  assert fits["mus"]["dropped"] == [256] and fits["mus"]["fit"]["widths"] == [64, 128]
  assert fits["mus"]["fit"]["mean"] == pytest.approx(-0.5, abs=0.15)  # the optim.lr is fixed: applied ∝ d^-0.5
