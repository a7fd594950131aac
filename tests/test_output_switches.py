"""Issue 4's switches in the LM trainer: model.output, train.loss_dtype, optim.orthograd and the
collapse metrics, through train.build, the CLI and configs/lm_stablemax.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import __main__ as cli
from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import losses, sharding, train
from jaxtrain.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program(c):
  return train.build(c, sharding.make_mesh(preflight.validate(c, 1), jax.devices()[:1]))


def lm_batch(c, seed=0):
  tok = jax.random.randint(jax.random.key(seed), (c.train.global_batch, c.data.seq_len + 1), 0, c.model.vocab_size)
  return {"inputs": tok[:, :-1], "targets": tok[:, 1:]}


@pytest.mark.parametrize("output", ["softmax", "stablemax"])
def test_collapse_metrics_see_the_collapse_the_output_allows(tiny, output):
  """Embeddings blown up 300× make every logit gap huge: softmax collapses, StableMax cannot."""
  c = tiny(model__output=output, train__collapse_metrics=True)  # else only on the diagnostics step
  prog = program(c)
  state = prog.init(jax.random.key(0))
  _, fresh = prog.train_step(state, lm_batch(c))
  assert float(fresh["sc_fraction"]) == 0.0 and float(fresh["zero_loss_fraction"]) == 0.0
  state = prog.init(jax.random.key(0))
  state["params"]["embed"] = state["params"]["embed"] * 300.0
  _, m = prog.train_step(state, lm_batch(c))
  if output == "softmax":
    assert float(m["sc_fraction"]) > 0.5
    assert 0 < float(m["zero_loss_fraction"]) <= float(m["sc_fraction"])
  else:
    assert float(m["sc_fraction"]) == 0.0 and float(m["zero_loss_fraction"]) == 0.0
  assert -1.0 - 1e-6 <= float(m["grad_weight_cos"]) <= 1.0 + 1e-6  # bounded even when gradients are tiny


def test_eval_and_train_use_the_configured_loss(tiny):
  c = tiny(model__output="stablemax", train__loss_dtype="float64")
  prog = program(c)
  state = prog.init(jax.random.key(0))
  batch = lm_batch(c)
  logits = jax.jit(lambda p, x: nnx.merge(prog.graphdef, p)(x))(state["params"], batch["inputs"])
  want = losses.stablemax_cross_entropy(logits, batch["targets"], dtype=jnp.float64).mean()
  ce_sum, n = prog.eval_step(state["params"], batch)
  np.testing.assert_allclose(ce_sum / n, want, rtol=1e-5)
  _, m = prog.train_step(state, batch)
  np.testing.assert_allclose(m["ce"], want, rtol=1e-5)
  assert m["loss"].dtype == jnp.float32  # float64 stays inside the loss


def test_float64_loss_is_rejected_on_tpu(tiny):
  c = tiny(train__loss_dtype="float64")
  preflight.validate(c, 1, platform="cpu")
  with pytest.raises(cfg_lib.ConfigError, match="TPUs have no float64"):
    preflight.validate(c, 1, platform="tpu")
  with pytest.raises(cfg_lib.ConfigError, match="model.output='softmin' is not one of"):
    preflight.validate(tiny(model__output="softmin"), 1)


def test_lm_stablemax_config_through_the_cli(tmp_path, data_dir):
  """configs/lm_stablemax.py:float64,orthograd trains from the command line and logs the collapse metrics."""
  workdir = str(tmp_path / "run")
  args = [f"--config={REPO}/configs/lm_stablemax.py:float64,orthograd", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.model.d_model=32", "--config.model.num_layers=2",
          "--config.model.mlp_dim=64", "--config.data.seq_len=32", "--config.train.global_batch=8",
          "--config.train.steps=10", "--config.optim.warmup_steps=2", "--config.train.log_every=5",
          "--config.train.eval_every=10", "--config.train.eval_batches=1", "--config.train.checkpoint_every=10",
          "--config.train.diagnostics_every=5", "--config.train.progress=log", "--config.train.peak_flops=1e11"]
  assert cli.main(args) == 0
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [5, 10]
  for r in train_rows:
    assert r["sc_fraction"] == 0.0 and r["zero_loss_fraction"] == 0.0 and -1 <= r["grad_weight_cos"] <= 1
  diag = [r for r in rows if "weight_norm/blocks/mlp/wi/w" in r]
  assert [r["step"] for r in diag] == [5, 10]
  assert len(diag[0]["weight_norm/blocks/mlp/wi/w"]) == 2 and len(diag[0]["grad_weight_cos/blocks/attn/wq/w"]) == 2
  assert isinstance(diag[0]["weight_norm/embed"], float)
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert (config["model"]["output"], config["train"]["loss_dtype"], config["optim"]["orthograd"]) == (
      "stablemax", "float64", True)
