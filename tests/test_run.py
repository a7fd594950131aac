"""The notebook API (jaxtrain/run.py, sample.py, analysis.py, the lazy `jaxtrain` attributes) against one tiny run
trained once, by the CLI, on an FSDP×tensor mesh of 8 simulated devices, read back on one device. Also runs every
example of docs/notebooks.md."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxtrain as jt
import multihost
from test_bucket import BUCKET, gcs  # noqa: F401  # pylint: disable=unused-import  # the GCS emulator fixture
from jaxtrain import analysis, checkpoint, sample, sharding, train
from jaxtrain.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_ROWS = 8  # train.eval_batches · train.global_batch: what the trainer's eval_loss averages over


@pytest.fixture(scope="module")
def workdir(data_dir, tmp_path_factory):
  """A 4-step run with checkpoints at steps 2 and 4 on a 4×2 FSDP×tensor mesh, trained by `python -m jaxtrain` in a
  process of its own (compiled with LLVM's optimizations off: half the CPU time)."""
  directory = tmp_path_factory.mktemp("run")
  config = multihost.config_file(directory, data_dir, **{
      "train.steps": 4, "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 2,
      "train.eval_batches": 1, "optim.warmup_steps": 1, "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2})
  path = str(directory / "tiny")
  multihost.run(config, path, processes=1, devices=8)
  return path


def listing(path):
  return sorted((os.path.relpath(os.path.join(d, f), path), os.stat(os.path.join(d, f)).st_mtime_ns)
                for d, dirs, files in os.walk(path) for f in files + dirs)


def rows_of(run, key):
  m = run.metrics
  return m.dropna(subset=[key]).set_index("step")[key] if key in m else None


def test_load_run_reads_what_the_trainer_saved(workdir, tmp_path):
  run = jt.load_run(workdir)
  assert run.steps == [2, 4] and run.name == "tiny" and run.workdir == workdir
  assert run.config.model.d_model == 32 and run.config.mesh.fsdp == 4 and run.config.train.steps == 4
  m = run.metrics
  assert "step" in m and {"loss", "eval_loss", "learning_rate"} <= set(m.columns)
  evals = rows_of(run, "eval_loss")
  assert list(evals.index) == [2, 4]

  # The parameters equal what the trainer's own restore reads (on the 8-device mesh it trained on), exactly.
  model = run.model()
  assert model.step == 4 and model.params["blocks"]["attn"]["wq"]["w"].shape == (2, 32, 4, 8)
  assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(model.params))
  shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")  # the trainer's reader may write
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=5)
  try:
    restored = ckpt.restore_latest(train.build(run.config, mesh).abstract_state, run.config.model.to_dict())
  finally:
    ckpt.close()
  assert restored.step == 4
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               jax.device_get(restored.state["params"]), jax.device_get(model.params))

  # The forward pass on one device reproduces the eval losses the trainer logged on the mesh.
  batch = run.eval_batch(EVAL_ROWS)
  for step in (2, 4):
    np.testing.assert_allclose(analysis.loss(run.model(step), batch), evals[step], rtol=2e-6)
  tokens = model.tokenizer.encode("def main():")[None]
  assert model(tokens).dtype == np.float32 and model(tokens).shape == (1, 11, 256)


def test_each_step_has_its_own_model(workdir, tmp_path):
  """A run that grew: every checkpoint is read with the config stored beside it (here a step 6 written by the
  trainer's own Checkpointer with the MLP doubled, function-preserving)."""
  shutil.copytree(workdir, tmp_path / "grown")
  run = jt.load_run(str(tmp_path / "grown"))
  small = run.model(4)
  params = jax.device_get(small.params)  # the MLP doubled by hand: new hidden units in with zeros, out with zeros
  mlp = params["blocks"]["mlp"]
  mlp["wi"]["w"] = np.concatenate([mlp["wi"]["w"], np.zeros_like(mlp["wi"]["w"])], axis=-1)
  mlp["down"]["w"] = np.concatenate([mlp["down"]["w"], np.zeros_like(mlp["down"]["w"])], axis=-2)
  big_config = run.config_at(4)
  big_config.model.mlp_dim = 128
  ckpt = checkpoint.Checkpointer(str(tmp_path / "grown" / "checkpoints"), keep=5, async_save=False)
  ckpt.save(6, {"params": params}, {}, json.loads(big_config.to_json_best_effort()))
  ckpt.close()
  assert run.steps == [2, 4, 6]
  big = run.model()
  assert big.step == 6 and big.config.model.mlp_dim == 128 and run.model(4).config.model.mlp_dim == 64
  assert jt.load_run(str(tmp_path / "grown")).config.model.mlp_dim == 128  # the newest checkpoint's config
  tokens = small.tokenizer.encode("def main():")[None]
  np.testing.assert_allclose(np.asarray(big(tokens)), np.asarray(small(tokens)), rtol=1e-4, atol=1e-5)


