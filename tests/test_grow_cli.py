"""Offline growth (`python -m jaxtrain.grow`): a trained run's checkpoint into a bigger model's new workdir, which
the trainer then resumes; inferred operator arguments; --keep_step; bad input in one line, the workdir untouched."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxtrain import checkpoint, data, growth, sharding, train
from jaxtrain import config as cfg_lib
from jaxtrain.config import ConfigError
from jaxtrain.growth import offline
from jaxtrain.metrics import read_metrics
from tiny import tiny_config

ONE = jax.devices()[:1]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_STEPS = 20  # the tiny config's


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory):
  """The tiny config at 1 layer, trained SOURCE_STEPS steps (checkpoints at 10 and 20): (workdir, config).

  Grown to 2 layers it is the tiny config itself, whose programs test_train.py compiles too (the XLA cache)."""
  c = tiny_config(data_dir, **{"model.num_layers": 1})
  workdir = str(tmp_path_factory.mktemp("source"))
  train.train(c, workdir, devices=ONE)
  return workdir, c


def restore(workdir, config, fingerprint=None):
  """The newest checkpoint of `workdir` as `config`'s train state, on one device, as the trainer restores it."""
  prog = train.build(config, sharding.make_mesh(cfg_lib.mesh_shape(config.mesh, 1), ONE))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
  try:
    return ckpt.restore_latest(prog.abstract_state, config.model.to_dict(), fingerprint)
  finally:
    ckpt.close()


# ---------------------------------------------------------------- end to end


def test_stack_then_the_trainer_resumes_the_grown_run(source, data_dir, tmp_path, caplog):
  src_dir, src_config = source
  t = tiny_config(data_dir)
  out = str(tmp_path / "grown")
  s = offline.grow(src_dir, t, "stack", out, devices=ONE)
  assert s["ops"] == [["stack", {"g": 2}]] and (s["source_step"], s["step"]) == (SOURCE_STEPS, 0)  # g inferred
  assert np.isfinite(s["eval_loss_before"]) and np.isfinite(s["eval_loss_after"])
  assert s["eval_loss_after"] != s["eval_loss_before"]  # stacking is not function-preserving: two models evaluated
  assert s["source_total_flops"] == growth.total_flops(growth.plan(src_config), SOURCE_STEPS) > 0
  assert json.load(open(os.path.join(out, "grow.json")))["ops"] == [["stack", {"g": 2}]]
  assert json.load(open(os.path.join(out, "config.json")))["model"]["num_layers"] == 2

  small, grown = restore(src_dir, src_config), restore(out, t, data.TrainData(
      t.data, seq_len=t.data.seq_len, global_batch=t.train.global_batch, seed=t.seed).fingerprint())
  assert grown.step == 0 and int(grown.state["step"]) == 0
  expected = growth.stack(src_config.model, small.state["params"], g=2)[1]
  jax.tree.map(np.testing.assert_array_equal, grown.state["params"], expected)
  assert all(not np.any(x) for x in jax.tree.leaves(grown.state["opt_state"]))  # reset: zero moments, count 0

  caplog.set_level("INFO", logger="jaxtrain")
  summary = train.train(t, out, devices=ONE)
  assert "resumed from step 0" in caplog.text and summary["step"] == t.train.steps
  losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
  assert len(losses) == t.train.steps // t.train.log_every and np.all(np.isfinite(losses))


def test_function_preserving_ops_with_keep_step_and_copy(source, data_dir, tmp_path):
  """expand_mlp then expand_d_model (eps rescaled in the target, as the error asks): the same eval loss; the
  source's step kept, restorable as the trainer restores it (same data stream); the moments copied."""
  src_dir, src_config = source
  t = tiny_config(data_dir, **{"model.num_layers": 1, "model.mlp_dim": 96, "model.d_model": 64, "model.head_dim": 8,
                               "model.norm.eps": 1e-6 * 32 / 64, "train.eval_batches": 1,
                               "train.steps": SOURCE_STEPS + 2})
  out = str(tmp_path / "wide")
  s = offline.grow(src_dir, t, "expand_mlp,expand_d_model", out, keep_step=True, opt="copy", devices=ONE)
  assert s["ops"] == [["expand_mlp", {"mlp_dim": 96}], ["expand_d_model", {"d_model": 64}]]  # inferred
  assert s["eval_loss_after"] == pytest.approx(s["eval_loss_before"], rel=1e-5)  # the grown model, evaluated

  small = restore(src_dir, src_config)
  fingerprint = data.TrainData(t.data, seq_len=t.data.seq_len, global_batch=t.train.global_batch,
                               seed=t.seed).fingerprint()
  wide = restore(out, t, fingerprint)  # as the trainer resumes it: same model, optimizer and data stream
  assert s["step"] == wide.step == int(wide.state["step"]) == SOURCE_STEPS
  assert wide.state["params"]["blocks"]["mlp"]["down"]["w"].shape[1:] == (96, 64)
  adam = lambda r: r.state["opt_state"][1]  # (clip_by_global_norm, scale_by_adam, ...)
  assert int(adam(wide).count) == int(adam(small).count) == SOURCE_STEPS  # copy: counts kept
  mu_small, mu_wide = (np.asarray(adam(r).mu["blocks"]["mlp"]["down"]["w"]) for r in (small, wide))
  np.testing.assert_array_equal(mu_wide[:, :64, :32], mu_small)  # the old moments in the old slice
  assert np.any(mu_small) and not np.any(mu_wide[:, 64:]) and not np.any(mu_wide[:, :, 32:])  # 0 for new entries


