"""The grokking tasks' builders, the paper's models and the full-batch trainer (arXiv 2501.04697)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import grokking
from grokking import tasks
from jaxtrain import config as cfg_lib


@pytest.mark.parametrize("op,fn", [("add", lambda a, b: (a + b) % 23), ("sub", lambda a, b: (a - b) % 23),
                                   ("mul", lambda a, b: (a * b) % 23)])
def test_modular_splits(data_dir, tmp_path, op, fn):
  d = tasks.load_modular(op, p=23, train_fraction=0.4, seed=0, data_dir=data_dir)
  tr, te = d["train"], d["test"]
  assert len(tr["labels"]) == int(0.4 * 23 * 23) == 211 and len(te["labels"]) == 23 * 23 - 211
  pairs = lambda s: {tuple(x) for x in s["inputs"]}
  assert not pairs(tr) & pairs(te)                                      # disjoint
  assert pairs(tr) | pairs(te) == {(a, b) for a in range(23) for b in range(23)}  # all p² pairs
  for s in (tr, te):
    np.testing.assert_array_equal(s["labels"], fn(s["inputs"][:, 0], s["inputs"][:, 1]))
  again = tasks.load_modular(op, p=23, train_fraction=0.4, seed=0, data_dir=str(tmp_path))  # built afresh
  np.testing.assert_array_equal(again["train"]["inputs"], tr["inputs"])  # deterministic
  other = tasks.load_modular(op, p=23, train_fraction=0.4, seed=1, data_dir=data_dir)
  assert pairs(other["train"]) != pairs(tr)                             # the seed picks the split


def test_modular_paper_sizes():
  train, test = tasks.modular_split(113, 0.4, seed=0)
  assert (len(train), len(test)) == (5107, 7662)                        # the paper's 40% of 113²


def test_sparse_parity(data_dir, tmp_path):
  d = tasks.load_parity(n_bits=12, k=3, num_samples=300, train_fraction=0.5, seed=0, data_dir=data_dir)
  tr, te = d["train"], d["test"]
  assert tr["inputs"].shape == (150, 12) and te["inputs"].shape == (150, 12)
  rows = [tuple(r) for s in (tr, te) for r in s["inputs"]]
  assert len(set(rows)) == 300                                          # distinct, so splits are disjoint
  for s in (tr, te):
    np.testing.assert_array_equal(s["labels"], s["inputs"][:, :3].sum(1) % 2)
  assert 0.3 < tr["labels"].mean() < 0.7
  again = tasks.load_parity(n_bits=12, k=3, num_samples=300, train_fraction=0.5, seed=0, data_dir=str(tmp_path))
  np.testing.assert_array_equal(again["test"]["inputs"], te["inputs"])
  with pytest.raises(ValueError, match="distinct"):
    tasks.parity_samples(3, 2, 9, seed=0)


def test_mlp_is_the_one_hot_mlp():
  """The gathered first layer equals the paper's matmul on concatenated one-hots; no biases."""
  c = grokking.config(p=11, width=16)
  graphdef, params = grokking.make_model(c, jax.random.key(0))
  assert {k: v.shape for k, v in params.items()} == {"w1": (22, 16), "w2": (16, 16), "w3": (16, 11)}
  bound = 1 / np.sqrt(22)
  assert np.abs(params["w1"]).max() <= bound and np.abs(params["w1"]).max() > 0.9 * bound  # U(±1/√fan_in)
  x = jnp.array([[0, 0], [3, 7], [10, 10]])
  one_hot = jnp.concatenate([jax.nn.one_hot(x[:, 0], 11), jax.nn.one_hot(x[:, 1], 11)], 1)
  model = nnx.merge(graphdef, params)
  dense = grokking.MLP(22, 16, 11, bias=False, vocab=None, rngs=nnx.Rngs(0))
  nnx.update(dense, nnx.state(model))
  np.testing.assert_allclose(model(x), dense(one_hot), rtol=1e-6, atol=1e-6)


