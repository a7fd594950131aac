"""Downstream tasks scored by log-likelihood, as lm-evaluation-harness scores them: task files, requests, metrics.

A task is a JSONL file on disk, one document per line, each with a `type`:

    {"type": "multiple_choice", "context": "The capital of France is", "choices": [" Paris", " Rome"], "label": 0}
    {"type": "perplexity", "text": "A whole document, scored token by token."}

multiple_choice: the log-likelihood of each choice given the context, summed over the choice's tokens
(lm-eval's `output_type: multiple_choice`). The context and choice are joined as they are (write the space
into the choices, as lm-eval's default `target_delimiter: " "` does); `acc` is 1 where the most likely choice
is `label`, `acc_norm` where the most likely per character is (log-likelihood / len(choice), lm-eval's
acc_norm). perplexity: the document's log-likelihood under lm-eval's `loglikelihood_rolling`: disjoint windows
of the model's length, the first conditioned on the end-of-document token, each next one on the token before
it; `token_perplexity` = exp(−Σ ll / Σ tokens), `word_perplexity` and `byte_perplexity` the same per
whitespace-separated word and per UTF-8 byte, `bits_per_byte` = −Σ ll / Σ bytes / ln 2 (lm-eval's wikitext
metrics, weighted over the documents).

Tokenization follows lm-eval's HFLM: context + continuation is encoded whole and split after the context's
tokens (trailing whitespace of the context moved onto the continuation); an empty context is the
end-of-document token; a context longer than the window loses tokens on the left: the model reads
(context + continuation)[−(W+1):][:−1] (`_loglikelihood_tokens`). Requests are scored in batches of padded,
power-of-two lengths, so each shape compiles once.

lm-evaluation-harness: https://github.com/EleutherAI/lm-evaluation-harness (lm_eval/models/huggingface.py,
lm_eval/utils.py get_rolling_token_windows, lm_eval/api/task.py, lm_eval/api/metrics.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import paths, sharding

TYPES = ("multiple_choice", "perplexity")
FIELDS = {"multiple_choice": ("context", "choices", "label"), "perplexity": ("text",)}
MIN_BUCKET = 16  # the shortest padded length: short requests share one compiled shape


@dataclasses.dataclass(frozen=True)
class Task:
  """One task file: its name (the file's stem), path and documents (each a dict with its `type` and `line`)."""
  name: str
  path: str
  docs: tuple


class Request(NamedTuple):
  """One log-likelihood to compute: of `continuation` (token ids) after `context` (token ids, not empty)."""
  context: tuple
  continuation: tuple


def _error(path, line, message):
  return cfg_lib.ConfigError(f"task file {path} line {line}: {message}")


def load_task(path: str) -> Task:
  """Reads and checks one task file (ConfigError naming the file and line on bad input)."""
  p = paths.resolve(path)
  if not p.exists():
    raise cfg_lib.ConfigError(f"task file {path} does not exist; pass --tasks=FILE.jsonl[,FILE2.jsonl] or a directory")
  docs = []
  for n, raw in enumerate(p.read_text().splitlines(), 1):
    if not raw.strip():
      continue
    try:
      doc = json.loads(raw)
    except json.JSONDecodeError as e:
      raise _error(path, n, f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict):
      raise _error(path, n, f"a line must be a JSON object, not {type(doc).__name__}")
    kind = doc.get("type")
    if kind is None:
      raise _error(path, n, f"missing field 'type' (one of {', '.join(TYPES)})")
    if kind not in TYPES:
      raise _error(path, n, f"unknown task type {kind!r}; choose one of {', '.join(TYPES)}")
    for field in FIELDS[kind]:
      if field not in doc:
        raise _error(path, n, f"missing field {field!r} ({kind} needs {', '.join(FIELDS[kind])})")
    if kind == "multiple_choice":
      choices, label = doc["choices"], doc["label"]
      if not isinstance(doc["context"], str):
        raise _error(path, n, "'context' must be a string")
      if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise _error(path, n, "'choices' must be a list of non-empty strings")
      if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise _error(path, n, f"'label'={label!r} must be the index of the right choice, 0 to {len(choices) - 1}")
    elif not isinstance(doc["text"], str) or not doc["text"]:
      raise _error(path, n, "'text' must be a non-empty string")
    docs.append(dict(doc, line=n))
  if not docs:
    raise cfg_lib.ConfigError(f"task file {path} is empty: it needs one JSON document per line "
                              "(docs/evaluation.md#task-files)")
  return Task(os.path.splitext(p.name)[0], str(path), tuple(docs))


def task_files(spec) -> list[str]:
  """The files of a --tasks value: comma-separated JSONL files, or directories (their *.jsonl, sorted)."""
  names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
  if not names:
    raise cfg_lib.ConfigError("no task files given: pass --tasks=FILE.jsonl[,FILE2.jsonl] or a directory")
  out = []
  for name in names:
    p = paths.resolve(name)
    if p.is_dir():
      found = sorted(str(f) for f in p.glob("*.jsonl"))
      if not found:
        raise cfg_lib.ConfigError(f"task directory {name} has no *.jsonl files")
      out += found
    else:
      out.append(name)
  return out


def load_tasks(spec) -> list[Task]:
  tasks = [load_task(f) for f in task_files(spec)]
  seen = {}
  for t in tasks:
    if t.name in seen:
      raise cfg_lib.ConfigError(f"two task files are named {t.name!r} ({seen[t.name]}, {t.path}); rename one")
    seen[t.name] = t.path
  return tasks


# ---------------------------------------------------------------- requests, as lm-eval's HFLM builds them


def encode_pair(tok, context: str, continuation: str) -> Request:
  """lm-eval's `_encode_pair` (and `loglikelihood`'s empty context: the end-of-document token)."""
  if context == "":
    return Request((tok.eos_id,), tuple(int(i) for i in tok.encode(continuation)))
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
  whole = [int(i) for i in tok.encode(context + continuation)]
  n = len(tok.encode(context))
  return Request(tuple(whole[:n]), tuple(whole[n:]))


def rolling_windows(tokens, prefix: int, max_len: int) -> list[Request]:
  """lm-eval's `get_rolling_token_windows(context_len=1)` then `make_disjoint_window`: every token predicted once."""
  tokens = [int(t) for t in tokens]
  out = []
  first = min(max_len, len(tokens))
  windows = [([prefix] + tokens[:first - 1], tokens[:first])]
  predicted = first
  while predicted < len(tokens):
    n = min(len(tokens) - predicted, max_len)
    end = predicted + n
    windows.append((tokens[max(end - max_len - 1, 0):end - 1], tokens[end - n:end]))
    predicted += n
  for ctx, cont in windows:  # make_disjoint_window
    out.append(Request(tuple(ctx[:len(ctx) - (len(cont) - 1)]), tuple(cont)))
  return out


def task_requests(task: Task, tok, max_len: int) -> list[list[Request]]:
  """Per document, its requests: one per choice (multiple_choice), one per window (perplexity)."""
  out = []
  for doc in task.docs:
    if doc["type"] == "multiple_choice":
      reqs = [encode_pair(tok, doc["context"], c) for c in doc["choices"]]
      for i, r in enumerate(reqs):
        if len(r.continuation) > max_len:
          raise _error(task.path, doc["line"], f"choice {i} is {len(r.continuation)} tokens, longer than the "
                       f"model's window of {max_len}")
        if not r.continuation:
          raise _error(task.path, doc["line"], f"choice {i} encodes to no tokens")
    else:
      reqs = rolling_windows(tok.encode(doc["text"]), tok.eos_id, max_len)
    out.append(reqs)
  return out


def arrays(reqs: list[Request], max_len: int, batch: int, length: int):
  """inputs, targets int32 [batch, length] and mask float32: (context + continuation)[−(W+1):], shifted by one;
  the mask marks the continuation's positions. Rows past len(reqs) are padding (mask 0)."""
  inputs, targets = np.zeros((batch, length), np.int32), np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.float32)
  for i, r in enumerate(reqs):
    seq = (r.context + r.continuation)[-(max_len + 1):]
    n, k = len(seq) - 1, len(r.continuation)
    inputs[i, :n], targets[i, :n] = seq[:-1], seq[1:]
    mask[i, n - k:n] = 1.0
  return inputs, targets, mask