def test_cli_on_a_sharded_mesh(source, data_dir, tmp_path):
  """`python -m jaxtrain.grow` on a 4-device FSDP mesh: exit 0, the message, the same state as stacking on one."""
  src_dir, src_config = source
  config_path = tmp_path / "tiny_config.py"
  config_path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
      from tiny import tiny_config
      def get_config(arg=None):
        return tiny_config({data_dir!r})
  """))
  out = str(tmp_path / "cli")
  cmd = [sys.executable, "-m", "jaxtrain.grow", f"--from={src_dir}", f"--to={config_path}", "--op=stack",
         f"--workdir={out}", "--arg", "layer_map=[0,0,0]", "--config.model.num_layers=3", "--cpu_devices=4",
         "--config.mesh.data=1", "--config.mesh.fsdp=4", "--no_eval"]
  proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "stack(layer_map=[0, 0, 0])" in proc.stdout and "3 layers" in proc.stdout
  assert "train it on:  python -m jaxtrain" in proc.stdout and "--config.mesh.fsdp=4" in proc.stdout
  t = tiny_config(data_dir, **{"model.num_layers": 3})
  expected = growth.stack(src_config.model, restore(src_dir, src_config).state["params"], layer_map=[0, 0, 0])[1]
  jax.tree.map(np.testing.assert_array_equal, restore(out, t).state["params"], expected)


# ---------------------------------------------------------------- arguments inferred from the target, abstractly


def model(**change):
  m = cfg_lib.base().model
  m.update(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=32)
  norm = change.pop("norm", {})
  m.update(change)
  m.norm.update(norm)
  return m


def resolve(ops, args=None, src=None, **target_change):
  ops = ops.split(",")
  return offline.resolve(src or model(), model(**target_change), ops, offline.assign_args(ops, args or {}))[0]


def test_inferred_arguments():
  assert resolve("stack", num_layers=8) == [("stack", {"g": 4})]
  assert resolve("g_zero", num_layers=4) == [("g_zero", {"g": 2})]
  assert resolve("g_random", num_layers=3) == [("g_random", {"num_layers": 3})]
  # a non-integer factor: bert2BERT's and MSG's map, the remainder from the top layers (growth.top_fill_map)
  assert resolve("stack", num_layers=5) == [("stack", {"g": 2.5})]
  assert growth.top_fill_map(2, 5) == [0, 1, 0, 1, 1] and growth.top_fill_map(3, 8) == [0, 1, 2, 0, 1, 2, 1, 2]
  assert resolve("g_learn", {"fit_steps": 2}, num_layers=4) == [("g_learn", {"fit_steps": 2, "g": 2})]
  assert resolve("expand_mlp", mlp_dim=80) == [("expand_mlp", {"mlp_dim": 80})]
  assert resolve("add_heads", num_heads=8, num_kv_heads=4, head_dim=8) == [
      ("add_heads", {"num_heads": 8, "num_kv_heads": 4})]
  assert resolve("add_heads", src=model(num_kv_heads=None), num_heads=8, num_kv_heads=None, head_dim=8) == [
      ("add_heads", {"num_heads": 8})]  # MHA stays MHA
  assert resolve("expand_head_dim", head_dim=16) == [("expand_head_dim", {"head_dim": 16})]
  # several ops, left to right; expand_d_model's eps rescale set in the target
  assert resolve("expand_mlp,expand_d_model", mlp_dim=128, d_model=64, head_dim=8, norm={"eps": 1e-6 * 32 / 64}) == [
      ("expand_mlp", {"mlp_dim": 128}), ("expand_d_model", {"d_model": 64})]
  # given arguments win; an OP.NAME goes to that op
  assert resolve("insert_layers", {"at": [0, 2]}, num_layers=4) == [("insert_layers", {"at": [0, 2]})]
  assert resolve("stack", {"stack.layer_map": [0, 1, 1]}, num_layers=3) == [("stack", {"layer_map": [0, 1, 1]})]


@pytest.mark.parametrize("ops,args,change,message", [
    ("stack", {}, dict(num_layers=1), "growth adds layers"),
    ("stack", {}, dict(num_layers=4, d_model=64), "model.d_model is 32, the target's 64: --op=stack does not change "
     "it; add expand_d_model to --op"),
    ("stack", {"g": 3}, dict(num_layers=4), "model.num_layers is 6, the target's 4"),
    ("expand_d_model", {}, dict(d_model=64, head_dim=8), "set --config.model.norm.eps=5e-07"),
    ("expand_d_model", {}, dict(d_model=64), "add expand_head_dim to --op, or pin the target's (None derives it from "
     "d_model): --config.model.head_dim=8"),
    ("expand_mlp", {}, dict(mlp_dim=32), "must exceed the model's 64 (inferred from the target: mlp_dim=32)"),
    ("expand_mlp", {}, dict(mlp_dim=128, qk_norm=True), "growth keeps the source's model.qk_norm; set "
     "--config.model.qk_norm=False"),
    ("insert_layers", {}, dict(num_layers=3), "--arg at=[...]"),
    ("stack", {"g": "x"}, dict(num_layers=4), "--op stack:"),
    ("grow_more", {}, dict(), "unknown operator 'grow_more'; choose from"),
    ("stack", {"mlp_dim": 9}, dict(), "--arg mlp_dim: no operator in --op=stack takes it"),
    ("expand_mlp,split_mlp", {"mlp_dim": 9}, dict(), "several operators take it; say which: --arg expand_mlp.mlp_dim"),
    ("stack", {"split_mlp.mlp_dim": 9}, dict(), "'split_mlp' is not an --op here"),
])
def test_bad_operators_and_arguments(ops, args, change, message):
  with pytest.raises(ConfigError) as e:
    resolve(ops, args, **change)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_arg_literal():
  assert offline.parse_args(["g=4", "at=[0, 3]", "exact=False"]) == {"g": 4, "at": [0, 3], "exact": False}
  for bad, message in (("g", "expected NAME=VALUE"), ("at=[0,", "not a Python literal"), ("=3", "NAME=VALUE")):
    with pytest.raises(ConfigError, match=message):
      offline.parse_args([bad])


# ---------------------------------------------------------------- bad input through grow(): nothing written


def _refused(tmp_path, src_dir, t, ops="stack", **kw):
  out = tmp_path / "out"
  with pytest.raises(ConfigError) as e:
    offline.grow(src_dir, t, ops, str(out), devices=ONE, **kw)
  assert "\n" not in str(e.value) and not out.exists()  # one line; the workdir not even created
  return str(e.value)


def test_bad_input_is_one_line_and_writes_nothing(source, data_dir, tmp_path):
  src_dir, _ = source
  t = tiny_config(data_dir)
  before = sorted(os.listdir(src_dir)), sorted(os.listdir(os.path.join(src_dir, "checkpoints")))
  assert "does not exist" in _refused(tmp_path, str(tmp_path / "nowhere"), t)
  empty = tmp_path / "empty_run"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  assert "has no checkpoints" in _refused(tmp_path, str(empty), t)
  assert not (empty / "checkpoints").exists()  # not created in the source either
  no_config = tmp_path / "no_config"
  (no_config / "checkpoints" / "5").mkdir(parents=True)
  assert "no config.json there" in _refused(tmp_path, str(no_config), t)
  assert "unknown operator" in _refused(tmp_path, src_dir, t, ops="stak")
  assert "add expand_mlp or split_mlp to --op" in _refused(tmp_path, src_dir, tiny_config(data_dir, **{"model.mlp_dim": 96}))
  assert "raise --config.train.steps" in _refused(tmp_path, src_dir, tiny_config(data_dir, **{"train.steps": 20}),
                                                  keep_step=True)
  assert "the target's data differs (seed: source 0 vs target 1)" in _refused(
      tmp_path, src_dir, tiny_config(data_dir, seed=1, **{"train.steps": 30}), keep_step=True)
  # never over a run: the source's own workdir holds checkpoints
  with pytest.raises(ConfigError, match="already holds checkpoints .* use a new --workdir"):
    offline.grow(src_dir, t, "stack", src_dir, devices=ONE)
  assert (sorted(os.listdir(src_dir)), sorted(os.listdir(os.path.join(src_dir, "checkpoints")))) == before