def test_transformer_trains_with_dropout(data_dir):
  c = grokking.config(p=7, model="transformer", d_model=16, num_heads=2, mlp_dim=32, steps=4, log_every=2,
                      data_dir=data_dir, lr=1e-3, b2=0.999, eps=1e-8)
  graphdef, params = grokking.make_model(c, jax.random.key(0))
  x = jnp.array([[1, 2], [3, 4]])

  @jax.jit
  def forward(key):
    model = nnx.merge(graphdef, params)
    return model(x), model(x), model(x, key=key)

  plain, again, dropped = forward(jax.random.key(1))
  assert plain.shape == (2, 7)
  np.testing.assert_array_equal(plain, again)                           # no key: no dropout
  assert not np.allclose(plain, dropped)                                # a key: dropout on
  h = grokking.train(c, verbose=False)
  assert np.all(np.isfinite(h["loss"])) and h["eval"]["step"].tolist() == [0, 2, 4]


def test_stablemax_float64_in_the_trainer(data_dir):
  c = grokking.config(p=11, output="stablemax", loss_dtype="float64", orthograd=True, steps=10, log_every=5,
                      data_dir=data_dir)
  h = grokking.train(c, verbose=False)
  assert len(h["loss"]) == 10 and np.all(np.isfinite(h["loss"]))
  assert h["sc_fraction"].max() == 0 and h["weight_norm"][0] > 0
  assert {"weight_norm/w1", "grad_weight_cos/w3"} <= set(h)


def test_orthograd_adamw_generalizes(data_dir):
  """⊥AdamW (the paper's Fig. 1 settings) reaches ≥95% test accuracy within 200 full-batch steps; AdamW does not."""
  common = dict(p=31, train_fraction=0.7, lr=0.01, b2=0.999, eps=1e-8, steps=200, log_every=50,
                data_dir=data_dir)
  ortho = grokking.train(grokking.config(orthograd=True, **common), verbose=False)
  plain = grokking.train(grokking.config(orthograd=False, **common), verbose=False)
  assert ortho["eval"]["train_accuracy"][-1] == 1 and plain["eval"]["train_accuracy"][-1] == 1
  assert grokking.first_step_at(ortho, "test_accuracy", 0.95) is not None, ortho["eval"]["test_accuracy"]
  assert plain["eval"]["test_accuracy"].max() < 0.2


# ---------------------------------------------------------------- Adam in float64 and its diagnostics


def _adam_step(tx, grads, dtype):
  with grokking.precision(dtype):  # float64 arrays exist only in x64 mode
    params = jax.tree.map(jnp.zeros_like, grads)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    return jax.device_get(updates), jax.device_get(state)


def test_float64_adam_state_differs_only_where_nu_underflows():
  """The first Adam step is ±lr·g/(|g| + ε) ≈ ±lr. For g = 1e-20, g² = 1e-40 is a float32 subnormal that XLA on
  CPU flushes to 0, so float32 Adam steps by lr·g/ε = 1e3 (ε = 1e-25); float64 state keeps ν and steps by lr."""
  g = {"w": jnp.array([1e-3, -1e-10, 1e-20, 0.0, -4e-19], jnp.float32)}
  c = grokking.config(lr=0.01, b2=0.999, eps=1e-25)
  u32, s32 = _adam_step(grokking.make_optimizer(c), g, "float32")
  u64, s64 = _adam_step(grokking.make_optimizer(grokking.config(lr=0.01, b2=0.999, eps=1e-25, opt_dtype="float64")),
                        g, "float64")
  assert u64["w"].dtype == np.float32 and s64[0].nu["w"].dtype == np.float64   # state float64, updates cast back
  np.testing.assert_allclose(u64["w"], [-0.01, 0.01, -0.01, 0.0, 0.01], rtol=1e-5)
  normal = np.array([True, True, False, True, False])                       # (1-β2)g² ≥ float32's smallest normal
  np.testing.assert_allclose(u32["w"][normal], u64["w"][normal], rtol=1e-4)  # float32 vs float64 rounding
  assert s32[0].nu["w"][2] == 0 and s32[0].mu["w"][2] != 0, "XLA on CPU no longer flushes subnormals?"
  np.testing.assert_allclose(u32["w"][~normal], [-1e3, 4e4], rtol=1e-3)     # lr·g/ε: the explosion
  assert grokking.ftz_threshold(0.999) == pytest.approx(3.43e-18, rel=1e-2)
  assert np.abs(g["w"][~normal]).max() < grokking.ftz_threshold(0.999) < np.abs(g["w"][1])


