"""End to end through the trainer: workdir layout, exact resume after a kill, damaged checkpoints,
the NaN guard, signals, incompatible checkpoints, and that the default config learns."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import checkpoint, sharding, train
from jaxtrain import step as step_lib
from jaxtrain.metrics import MetricWriter, read_metrics

ONE = jax.devices()[:1]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses_by_step(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_workdir_layout_and_metrics(tiny, tmp_path):
  c = tiny(train__steps=20)
  summary = train.train(c, str(tmp_path), devices=ONE)
  assert summary["step"] == 20 and np.isfinite(summary["final_eval_loss"])
  assert json.load(open(tmp_path / "config.json"))["model"]["d_model"] == 32
  rows = read_metrics(str(tmp_path))
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
  for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "step_time"):
    assert all(np.isfinite(r[key]) for r in train_rows), key
  assert [r["step"] for r in eval_rows] == [10, 20]
  assert eval_rows[-1]["eval_loss"] == pytest.approx(summary["final_eval_loss"])
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def test_collapse_metrics_come_with_the_diagnostics_step(tiny, tmp_path):
  """The plain step leaves out the collapse metrics; the diagnostics step (steps 7 and 14) adds them and its
  per-layer lines, and a log window that mixes both kinds of step averages each metric over the steps that have it."""
  train.train(tiny(train__steps=20, train__diagnostics_every=7), str(tmp_path), devices=ONE)
  rows = read_metrics(str(tmp_path))
  train_rows = {r["step"]: r for r in rows if "loss" in r}
  assert [s for s, r in train_rows.items() if "sc_fraction" in r] == [10, 15]
  assert all({"zero_loss_fraction", "grad_weight_cos"} <= set(train_rows[s]) for s in (10, 15))
  assert [r["step"] for r in rows if "layers/grad_norm" in r] == [7, 14]
  assert all(np.isfinite(r["loss"]) for r in train_rows.values())


def _config_file(tmp_path, data_dir, **overrides):
  """A config file for the CLI: the tests' tiny config, with `overrides`."""
  path = tmp_path / "tiny_config.py"
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
      from tiny import tiny_config
      def get_config(arg=None):
        return tiny_config({data_dir!r}, **{overrides!r})
  """))
  return str(path)


def _cli(config_path, workdir, *extra):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return [sys.executable, "-m", "jaxtrain", f"--config={config_path}", f"--workdir={workdir}", *extra], env


def _run_until_checkpoint_then(sig, config_path, workdir, after_step=0):
  """Starts the CLI, sends `sig` once a checkpoint past `after_step` is committed; returns the finished process."""
  cmd, env = _cli(config_path, workdir)
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() and int(d) > after_step for d in os.listdir(ckpts)):
      proc.send_signal(sig)
      break
    time.sleep(0.01)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def killed_and_resumed(tmp_path, data_dir, steps, after_step=0, **overrides):
  """(losses of an uninterrupted CLI run, losses of the same run SIGKILLed after its first checkpoint past
  `after_step` and rerun)."""
  overrides = {"train.steps": steps, "train.log_every": 1, "train.eval_every": 1000, "train.checkpoint_every": 10,
               "mesh.data": 1, **overrides}
  config_path = _config_file(tmp_path, data_dir, **overrides)
  reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  cmd, env = _cli(config_path, reference)
  done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  code, _, _ = _run_until_checkpoint_then(signal.SIGKILL, config_path, killed, after_step)
  assert code == -signal.SIGKILL
  assert max(losses_by_step(killed), default=0) < steps, "the run finished before it could be killed"
  cmd, env = _cli(config_path, killed)
  done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from step" in done.stderr
  return losses_by_step(reference), losses_by_step(killed)


@pytest.mark.slow
def test_exact_resume_after_sigkill_past_a_growth_event(tmp_path, data_dir):
  """Killed after the model grew (G_stack at step 20, jaxtrain/growth/): the resume restores the grown model."""
  ref, got = killed_and_resumed(tmp_path, data_dir, 300, after_step=30,
                                **{"growth.events": [{"step": 20, "op": "stack", "g": 2}]})
  assert sorted(got) == list(range(1, 301))
  assert got == ref  # bit-identical: same parameters, optimizer state and batches after the restart
  assert [r["step"] for r in read_metrics(str(tmp_path / "killed")) if "growth/event" in r] == [20]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
  config_path = _config_file(tmp_path, data_dir, **{"train.steps": 2000, "train.checkpoint_every": 10,
                                                     "mesh.data": 1, "train.eval_every": 1000})
  workdir = str(tmp_path / "run")
  code, out, err = _run_until_checkpoint_then(signal.SIGTERM, config_path, workdir)
  assert code == 0, err[-2000:]
  assert "received SIGTERM" in err and "run the same command to resume" in out
  stopped = int(re.search(r"received SIGTERM: saved step (\d+)", err).group(1))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == stopped < 2000  # the step it stopped at is the newest checkpoint, complete on disk
  assert os.path.isfile(os.path.join(workdir, "checkpoints", str(stopped), "_CHECKPOINT_METADATA"))


def test_damaged_checkpoint_falls_back_to_the_previous(tiny, tmp_path, caplog):
  c = tiny(train__steps=20, train__log_every=1)
  train.train(c, str(tmp_path), devices=ONE)
  first = losses_by_step(str(tmp_path))

  def damage(step):
    state_dir = tmp_path / "checkpoints" / str(step) / "state"
    for root, _, files in os.walk(state_dir):  # damage every array file of the step
      for f in files:
        if not f.endswith(".json") and "zarray" not in f:
          open(os.path.join(root, f), "wb").close()
    shutil.rmtree(state_dir / "d", ignore_errors=True)

  damage(20)
  c = tiny(train__steps=20, train__log_every=1)
  summary = train.train(c, str(tmp_path), devices=ONE)
  assert "checkpoint step 20 is unreadable" in caplog.text
  assert os.path.isdir(tmp_path / "corrupt_checkpoints" / "20")  # set aside, not deleted
  assert summary["step"] == 20
  assert losses_by_step(str(tmp_path)) == first  # steps 11..20 redone from step 10, identically

  # When nothing restores, nothing is moved and the run stops: it does not start over on top of its history.
  for step in (20, 10):
    damage(step)
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint .* could be restored \(step 20: .*; step 10: "):
    train.train(c, str(tmp_path), devices=ONE)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
  assert os.listdir(tmp_path / "corrupt_checkpoints") == ["20"]  # only the first fallback's
  assert losses_by_step(str(tmp_path)) == first  # the metrics are untouched


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tiny, tmp_path):
  train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  c = tiny(train__steps=40, optim__lr=1e35, optim__warmup_steps=0)
  with pytest.raises(train.NonFiniteError, match=r"step 1[1-9]: (loss|grad_norm).* became nan.*last good checkpoint \(step 10\)"):
    train.train(c, str(tmp_path), devices=ONE)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  summary = train.train(tiny(train__steps=12), str(tmp_path), devices=ONE)  # still resumable
  assert summary["step"] == 12 and np.isfinite(summary["final_eval_loss"])


def test_skip_mode_skips_bad_updates(tiny, tmp_path):
  c = tiny(train__steps=10, optim__lr=1e35, optim__warmup_steps=0, train__on_nonfinite="skip")
  summary = train.train(c, str(tmp_path), devices=ONE)
  assert summary["step"] == 10 and summary["skipped_steps"] > 0


def test_skip_mode_keeps_parameters_and_optimizer_state(tiny):
  """A non-finite step under on_nonfinite=skip changes neither parameters nor optimizer state."""
  c = tiny(train__on_nonfinite="skip")
  prog = train.build(c, sharding.make_mesh(preflight.validate(c, 1), ONE))
  tok = jax.random.randint(jax.random.key(0), (c.train.global_batch, c.data.seq_len + 1), 0, 256)
  batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:]}
  state, _ = prog.train_step(prog.init(jax.random.key(0)), batch)  # a real step: Adam's moments are nonzero
  state["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(np.nan)
  before = jax.device_get(state)
  after, m = prog.train_step(state, batch)
  assert not bool(m["finite"])
  after = jax.device_get(after)
  assert after["step"] == before["step"] + 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),  # NaN == NaN here
               (after["params"], after["opt_state"]), (before["params"], before["opt_state"]))


def test_incompatible_checkpoint_is_a_clear_error(tiny, tmp_path):
  train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  with pytest.raises(cfg_lib.ConfigError, match=r"does not fit .* \(model.d_model: checkpoint 32 vs config 64;"):
    train.train(tiny(train__steps=20, model__d_model=64), str(tmp_path), devices=ONE)
  # Same shapes, another function: refused too, not silently restored.
  with pytest.raises(cfg_lib.ConfigError, match=r"model.norm.placement: checkpoint 'pre' vs config 'post'"):
    train.train(tiny(train__steps=20, model__norm__placement="post"), str(tmp_path), devices=ONE)
  with pytest.raises(cfg_lib.ConfigError, match=r"is at step 10, past train.steps=5: raise train.steps"):
    train.train(tiny(train__steps=5), str(tmp_path), devices=ONE)
  assert json.load(open(tmp_path / "config.json"))["train"]["steps"] == 10  # a refused config is not written
  with pytest.raises(cfg_lib.ConfigError, match=r"does not fit .*not in checkpoint: \['opt_state/0"):
    train.train(tiny(train__steps=20, optim__clip_norm=0.0), str(tmp_path), devices=ONE)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]  # nothing set aside or deleted
  # The same model spelled differently, a knob its placement ignores, and another loss: all resume.
  same = tiny(train__steps=12, model__num_kv_heads=4, model__head_dim=8, model__norm__mix_post_fraction=0.5,
              model__output="stablemax")
  assert train.train(same, str(tmp_path), devices=ONE)["step"] == 12


def test_resume_on_another_mesh(tiny, tmp_path):
  """A checkpoint written on one device restores onto the 8-device FSDP mesh (resharded)."""
  train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  summary = train.train(tiny(train__steps=20, mesh__data=1, mesh__fsdp=8), str(tmp_path))
  assert summary["step"] == 20 and np.isfinite(summary["final_eval_loss"])


def test_cli_reports_config_errors_in_one_line(tmp_path):
  cmd, env = _cli("configs/default.py", str(tmp_path), "--config.modle.num_layers=2")
  done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr.strip() == ("jaxtrain: error: unknown config key 'modle.num_layers'; "
                                 "did you mean 'model.num_layers'?")


@pytest.mark.slow
def test_default_config_learns(tmp_path, data_dir, train_optimized):
  rows = train_optimized("configs/default.py", [f"data.data_dir={data_dir}", "train.steps=120", "train.eval_every=60",
                                                "train.checkpoint_every=120", "mesh.data=1"], tmp_path)
  evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
  assert len(evals) == 2 and evals[0] > evals[1]  # validation loss falls between step 60 and 120
  assert evals[-1] < 0.6 * np.log(256)            # far below the uniform-guess loss


def test_metrics_survive_a_line_cut_short_by_a_kill(tmp_path):
  """A kill mid-write leaves half a JSON line: reading skips it, and a resume drops it with the later steps."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  writer = MetricWriter(str(tmp_path), total_steps=10, first_step=1, progress="log")
  writer.write(2, {"loss": 1.25})
  writer.close()
  assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.25}]