def bucket(n: int, max_len: int) -> int:
  """The padded length of a batch whose longest input is n tokens: a power of two, at least MIN_BUCKET, at most W."""
  return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), max_len)


def loglikelihood(logits_BTV, targets_BT, mask_BT):
  """Σ over the masked positions of log p(target), per row: float32 [B]."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  ll_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(ll_BT * mask_BT, axis=-1)


def score(reqs: list[Request], loglik: Callable, max_len: int, batch_size: int) -> np.ndarray:
  """The log-likelihood of each request (float64), longest first in batches of `batch_size` (padded rows and
  lengths); `loglik(inputs_BT, targets_BT, mask_BT) -> ll_B` runs the model."""
  order = sorted(range(len(reqs)), key=lambda i: -min(len(reqs[i].context) + len(reqs[i].continuation) - 1, max_len))
  out = np.zeros(len(reqs), np.float64)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    chunk = [reqs[i] for i in idx]
    longest = max(min(len(r.context) + len(r.continuation) - 1, max_len) for r in chunk)
    ll = np.asarray(loglik(*arrays(chunk, max_len, batch_size, bucket(longest, max_len))), np.float64)
    out[idx] = ll[:len(idx)]
  return out


def metrics(task: Task, per_doc: list[np.ndarray], tok) -> dict:
  """The task's metrics from each document's request log-likelihoods (see the module docstring)."""
  out = {}
  mc = [(d, ll) for d, ll in zip(task.docs, per_doc) if d["type"] == "multiple_choice"]
  if mc:
    acc = [float(np.argmax(ll) == d["label"]) for d, ll in mc]
    lengths = lambda d: np.array([float(len(c)) for c in d["choices"]])
    acc_norm = [float(np.argmax(ll / lengths(d)) == d["label"]) for d, ll in mc]
    out |= {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "docs": len(mc)}
  pp = [(d, float(np.sum(ll))) for d, ll in zip(task.docs, per_doc) if d["type"] == "perplexity"]
  if pp:
    ll = sum(x for _, x in pp)
    tokens = sum(len(tok.encode(d["text"])) for d, _ in pp)
    words = sum(len(re.split(r"\s+", d["text"])) for d, _ in pp)  # lm-eval's wikitext _count_words
    nbytes = sum(len(d["text"].encode("utf-8")) for d, _ in pp)
    ppl = lambda n: math.exp(min(-ll / n, 700.0))
    out |= {"token_perplexity": ppl(tokens), "word_perplexity": ppl(words), "byte_perplexity": ppl(nbytes),
            "bits_per_byte": -ll / nbytes / math.log(2), "loglikelihood": ll, "perplexity_docs": len(pp)}
  return out


def evaluate(tasks: list[Task], tok, loglik: Callable, max_len: int, batch_size: int = 16,
             with_loglikelihoods: bool = False) -> dict:
  """{task name: {metric: value}} for every task; `loglik` as in `score`. With `with_loglikelihoods`, each task's
  dict also has `loglikelihoods`: per document, the list of its requests' (choices') log-likelihoods."""
  results = {}
  for task in tasks:
    per_doc = task_requests(task, tok, max_len)
    flat = [r for reqs in per_doc for r in reqs]
    ll = score(flat, loglik, max_len, batch_size)
    splits = np.cumsum([len(reqs) for reqs in per_doc])[:-1]
    lls = np.split(ll, splits)
    results[task.name] = metrics(task, lls, tok)
    if with_loglikelihoods:
      results[task.name]["loglikelihoods"] = [x.tolist() for x in lls]
  return results


def check(config, target: cfg_lib.Target) -> None:  # pylint: disable=unused-argument
  """train.downstream_tasks: every file readable and well-formed, before anything compiles."""
  spec = config.train.get("downstream_tasks", "")
  if spec:
    load_tasks(spec)


TRAINING_METRICS = ("acc", "acc_norm", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def in_training(tasks: list[Task], tok, mesh, max_len: int, batch_size: int = 16):
  """score(graphdef, params) -> {'downstream/<task>/<metric>': value}: the tasks scored by the training run's own
  sharded parameters on its mesh (train.downstream_tasks, at each evaluation).

  Every host calls it with the same requests (task files are read by all): the inputs are replicated global arrays,
  the log-likelihoods a replicated output, so all hosts compute the same numbers. The batch is rounded up to a
  multiple of the data-parallel size (the activations' batch sharding). One jitted forward pass per model (a
  growth phase's graphdef) and padded shape.
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = -(-batch_size // shards) * shards
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  put = lambda a: jax.make_array_from_callback(a.shape, replicated, lambda index: a[index])
  jitted = {}

  def score_all(graphdef, params) -> dict:
    if graphdef not in jitted:
      fn = lambda p, x, y, m: loglikelihood(nnx.merge(graphdef, p)(x), y, m)
      jitted[graphdef] = jax.jit(sharding.traced_on(mesh, fn), out_shardings=replicated)
    with jax.set_mesh(mesh):
      loglik = lambda x, y, m: np.asarray(jitted[graphdef](params, put(x), put(y), put(m)))
      results = evaluate(tasks, tok, loglik, max_len, batch)
    return {f"downstream/{task}/{k}": v for task, values in results.items() for k, v in values.items()
            if k in TRAINING_METRICS}

  return score_all
