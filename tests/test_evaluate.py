"""Downstream evaluation (jaxtrain/downstream.py, `python -m jaxtrain.evaluate`): lm-eval's requests (encoding,
rolling windows, left truncation), scores equal to a direct forward pass, accuracy and length-normalized accuracy
by hand, perplexities per token, word and byte, padding and batching invariance, the CLI, bad task files; the same
checkpoint exported to Hugging Face and scored by lm-evaluation-harness agrees (skipped where lm_eval is absent)."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

from jaxtrain import downstream, evaluate, train
from jaxtrain.config import ConfigError
from jaxtrain.run import load_run
from tiny import tiny_config

TASKS = os.path.join(os.path.dirname(__file__), "data", "tasks")
MC, PPL = os.path.join(TASKS, "python_mc.jsonl"), os.path.join(TASKS, "python_ppl.jsonl")


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
  """A tiny run trained 30 steps (the embedded corpus), its last checkpoint at step 30."""
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  c = tiny_config(data_dir, **{"train.steps": 30, "train.checkpoint_every": 30, "train.eval_every": 30})
  train.train(c, workdir, devices=jax.devices()[:1])
  return workdir


def direct_loglik(model, context_ids, continuation_ids):
  """Σ log p(continuation | context) from one unpadded forward pass of the whole sequence, in float64."""
  seq = list(context_ids) + list(continuation_ids)
  pad = [0] * (model.config.model.max_seq_len - len(seq) + 1)  # one shape, one compile: causal, so no effect
  logits = np.asarray(model(np.array([seq[:-1] + pad])), np.float64)[0]
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  k = len(continuation_ids)
  return float(sum(logp[len(seq) - 1 - k + i, continuation_ids[i]] for i in range(k)))


def test_requests_follow_lm_evals_encoding_and_windows():
  """encode_pair moves the context's trailing spaces onto the continuation and reads an empty context as the
  end-of-document token; rolling windows (W = 4 over 10 tokens), by hand from lm-eval's definition."""
  class Tok:  # a character tokenizer
    eos_id = 0
    encode = staticmethod(lambda s: np.array([ord(ch) for ch in s]))
  assert downstream.encode_pair(Tok, "ab ", "c") == ((97, 98), (32, 99))
  assert downstream.encode_pair(Tok, "", "c") == ((0,), (99,))
  got = downstream.rolling_windows(list(range(1, 11)), prefix=0, max_len=4)
  assert got == [((0,), (1, 2, 3, 4)), ((4,), (5, 6, 7, 8)), ((6, 7, 8), (9, 10))]
  assert downstream.rolling_windows([5, 6], prefix=0, max_len=4) == [((0,), (5, 6))]


def test_rolling_windows_equal_lm_evals():
  utils = pytest.importorskip("lm_eval.utils")
  rng = np.random.default_rng(0)
  for n, w in [(1, 4), (7, 4), (8, 4), (33, 8), (100, 16)]:
    tokens = rng.integers(1, 50, n).tolist()
    want = [tuple(map(tuple, utils.make_disjoint_window(x)))
            for x in utils.get_rolling_token_windows(tokens, prefix_token=0, max_seq_len=w, context_len=1)]
    assert downstream.rolling_windows(tokens, 0, w) == want


def test_scores_equal_a_direct_forward_pass(run_dir):
  """Each choice's log-likelihood equals Σ log p from one unpadded forward pass (an empty context: after eos);
  acc and acc_norm from those numbers by hand."""
  out = evaluate.evaluate(run_dir, MC, batch_size=3, with_loglikelihoods=True)
  model = load_run(run_dir).model()
  tok = model.tokenizer
  got = out["tasks"]["python_mc"]
  docs = [json.loads(l) for l in open(MC)]
  acc, acc_norm = [], []
  for doc, lls in zip(docs, got["loglikelihoods"]):
    # lm-eval's split: the context's trailing spaces are scored with the choice ("for i in range(10):\n   ")
    context = doc["context"].rstrip()
    spaces = doc["context"][len(context):]
    ctx = list(tok.encode(context)) or [tok.eos_id]
    want = [direct_loglik(model, ctx, list(tok.encode(spaces + ch))) for ch in doc["choices"]]
    np.testing.assert_allclose(lls, want, rtol=1e-5, atol=1e-4)
    acc.append(np.argmax(want) == doc["label"])
    acc_norm.append(np.argmax(np.array(want) / [len(ch) for ch in doc["choices"]]) == doc["label"])
  assert got["acc"] == pytest.approx(np.mean(acc)) and got["acc_norm"] == pytest.approx(np.mean(acc_norm))
  assert got["docs"] == len(docs) and out["step"] == 30 and out["max_length"] == 64