def test_a_signal_during_evaluation_still_saves_the_step_it_stops_at(tiny, tmp_path, monkeypatch, caplog):
  """SIGTERM landing while an evaluation is written (log_every=1: some blocking work every step) is not lost:
  the run stops at the next step with that step saved, and says so only then."""

  class SignalDuringEval(MetricWriter):
    def write(self, step, metrics):
      super().write(step, metrics)
      if "eval_loss" in metrics and step == 4:
        os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train, "MetricWriter", SignalDuringEval)
  c = tiny(train__steps=40, train__log_every=1, train__eval_every=2, train__checkpoint_every=1000)
  summary = train.train(c, str(tmp_path), devices=ONE)
  assert summary["stopped_by"] == "SIGTERM" and summary["step"] < 40
  stopped = summary["step"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(stopped)]
  assert f"received SIGTERM: saved step {stopped}" in caplog.text
  assert train.train(tiny(train__steps=stopped + 2), str(tmp_path), devices=ONE)["step"] == stopped + 2


def test_first_row_after_a_start_or_resume_reports_no_zero_step_time(tiny, tmp_path):
  """The first step compiles and is left out of the throughput figures: a row with no timed step has none."""
  c = dict(train__log_every=1, train__checkpoint_every=2, optim__warmup_steps=1)
  train.train(tiny(train__steps=4, **c), str(tmp_path), devices=ONE)
  train.train(tiny(train__steps=8, **c), str(tmp_path), devices=ONE)
  rows = {r["step"]: r for r in read_metrics(str(tmp_path)) if "loss" in r}
  assert sorted(rows) == list(range(1, 9))
  for first in (1, 5):  # after the start, after the resume from step 4
    assert not {"step_time", "tokens_per_second", "mfu"} & set(rows[first]), rows[first]
  timed = [r for s, r in rows.items() if s not in (1, 5)]
  assert all(r["step_time"] > 1e-4 and np.isfinite(r["mfu"]) for r in timed)