def test_never_writes_a_running_run_and_bad_input(workdir, tmp_path):
  before = listing(workdir)
  run = jt.load_run(workdir)
  run.model(2), run.metrics, run.generate("x", max_new_tokens=2)
  assert listing(workdir) == before

  # A run still training: an unfinished save (Orbax's tmp dir) and a metrics line being written are not read.
  live = tmp_path / "live"
  shutil.copytree(workdir, live)
  shutil.copytree(live / "checkpoints" / "4", live / "checkpoints" / "6.orbax-checkpoint-tmp-1795960480")
  with open(live / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "loss": 1.')
  run = jt.load_run(str(live))
  assert run.steps == [2, 4] and run.metrics["step"].max() == 4
  with open(live / "metrics.jsonl", "a") as f:
    f.write('0}\n')
  assert run.metrics["step"].max() == 6  # re-read once the file changed

  # Bad input: one line each, naming what is there.
  with pytest.raises(ConfigError, match=r"^load_run: workdir \S+nowhere does not exist$"):
    jt.load_run(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match=r"no complete checkpoint in \S+empty/checkpoints; train it first"):
    jt.load_run(str(tmp_path / "empty"))
  with pytest.raises(ConfigError, match=r"is inside a run's checkpoints; name its workdir: load_run\('\S+/tiny'\)$"):
    jt.load_run(os.path.join(workdir, "checkpoints", "4"))
  with pytest.raises(ConfigError, match=r"has no checkpoint at step 3; its checkpoints: 2, 4$"):
    run.model(3)
  with pytest.raises(ConfigError, match="no checkpoint at step 6; its checkpoints: 2, 4"):
    run.generate("x", step=6)


def test_a_bucket_workdir(gcs, workdir):  # pylint: disable=redefined-outer-name
  """The same run copied into a bucket (the GCS emulator) opens the same: steps, metrics, parameters."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  url = f"gs://{BUCKET}/runs/tiny-copy"
  for d, _, files in os.walk(workdir):
    for f in files:
      with open(os.path.join(d, f), "rb") as local_file:
        (epath.Path(url) / os.path.relpath(os.path.join(d, f), workdir)).write_bytes(local_file.read())
  run, local = jt.load_run(url), jt.load_run(workdir)
  assert run.steps == [2, 4] and run.name == "tiny-copy" and run.metrics.equals(local.metrics)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.model(2).params),
               jax.device_get(local.model(2).params))
  with pytest.raises(ConfigError, match="no checkpoint at step 3; its checkpoints: 2, 4"):
    run.model(3)


def test_generate(workdir):
  run = jt.load_run(workdir)
  model = run.model(2)
  V, max_len = 256, model.config.model.max_seq_len
  prompt = model.tokenizer.encode("def main():\n    return")

  def rollout(tokens, n):  # greedy, the slow way: the whole (last max_len tokens of the) sequence every step
    tokens = list(tokens)
    for _ in range(n):
      window = tokens[-max_len:]
      padded = np.zeros((1, max_len), np.int32)  # one shape, one compilation; causal: the padding is not seen
      padded[0, :len(window)] = window
      tokens.append(int(np.argmax(np.asarray(model(padded))[0, len(window) - 1])))
    return tokens[-n:]

  greedy = sample.generate(model, prompt, 12, temperature=0.0)[0]
  assert greedy[:3].tolist() == rollout(prompt, 3)
  assert sample.generate(model, prompt, 3, temperature=0.0)[0].tolist() == greedy[:3].tolist()  # another window
  assert sample.generate(model, prompt, 12, temperature=1.0, top_k=1)[0].tolist() == greedy.tolist()
  long = np.arange(1, max_len - 2) % 50 + 40  # runs past max_seq_len: the cache fills, then the window slides
  assert sample.generate(model, long, 5, temperature=0.0)[0].tolist() == rollout(long, 5)
  assert sample.generate(model, long, 5, temperature=0.0, method="window")[0].tolist() == rollout(long, 5)
  # The KV cache (the default) and the windowed reference draw the same tokens from the trained model.
  assert (sample.generate(model, prompt, 16, temperature=0.0, method="window")[0] == sample.generate(
      model, prompt, 16, temperature=0.0)[0][:16]).all()

  a = sample.generate(model, prompt, 16, temperature=1.0, seed=1)
  assert (a == sample.generate(model, prompt, 16, temperature=1.0, seed=1)).all()
  assert (a != sample.generate(model, prompt, 16, temperature=1.0, seed=2)).any()
  assert a.shape == (1, 16) and ((0 <= a) & (a < V)).all()
  # top-k: every token drawn is among the k most likely at its position (checked on the rollout's logits).
  top3 = sample.generate(model, prompt, 16, temperature=5.0, top_k=3, seed=0)[0]
  seq = np.concatenate([prompt, top3])
  padded = np.zeros((1, max_len), np.int32)
  padded[0, :len(seq)] = seq
  logits = np.asarray(model(padded))[0]
  ranks = [(logits[len(prompt) - 1 + i] > logits[len(prompt) - 1 + i, t]).sum() for i, t in enumerate(top3)]
  assert max(ranks) <= 2 and len(set(top3.tolist())) > 1
  assert (sample.generate(model, prompt, 16, temperature=5.0, seed=0)[0] != top3).any()

  text = run.generate("def main():\n    return", max_new_tokens=12, temperature=0, step=2)
  assert text == model.tokenizer.decode(greedy[:np.argmax(greedy == 0)] if (greedy == 0).any() else greedy)
  assert run.generate("", max_new_tokens=4, seed=3) == run.generate("", max_new_tokens=4, seed=3)
  assert run.generate("def main():\n    return", max_new_tokens=12, temperature=0, step=2, method="window") == text
  with pytest.raises(ValueError, match="more than the KV cache") as e:  # the cache holds model.max_seq_len tokens
    run.generate("x" * (max_len + 1), max_new_tokens=2)
  assert "\n" not in str(e.value)
  assert len(run.generate("x" * (max_len + 1), max_new_tokens=2, temperature=0, method="window")) <= 2
  with pytest.raises(ValueError, match="temperature=-1"):
    sample.generate(model, prompt, 3, temperature=-1)


def test_analysis(workdir):
  run = jt.load_run(workdir)
  model = run.model()
  L, batch = model.num_layers, run.eval_batch(8)  # the README's batch: the same compiled programs
  full = analysis.loss(model, batch)

  # Logit lens: the last entry is the model's own loss; entry ℓ is the loss of the model cut after ℓ layers, which
  # for Pre-LN is the model with the output projections of layers ≥ ℓ zeroed (those blocks add nothing).
  params = jax.device_get(model.params)  # numpy: the test's own arithmetic compiles nothing

  def without(layers):
    blocks = jax.tree.map(lambda x: x, params["blocks"])
    keep = np.isin(np.arange(L), layers, invert=True).astype(np.float32)
    for path in (("attn", "wo"), ("mlp", "down")):
      w = blocks[path[0]][path[1]]["w"]
      blocks[path[0]][path[1]]["w"] = w * keep.reshape(-1, *[1] * (w.ndim - 1))
    return dataclasses.replace(model, params={**params, "blocks": blocks})

  lens = analysis.logit_lens(model, batch)
  assert lens["loss"].shape == lens["accuracy"].shape == (L + 1,)
  np.testing.assert_allclose(lens["loss"][-1], full, rtol=1e-6)
  np.testing.assert_allclose(lens["loss"][1], analysis.loss(without(range(1, L)), batch), rtol=1e-5)

  # Skip drop: layer ℓ replaced by the identity is the same zeroing of its outputs.
  drops = analysis.skip_drop(model, batch)
  assert drops.shape == (L,)
  np.testing.assert_allclose(drops[0], analysis.loss(without([0]), batch) - full, rtol=1e-4, atol=1e-6)

  ang = analysis.angular_distances(model, batch)
  assert ang.shape == (L, L) and np.isnan(ang[L - 1, 1:]).all() and (0 <= ang[0]).all() and (ang[0] <= 1).all()
  assert analysis.residual_states(model, batch).shape == (L + 1, 8, batch["inputs"].shape[1], 32)

  stats = analysis.layer_stats(model, batch)
  assert set(stats) == {"resid_rms", "resid_var", "resid_max_abs", "update_rms", "attn_max_logit", "weight_norm"}
  assert all(v.shape == (L,) and np.isfinite(v).all() for v in stats.values())
  np.testing.assert_allclose(stats["weight_norm"], np.sqrt(sum(np.sum(np.square(x), axis=tuple(range(1, x.ndim)))
                                                            for x in jax.tree.leaves(params["blocks"]))), rtol=1e-5)
  assert (stats["resid_max_abs"] >= stats["resid_rms"]).all()

  c = analysis.collapse_stats(model, batch)
  np.testing.assert_allclose(c["loss"], full, rtol=1e-6)
  np.testing.assert_allclose(c["param_norm"], np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(params))),
                             rtol=1e-5)
  assert c["sc_fraction"] == 0 and c["zero_loss_fraction"] == 0 and "grad_weight_cos" not in c
  # Logits scaled far up (the tied embedding ×1e4: the final norm undoes it on the way in, not on the way out):
  # every token's softmax collapses, the ones predicted right have loss exactly 0.
  big = dataclasses.replace(model, params={**params, "embed": params["embed"] * 1e4})
  c = analysis.collapse_stats(big, batch)
  assert c["sc_fraction"] == 1 and c["zero_loss_fraction"] == pytest.approx(c["accuracy"]) and c["accuracy"] > 0
  # The gradient-weight cosine: the collapsed tokens give no gradient, the others push the logits' scale down
  # (their loss is huge), so the gradient points along the weights: cos > 0 (a descent step shrinks them).

  # Edge cases: one sequence of two tokens, a string, 1-d tokens; and bad batches, one line each.
  text = "x="
  ids = model.tokenizer.encode(text)
  assert analysis.loss(model, text) == analysis.loss(model, ids) == analysis.loss(model, ids[None])
  assert np.isfinite(analysis.loss(model, ids))
  for bad, match in (([[5]], r"shape \(1, 1\)"), ([[1, 300]], r"outside the vocabulary \[0, 256\)"),
                     (np.zeros((1, 4)), "integer token ids"), ({"inputs": ids[None]}, "needs 'inputs' and 'targets'")):
    with pytest.raises(ValueError, match=match):
      analysis.loss(model, bad)


def test_readme_examples_run(workdir):
  """Every python block of docs/notebooks.md, in order, against the tiny run."""
  with open(os.path.join(REPO, "docs", "notebooks.md"), encoding="utf-8") as f:
    section = f.read()
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) >= 3
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  scope = {}
  for block in blocks:
    code = block.replace('"runs/default"', repr(workdir)).replace('"runs/mix"', repr(workdir))
    exec(code, scope)  # pylint: disable=exec-used
  assert scope["run"].steps == [2, 4] and list(scope["evals"]["step"]) == [2, 4]
  np.testing.assert_allclose(np.asarray(scope["big_logits"]), np.asarray(scope["logits"]), rtol=1e-4, atol=1e-5)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.close("all")


def test_import_jaxtrain_is_lazy():
  subprocess.run([sys.executable, "-c", "import sys, jaxtrain; assert 'jax' not in sys.modules, 'jax imported'"],
                 check=True, cwd=REPO)
  from jaxtrain import plots, run  # pylint: disable=import-outside-toplevel
  assert jt.load_run is run.load_run and jt.Run is run.Run and jt.analysis is analysis and jt.plots is plots
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    jt.nope  # pylint: disable=pointless-statement