def test_long_contexts_lose_tokens_on_the_left(run_dir):
  """With a 32-token window, each request reads the last 33 tokens of context + choice, minus the last one."""
  out = evaluate.evaluate(run_dir, MC, max_length=32, with_loglikelihoods=True)
  model = load_run(run_dir).model()
  tok = model.tokenizer
  for doc, lls in zip([json.loads(l) for l in open(MC)], out["tasks"]["python_mc"]["loglikelihoods"]):
    context = doc["context"].rstrip()
    for ch, ll in zip(doc["choices"], lls):
      ctx = list(tok.encode(context)) or [tok.eos_id]
      cont = list(tok.encode(doc["context"][len(context):] + ch))
      seq = (ctx + cont)[-33:]
      assert ll == pytest.approx(direct_loglik(model, seq[:-len(cont)], cont), rel=1e-5, abs=1e-4)


def test_perplexity_in_rolling_windows(run_dir):
  """Perplexity documents in disjoint 16-token windows: the first after eos, each next after the tokens before it
  that fill the window (one for a full window); token, word and byte perplexity and bits per byte by hand."""
  out = evaluate.evaluate(run_dir, PPL, max_length=16, with_loglikelihoods=True)["tasks"]["python_ppl"]
  model = load_run(run_dir).model()
  tok = model.tokenizer
  texts = [json.loads(l)["text"] for l in open(PPL)]
  total = 0.0
  for text, lls in zip(texts, out["loglikelihoods"]):
    ids = list(tok.encode(text))
    want = 0.0
    for s in range(0, len(ids), 16):
      n = min(16, len(ids) - s)
      want += direct_loglik(model, ids[s + n - 17:s] if s else [tok.eos_id], ids[s:s + n])
    assert sum(lls) == pytest.approx(want, rel=1e-5)
    total += want
  tokens = sum(len(tok.encode(t)) for t in texts)
  nbytes = sum(len(t.encode()) for t in texts)
  words = sum(len(re.split(r"\s+", t)) for t in texts)
  assert out["token_perplexity"] == pytest.approx(math.exp(-total / tokens), rel=1e-5)
  assert out["byte_perplexity"] == pytest.approx(math.exp(-total / nbytes), rel=1e-5)
  assert out["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-5)
  assert out["bits_per_byte"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-5)


def test_batching_and_padding_do_not_change_scores(run_dir):
  one = evaluate.evaluate(run_dir, [MC, PPL], batch_size=2, with_loglikelihoods=True)["tasks"]
  many = evaluate.evaluate(run_dir, TASKS, batch_size=7, with_loglikelihoods=True)["tasks"]
  for task in ("python_mc", "python_ppl"):
    for a, b in zip(one[task]["loglikelihoods"], many[task]["loglikelihoods"]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cli_prints_and_writes_the_scores(run_dir, tmp_path, capsys):
  out = tmp_path / "scores.json"
  assert evaluate.main([f"--workdir={run_dir}", f"--tasks={TASKS}", "--output", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "python_mc: acc=" in printed and "acc_norm=" in printed and "python_ppl: token_perplexity=" in printed
  saved = json.loads(out.read_text())
  assert saved["step"] == 30 and set(saved["tasks"]) == {"python_mc", "python_ppl"}


def write(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


@pytest.mark.parametrize("lines, error", [
    (['{"type": "multiple_choice", "context": "a", "choices": [" b", " c"], "label": 0}',
      '{"type": "multiple_choice", "context": "a", "label": 0}'],
     r"task file .*bad.jsonl line 2: missing field 'choices' \(multiple_choice needs context, choices, label\)"),
    (['{"type": "perplexity"}'], r"line 1: missing field 'text'"),
    (['{"context": "a"}'], r"line 1: missing field 'type' \(one of multiple_choice, perplexity\)"),
    (['{"type": "generate_until", "context": "a"}'],
     r"line 1: unknown task type 'generate_until'; choose one of multiple_choice, perplexity"),
    ([], r"task file .*bad.jsonl is empty"),
    (['', '   '], r"task file .*bad.jsonl is empty"),
    (['{"type": "multiple_choice", "context": "a", "choices": [" b"], "label": 1}'], r"line 1: 'label'=1 must be"),
    (['{"type": "perplexity", "text": "a"', ], r"line 1: not JSON"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, lines, error):
  path = write(tmp_path, "bad.jsonl", lines)
  with pytest.raises(ConfigError, match=error) as e:
    downstream.load_tasks(path)
  assert "\n" not in str(e.value)


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
  """A missing task file, or a workdir without checkpoints: exit code 2 and one line, task files checked first."""
  assert evaluate.main([f"--workdir={tmp_path}", f"--tasks={tmp_path / 'none.jsonl'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err == f"jaxtrain.evaluate: error: task file {tmp_path / 'none.jsonl'} does not exist; pass " \
                "--tasks=FILE.jsonl[,FILE2.jsonl] or a directory"
  assert evaluate.main([f"--workdir={tmp_path}", f"--tasks={MC}"]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "no complete checkpoint" in err


def test_lm_eval_on_the_export_agrees(run_dir, tmp_path, monkeypatch):
  """The run exported to Hugging Face (python -m jaxtrain.export) and scored by lm-evaluation-harness's HFLM on
  the same documents, contexts truncated to a 32-token window: the same log-likelihoods (float32 tolerance) and
  rolling log-likelihoods of the perplexity documents; lm-eval's task machinery on the test task file (a local
  YAML task) gives the same acc and acc_norm."""
  pytest.importorskip("lm_eval")
  pytest.importorskip("transformers")
  from lm_eval.api.instance import Instance  # pylint: disable=import-outside-toplevel
  from lm_eval.models.huggingface import HFLM  # pylint: disable=import-outside-toplevel
  from jaxtrain import export  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "hf")
  assert export.main([f"--workdir={run_dir}", f"--out={out}"]) == 0
  ours = evaluate.evaluate(run_dir, [MC, PPL], max_length=32, with_loglikelihoods=True)["tasks"]
  # the byte tokenizer's eos (id 0) is in config.json, not tokenizer_config.json: name lm-eval's prefix token
  lm = HFLM(pretrained=out, device="cpu", batch_size=4, max_length=32, dtype="float32", prefix_token_id=0)
  docs = [json.loads(l) for l in open(MC)]
  reqs = [Instance("loglikelihood", d, (d["context"], ch), i) for d in docs for i, ch in enumerate(d["choices"])]
  theirs = [ll for ll, _ in lm.loglikelihood(reqs)]
  np.testing.assert_allclose(np.concatenate(ours["python_mc"]["loglikelihoods"]), theirs, rtol=1e-4, atol=1e-3)
  texts = [json.loads(l)["text"] for l in open(PPL)]
  rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", t, (t,), 0) for t in texts])
  np.testing.assert_allclose([sum(x) for x in ours["python_ppl"]["loglikelihoods"]], rolling, rtol=1e-4, atol=1e-3)
  # lm-eval's own task machinery on the same file (a local task: the json loader of `datasets`, no network)
  pytest.importorskip("datasets")
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  import lm_eval  # pylint: disable=import-outside-toplevel
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "python_mc_lm.yaml").write_text(
      f"task: python_mc_lm\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {MC}\ntest_split: test\n"
      "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
      'target_delimiter: ""\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
  got = lm_eval.simple_evaluate(model=lm, tasks=["python_mc_lm"],
                                task_manager=TaskManager(include_path=str(tmp_path / "tasks")))["results"]
  assert got["python_mc_lm"]["acc,none"] == pytest.approx(ours["python_mc"]["acc"])
  assert got["python_mc_lm"]["acc_norm,none"] == pytest.approx(ours["python_mc"]["acc_norm"])


def test_downstream_tasks_during_training(data_dir, tmp_path):
  """train.downstream_tasks scores the tasks at each evaluation, on the training mesh (parameters sharded over
  2 devices): the metrics lines carry downstream/<task>/acc ..., equal to the CLI's scores of the checkpoint."""
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py simulates 8)")
  c = tiny_config(data_dir, **{"train.steps": 10, "train.eval_every": 10, "train.checkpoint_every": 10,
                               "train.downstream_tasks": TASKS, "mesh.fsdp": 2})
  train.train(c, str(tmp_path), devices=jax.devices()[:2])
  from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  row = [r for r in read_metrics(str(tmp_path)) if "downstream/python_mc/acc" in r][-1]
  assert row["step"] == 10
  cli = evaluate.evaluate(str(tmp_path), TASKS)["tasks"]
  for task, metric in [("python_mc", "acc"), ("python_mc", "acc_norm"), ("python_ppl", "token_perplexity"),
                       ("python_ppl", "bits_per_byte")]:
    assert row[f"downstream/{task}/{metric}"] == pytest.approx(cli[task][metric], rel=1e-4)


def test_a_bad_downstream_task_file_is_refused_before_training(data_dir, tmp_path):
  from jaxtrain import preflight  # pylint: disable=import-outside-toplevel
  c = tiny_config(data_dir, **{"train.downstream_tasks": write(tmp_path, "t.jsonl", ['{"type": "qa"}'])})
  with pytest.raises(ConfigError, match=r"t.jsonl line 1: unknown task type 'qa'"):
    preflight.validate(c, 1)
