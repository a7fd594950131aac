"""Tests of jaxtrain.data: builders, tokenizers, packed batches, resume, sharding, errors."""

import json
import os
import re
import sys

import ml_collections
import numpy as np
import pytest

from jaxtrain import data
from jaxtrain.data import builders, pipeline

N_DOCS = 60


def make_corpus(root, n=N_DOCS):
  """Files whose text is one unique marker `<iii>` repeated: batches tell which doc they hold."""
  os.makedirs(root, exist_ok=True)
  for i in range(n):
    with open(os.path.join(root, f"doc{i:03d}.txt"), "w") as f:
      f.write(f"<{i:03d}>" * (5 + 7 * (i % 5)))
  return os.path.join(root, "*.txt")


def cfg(tmp_path, **kw):
  """A data config on this test's corpus (made once: rewriting it would change its fingerprint)."""
  corpus = str(tmp_path / "corpus")
  c = ml_collections.ConfigDict(dict(
      name="text_files", data_dir=str(tmp_path / "tfds"), text_key="text", tokenizer="byte",
      train_split="train", eval_split="validation", num_workers=0,
      text_glob=os.path.join(corpus, "*.txt") if os.path.isdir(corpus) else make_corpus(corpus)))
  c.update(kw)
  return c


def markers(batches):
  """Doc ids whose full marker appears in the batches' inputs."""
  tok = data.ByteTokenizer()
  text = "|".join(tok.decode(row) for b in batches for row in b["inputs"])
  return {int(m) for m in re.findall(r"<(\d{3})>", text)}


def take(it, n):
  return [next(it) for _ in range(n)]


def same(a, b):
  return len(a) == len(b) and all(
      np.array_equal(x["inputs"], y["inputs"]) and np.array_equal(x["targets"], y["targets"])
      for x, y in zip(a, b))


def split_ids(c):
  """Doc ids in each split, read back from the prepared dataset."""
  b = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  return {s: {int(ex["text"][1:4]) for ex in b.as_data_source(split=s)} for s in b.info.splits}


def test_byte_tokenizer_roundtrip():
  tok = data.ByteTokenizer()
  text = 'def f(x):\n  return "héllo ✓"\n'
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and tok.vocab_size == 256 and tok.eos_id == 0
  assert tok.decode(ids) == text and len(ids) == len(text.encode())
  assert np.array_equal(tok.encode(text.encode()), ids)
  assert np.array_equal(tok.encode(b"a\x00b"), [97, 98])  # NUL is reserved for eos.


def test_sentencepiece_tokenizer(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "spm.txt"
  corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(300)))
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                 vocab_size=60, minloglevel=2)
  c = cfg(tmp_path, tokenizer=str(tmp_path / "sp.model"))
  tok = data.make_tokenizer(c)
  assert data.vocab_size(c) == tok.vocab_size == 60 and tok.eos_id == 2
  ids = tok.encode("the lazy fox")
  assert ids.dtype == np.int32 and tok.decode(ids) == "the lazy fox"
  b = next(data.make_train_iterator(c, seq_len=16, global_batch=2, seed=0))
  assert b["inputs"].max() < 60 and (b["inputs"] == tok.eos_id).any()


def test_split_is_by_file_disjoint_and_deterministic(tmp_path):
  c = cfg(tmp_path)
  ids = split_ids(c)
  assert set(ids) == {"train", "validation"} and ids["validation"]
  assert not ids["train"] & ids["validation"] and ids["train"] | ids["validation"] == set(range(N_DOCS))
  assert split_ids(cfg(tmp_path, data_dir=str(tmp_path / "rebuilt"))) == ids


def test_text_files_rebuilt_when_files_change(tmp_path):
  c = cfg(tmp_path)
  before = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  make_corpus(str(tmp_path / "corpus"), n=N_DOCS + 10)
  after = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  assert before.data_dir != after.data_dir
  assert sum(s.num_examples for s in after.info.splits.values()) == N_DOCS + 10


def test_batches_are_packed_and_shifted(tmp_path):
  c = cfg(tmp_path)
  docs = {int(t[1:4]): t for t in (open(p).read() for p in sorted(
      os.path.join(tmp_path / "corpus", f) for f in os.listdir(tmp_path / "corpus")))}
  batches = take(data.make_train_iterator(c, seq_len=64, global_batch=8, seed=0), 20)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == (8, 64)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  # No padding: every eos-separated piece of a row is a part of one document.
  tok = data.ByteTokenizer()
  for row in batches[0]["inputs"]:
    for piece in tok.decode(row).split("\x00"):
      assert any(piece in d for d in docs.values()), piece
  eos_count = sum((b["inputs"] == 0).sum() for b in batches)
  assert 0 < eos_count < 0.1 * 20 * 8 * 64