def test_opt_stats_on_a_hand_made_state():
  tx = grokking.make_optimizer(grokking.config(b2=0.999))
  params = {"a": jnp.zeros((2, 2)), "b": jnp.zeros((3,))}
  state = tx.init(params)
  mu = {"a": jnp.array([[1e-21, 0.0], [2.0, 0.0]]), "b": jnp.array([0.0, 5e-3, 1.0])}
  nu = {"a": jnp.array([[0.0, 0.0], [4e-6, 1e-30]]), "b": jnp.array([0.0, 0.0, 3e-9])}
  state = (state[0]._replace(mu=mu, nu=nu),) + state[1:]
  grads = {"a": jnp.array([[1e-20, 0.0], [-2e-3, 0.0]]), "b": jnp.array([0.0, -1e-19, 4e-2])}
  updates = {"a": jnp.array([[-3.0, 0.0], [0.01, 0.0]]), "b": jnp.array([0.0, 7.5, -0.02])}
  s = jax.device_get(jax.jit(lambda *a: grokking.opt_stats(*a, b2=0.999))(grads, state, updates))
  assert s["nu_zero_fraction"] == pytest.approx(4 / 7)                      # ν = 0 in 4 of 7 entries
  assert s["nu_zero_m_nonzero"] == 2                                        # a[0,0] and b[1]: m ≠ 0, ν = 0
  assert s["nu_min"] == np.float32(1e-30)
  assert s["grad_min"] == np.float32(1e-20) and s["grad_max"] == np.float32(4e-2)
  assert s["grad_ftz_fraction"] == pytest.approx(2 / 4)                     # 1e-20 and 1e-19 of 4 non-zero
  assert s["update_max"] == np.float32(7.5)
  with pytest.raises(cfg_lib.ConfigError, match="opt_dtype"):
    grokking.config(opt_dtype="bfloat16")
  with pytest.raises(cfg_lib.ConfigError, match="adamw"):
    grokking.config(opt_dtype="float64", optimizer="sgd")


def test_train_continues_from_a_saved_state(data_dir):
  """A run continued from its step-4 state repeats the uninterrupted run; continued with float64 Adam it runs on."""
  common = dict(p=11, output="stablemax", loss_dtype="float64", b2=0.999, steps=8, log_every=4, data_dir=data_dir)
  data = grokking.load_data(grokking.config(**common))
  h = grokking.train(grokking.config(**common), data, verbose=False, save_at=(4,))
  state = h["states"][4]
  assert set(h["states"]) == {4} and int(state["step"]) == 4 and state["opt_state"][0].nu["w1"].dtype == np.float32
  again = grokking.train(grokking.config(**common), data, verbose=False, state=state)
  assert again["step"].tolist() == [5, 6, 7, 8] and again["eval"]["step"].tolist() == [4, 8]
  np.testing.assert_array_equal(again["loss"], h["loss"][4:])
  np.testing.assert_array_equal(again["opt/update_max"], h["opt/update_max"][4:])
  wide = grokking.train(grokking.config(opt_dtype="float64", **common), data, verbose=False, state=state)
  assert wide["opt/nu_min"].dtype == np.float64
  np.testing.assert_allclose(wide["loss"], h["loss"][4:], rtol=1e-4)       # same run, Adam's arithmetic in float64
  ieee = grokking.train(grokking.config(opt_dtype="float32_ieee", **common), data, verbose=False, state=state)
  np.testing.assert_allclose(ieee["loss"], h["loss"][4:], rtol=1e-4)       # optax's m, ν carried into torch's Adam
  with pytest.raises(ValueError, match="multiple of log_every"):
    grokking.train(grokking.config(**common), data, save_at=(3,))