def test_resume_refuses_a_new_model_field_changed_and_other_data(tiny, tmp_path):
  """Every model field not declared free to change is semantic, including ones added later; and a resume that
  changes the data setup is refused naming the field."""
  c = tiny(train__steps=10)
  c.model.made_up_field = 1  # a field this code does not know about
  train.train(c, str(tmp_path), devices=ONE)
  c = tiny(train__steps=20)
  c.model.made_up_field = 2
  with pytest.raises(cfg_lib.ConfigError, match=r"model.made_up_field: checkpoint 1 vs config 2"):
    train.train(c, str(tmp_path), devices=ONE)
  with pytest.raises(cfg_lib.ConfigError, match=r"trained on other data \(global_batch: checkpoint 8 vs config 16\)"):
    train.train(tiny(train__steps=20, train__global_batch=16), str(tmp_path), devices=ONE)
  with pytest.raises(cfg_lib.ConfigError, match=r"trained on other data \(seq_len: checkpoint 32 vs config 16\)"):
    train.train(tiny(train__steps=20, data__seq_len=16), str(tmp_path), devices=ONE)
  with pytest.raises(cfg_lib.ConfigError, match=r"trained on other data \(seed: checkpoint 0 vs config 1\)"):
    train.train(tiny(train__steps=20, seed=1), str(tmp_path), devices=ONE)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