def test_seed_determinism(tmp_path):
  c = cfg(tmp_path)
  make = lambda seed: take(data.make_train_iterator(c, seq_len=32, global_batch=4, seed=seed), 5)
  assert same(make(1), make(1))
  assert not same(make(1), make(2))


@pytest.mark.parametrize("n", [0, 3, 4, 9, 40])
def test_exact_resume(tmp_path, monkeypatch, n):
  monkeypatch.setattr(pipeline, "ROW_SHUFFLE_WINDOW", 16)  # Resume at, across window edges.
  c = cfg(tmp_path)
  make = lambda: data.make_train_iterator(c, seq_len=32, global_batch=4, seed=3)
  it = make()
  take(it, n)
  state = json.loads(json.dumps(it.get_state()))  # As a checkpoint stores it.
  want = take(it, 8)
  resumed = make()
  resumed.set_state(state)
  assert same(take(resumed, 8), want)
  assert not same(take(make(), 8), want) or n == 0


def test_host_sharding_is_disjoint_and_complete(tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, "ROW_SHUFFLE_WINDOW", 16)  # 30 batches then span > 1 epoch.
  c = cfg(tmp_path)
  train = split_ids(c)["train"]
  seen = [markers(take(data.make_train_iterator(
      c, seq_len=64, global_batch=8, seed=0, process_index=i, process_count=2), 30)) for i in (0, 1)]
  assert seen[0] and seen[1] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == train


def test_eval_batches(tmp_path):
  c = cfg(tmp_path)
  kw = dict(seq_len=32, global_batch=4, num_batches=6)
  ev = data.make_eval_batches(c, **kw)
  assert len(ev) == 6 and ev[0]["inputs"].shape == (4, 32)
  assert same(ev, data.make_eval_batches(c, **kw))
  assert markers(ev) <= split_ids(c)["validation"]  # Cycles the tiny split, never leaks train.


def test_pystdlib(data_dir):
  root, files = builders.stdlib_files()
  assert files == sorted(files) and all("-packages" not in f for f in files)
  b = builders.prepared_builder("pystdlib", data_dir)
  assert b.builder_config.name.startswith("py%d%d_" % sys.version_info[:2])
  n_train, n_val = b.info.splits["train"].num_examples, b.info.splits["validation"].num_examples
  assert n_train + n_val == len(files) and 20 <= n_val < 0.05 * len(files)
  c = ml_collections.ConfigDict(dict(name="pystdlib", data_dir=data_dir, tokenizer="byte"))
  assert next(data.make_train_iterator(c, seq_len=128, global_batch=4, seed=0))["inputs"].shape == (4, 128)


def test_tfds_dataset_by_name(tmp_path):
  c = cfg(tmp_path)
  name = "text_files/" + builders.prepared_builder("text_files", c.data_dir, c.text_glob).builder_config.name
  ev = data.make_eval_batches(cfg(tmp_path, name=name), seq_len=32, global_batch=4, num_batches=2)
  assert same(ev, data.make_eval_batches(c, seq_len=32, global_batch=4, num_batches=2))
  with pytest.raises(data.DataError, match=r"no feature 'content'.*text_key"):
    data.make_eval_batches(cfg(tmp_path, name=name, text_key="content"),
                           seq_len=32, global_batch=4, num_batches=2)


@pytest.mark.parametrize("kw, match", [
    (dict(name="lm1b"), r"dataset 'lm1b' is not prepared in .*tfds build lm1b --data_dir="),
    (dict(name="no_such_dataset"), r"'no_such_dataset' is not prepared in"),
    (dict(name="lm1b", data_dir="/nonexistent/tfds"), r"data_dir /nonexistent/tfds does not exist"),
    (dict(text_glob="/nonexistent/*.txt"), r"matched 0 file\(s\).*text_glob"),
    (dict(tokenizer="/nonexistent/sp.model"), r"model /nonexistent/sp.model not found"),
])
def test_errors(tmp_path, kw, match):
  c = cfg(tmp_path, **kw)
  os.makedirs(tmp_path / "tfds")  # Exists but is empty.
  with pytest.raises(data.DataError, match=match) as e:
    data.make_train_iterator(c, seq_len=32, global_batch=4, seed=0)
  assert "\n" not in str(e.value)