def test_float32_ieee_adam_keeps_subnormals_as_pytorch():
  """opt_dtype=float32_ieee: torch.optim.AdamW's float32 arithmetic with subnormals, checked against numpy float32
  (which keeps them): ν = 1e-43 for g = 1e-20 (XLA's float32 flushes it to 0), and ν = 0 only below ~1e-21."""
  x = np.array([1e-40, 1e-20 ** 2, 3e-45, 1e-46, 1.5, 1e-39 + 1e-45, -7e-42])
  with grokking.precision("float64"):
    np.testing.assert_array_equal(jax.jit(grokking.round_float32)(jnp.asarray(x)), x.astype(np.float32))
  g32 = np.array([1e-3, -1e-10, 1e-20, 0.0, -4e-19, 1e-22], np.float32)
  u, s = _adam_step(grokking.make_optimizer(grokking.config(lr=0.01, b2=0.999, eps=1e-25, opt_dtype="float32_ieee")),
                    {"w": jnp.asarray(g32)}, "float64")
  with np.errstate(under="ignore"):                                        # numpy: one torch AdamW step at t = 1
    m, v = g32 * np.float32(0.1), np.float32(0.001) * g32 * g32
    want = np.float32(-0.01 / 0.1) * m / (np.sqrt(v) / np.float32(np.sqrt(0.001)) + np.float32(1e-25))
  np.testing.assert_array_equal(s.nu["w"], v.astype(np.float64))
  assert s.nu["w"][2] > 0 and s.nu["w"][5] == 0                            # 1e-43 kept; 1e-47 rounds to 0
  np.testing.assert_allclose(u["w"], want, rtol=1e-6)
  np.testing.assert_allclose(u["w"][:5], [-0.01, 0.01, -0.01, 0.0, 0.01], rtol=1e-2)
  assert u["w"][5] == pytest.approx(-1e-22 / 1e-25 * 0.01 * 0.1 / 0.1, rel=1e-3)  # below subnormals: lr·g/ε here too


# ---------------------------------------------------------------- a run in a workdir: segments, resume, the CLI


def test_run_in_segments_resumes_bit_exact_and_branches(data_dir, tmp_path):
  """Saved segments join into the uninterrupted history; a lost segment is retrained from the saved state, equal to
  the bit; a branch continues another run's state; the CLI trains the same run and refuses another config."""
  import json
  import os

  from grokking import __main__ as cli
  common = dict(p=11, output="stablemax", loss_dtype="float64", b2=0.999, steps=12, log_every=2, data_dir=data_dir)
  whole = grokking.train(grokking.config(**common), verbose=False)
  w = str(tmp_path / "run")
  h = grokking.run(grokking.config(**common), w, save_every=4, verbose=False)
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["12.pkl", "4.pkl", "8.pkl"]
  for k in ("loss", "opt/update_max", "weight_norm"):
    np.testing.assert_array_equal(h[k], whole[k])
  assert h["eval"]["step"].tolist() == whole["eval"]["step"].tolist() == [0, 2, 4, 6, 8, 10, 12]
  os.remove(os.path.join(w, "segments", "12.npz"))  # killed in the last segment
  again = grokking.run(grokking.config(**common), w, save_every=4, verbose=False)
  np.testing.assert_array_equal(again["loss"], whole["loss"])
  np.testing.assert_array_equal(grokking.load_history(w)["eval"]["test_accuracy"], whole["eval"]["test_accuracy"])
  rows = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [0, 2, 4, 6, 8, 10, 12] and rows[-1]["eval_loss"] == h["eval"]["test_loss"][-1]
  branch = grokking.run(grokking.config(opt_dtype="float64", **common), str(tmp_path / "branch"),
                        init_from=(w, 8), verbose=False)
  assert branch["step"].tolist() == [9, 10, 11, 12] and branch["opt/nu_min"].dtype == np.float64
  flags = [f"--config.{k}={v}" for k, v in common.items()] + ["--save_every=4", "--quiet"]
  assert cli.main([f"--workdir={tmp_path / 'cli'}", *flags]) == 0
  np.testing.assert_array_equal(grokking.load_history(str(tmp_path / "cli"))["loss"], whole["loss"])
  assert cli.main([f"--workdir={tmp_path / 'cli'}", *flags, "--config.lr=0.02"]) == 2  # another run: refused
  assert cli.main([f"--workdir={tmp_path / 'x'}", "--config.nope=1"]) == 2