def test_mix_ln_split_is_compared_as_its_layer_count():
  """α = 0.25 of 8 layers and a count of 2 are the same model; a count of 3 is not; under pre neither matters."""
  m = cfg_lib.base().model
  m.update(num_layers=8)
  m.norm.update(placement="mix", mix_post_fraction=0.25)
  saved, same, other = m.to_dict(), m.to_dict(), m.to_dict()
  same["norm"].update(mix_post_fraction=0.0, mix_post_layers=2)
  other["norm"].update(mix_post_layers=3)
  checkpoint._check_compatible({}, {}, saved, same, "ckpt")
  with pytest.raises(cfg_lib.ConfigError, match=r"mix_post_layers \(resolved\): checkpoint 2 vs config 3"):
    checkpoint._check_compatible({}, {}, saved, other, "ckpt")
  for d in (saved, other):
    d["norm"]["placement"] = "pre"
  checkpoint._check_compatible({}, {}, saved, other, "ckpt")


def test_raising_steps_warns_that_the_schedule_reshapes(tiny, tmp_path, caplog):
  train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  train.train(tiny(train__steps=12), str(tmp_path), devices=ONE)
  assert "train.steps changed from 10 (checkpoint) to 12" in caplog.text
  assert "set optim.schedule_steps=10 to keep the checkpoint's schedule" in caplog.text


def test_a_read_error_that_is_not_damage_is_retried_then_reported(tiny, tmp_path, monkeypatch):
  """Only damage sets a step aside; another error (here MemoryError) is retried, and if it persists reported with
  nothing moved; one that passes on a retry restores normally."""
  train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  real_restore = checkpoint.ocp.StandardCheckpointHandler.restore
  calls = []

  def flaky(self, *a, **kw):
    calls.append(1)
    if len(calls) <= failures:
      raise MemoryError("out of host memory")
    return real_restore(self, *a, **kw)

  monkeypatch.setattr(checkpoint.ocp.StandardCheckpointHandler, "restore", flaky)
  monkeypatch.setattr(checkpoint.time, "sleep", lambda s: None)
  failures = checkpoint.RETRIES + 1
  with pytest.raises(checkpoint.CheckpointError, match=r"step 10 .* \(MemoryError: out of host memory\) and this is "
                                                       "no sign of damage: nothing was moved"):
    train.train(tiny(train__steps=12), str(tmp_path), devices=ONE)
  assert len(calls) == checkpoint.RETRIES + 1 and not os.path.exists(tmp_path / "corrupt_checkpoints")
  calls.clear()
  failures = 1
  assert train.train(tiny(train__steps=12), str(tmp_path), devices=ONE)["step"] == 12
  assert not os.path.exists(tmp_path / "corrupt_checkpoints")


def test_evaluation_keeps_a_bounded_number_of_steps_in_flight():
  """64 eval batches queued without waiting crashed XLA's CPU collectives on 8 devices: at most EVAL_IN_FLIGHT
  eval steps may be queued and not yet waited for."""
  queued, most = [], []

  class Result(np.ndarray):
    def block_until_ready(self):  # in-order execution: waiting for this one finishes all before it
      queued.clear()
      return self

  def eval_step(params, batch):
    queued.append(batch)
    most.append(len(queued))
    return np.array([2.0 * batch, 4.0]).view(Result)

  out = step_lib.evaluate_batches(eval_step, None, list(range(64)))
  assert out["eval_loss"] == pytest.approx(sum(2.0 * b for b in range(64)) / (4.0 * 64))
  assert max(most) == step_lib.EVAL_IN_FLIGHT


def test_bfloat16_compute_tracks_float32_with_float32_logits(tiny):
  """Mixed precision: float32 master weights and moments, bfloat16 matmuls, the LM head's logits in float32."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jaxtrain import model  # pylint: disable=import-outside-toplevel
  c = tiny(model__compute_dtype="bfloat16", model__tie_embeddings=False)
  params = model.init(c.model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
  logits = nnx.merge(model.abstract(c.model)[0], params)(tokens)
  assert logits.dtype == np.float32
  rounded = logits.astype(jax.numpy.bfloat16).astype(np.float32)  # what rounding the head's output would give
  assert np.abs(logits - rounded).max() > 0
  x = np.random.default_rng(0).integers(0, 256, (8, 33), dtype=np.int32)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}  # one batch, learned by heart: the loss falls far
  runs = {}
  for dtype in ("float32", "bfloat16"):
    prog = train.build(tiny(model__compute_dtype=dtype), sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, ONE))
    state, runs[dtype] = prog.init(jax.random.key(0)), []
    for _ in range(30):
      state, metrics = prog.train_step(state, batch)
      runs[dtype].append(float(metrics["loss"]))
  assert runs["float32"][-1] < runs["float32"][0] - 0.5  # both learn ...
  np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=0.02)  # ... and stay within 2% of each other
