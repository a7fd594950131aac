"""Tests of jaxtrain.data: builders, tokenizers, the token cache, batches by step, host independence, errors."""

import json
import os
import re
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain import data
from jaxtrain.data import builders, permutation, token_cache

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


def loader(c, seq_len=32, global_batch=8, seed=0):
  return data.TrainData(c, seq_len=seq_len, global_batch=global_batch, seed=seed)


def markers(batches):
  """Doc ids whose full marker appears in the batches' inputs."""
  tok = data.ByteTokenizer()
  text = "|".join(tok.decode(row) for b in batches for row in np.asarray(b["inputs"]))
  return {int(m) for m in re.findall(r"<(\d{3})>", text)}


def same(a, b):
  return len(a) == len(b) and all(
      np.array_equal(x["inputs"], y["inputs"]) and np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, b))


def split_ids(c):
  """Doc ids in each split, read back from the prepared dataset."""
  b = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  return {s: {int(ex["text"][1:4]) for ex in b.as_data_source(split=s)} for s in b.info.splits}


def batch_sharding(data=8, fsdp=1, tensor=1, devices=None):
  devices = devices if devices is not None else jax.devices()
  mesh = jax.make_mesh((data, fsdp, tensor), ("data", "fsdp", "tensor"), devices=devices)
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def host_reads(td, step, sharding, num_hosts):
  """Simulates `num_hosts` processes, each owning a contiguous share of the mesh's devices: every host
  reads the rows of its devices' index slices (as its make_array_from_callback would) into a global
  buffer, which must come out whole and equal to the one-host batch."""
  shape = (td.global_batch, td.seq_len)
  devices = list(sharding.mesh.devices.flat)
  out = np.full((td.global_batch, td.seq_len + 1), -1, np.int32)
  for h in range(num_hosts):
    mine = devices[h * len(devices) // num_hosts:(h + 1) * len(devices) // num_hosts]
    for d in mine:
      lo, hi, _ = sharding.devices_indices_map(shape)[d][0].indices(td.global_batch)
      out[lo:hi] = td.read(step, lo, hi)
  return out


# ---------------------------------------------------------------- tokenizers, builders


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
  assert tok.identity.startswith("sentencepiece-")
  ids = tok.encode("the lazy fox")
  assert ids.dtype == np.int32 and tok.decode(ids) == "the lazy fox"
  td = loader(c, seq_len=16, global_batch=2)
  b = td.batch(0)
  assert b["inputs"].max() < 60 and td.cache.meta["eos_id"] == 2 and (td.cache.tokens == 2).any()
  byte = loader(cfg(tmp_path), seq_len=16, global_batch=2)
  assert td.fingerprint()["tokenizer"] == tok.identity != byte.fingerprint()["tokenizer"]
  assert td.fingerprint()["cache"] != byte.fingerprint()["cache"] and td.cache.path != byte.cache.path


def test_split_is_by_file_disjoint_and_deterministic(tmp_path):
  c = cfg(tmp_path)
  ids = split_ids(c)
  assert set(ids) == {"train", "validation"} and ids["validation"]
  assert not ids["train"] & ids["validation"] and ids["train"] | ids["validation"] == set(range(N_DOCS))
  assert split_ids(cfg(tmp_path, data_dir=str(tmp_path / "rebuilt"))) == ids


def test_text_files_rebuilt_when_files_change(tmp_path):
  c = cfg(tmp_path)
  before = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  fp = loader(c).fingerprint()
  make_corpus(str(tmp_path / "corpus"), n=N_DOCS + 10)
  after = builders.prepared_builder("text_files", c.data_dir, c.text_glob)
  assert before.data_dir != after.data_dir
  assert sum(s.num_examples for s in after.info.splits.values()) == N_DOCS + 10
  assert loader(c).fingerprint()["cache"] != fp["cache"]  # a new corpus is a new token cache


# ---------------------------------------------------------------- the token cache


def test_cache_is_the_split_in_order_with_eos(tmp_path):
  c = cfg(tmp_path)
  cache = token_cache.load(c, "train")
  docs = [open(f).read() for f in sorted(
      os.path.join(tmp_path / "corpus", f"doc{i:03d}.txt") for i in split_ids(c)["train"])]
  want = np.concatenate([np.append(data.ByteTokenizer().encode(d), 0) for d in docs])
  assert cache.tokens.dtype == np.uint16 and np.array_equal(cache.tokens, want)
  assert cache.meta["num_tokens"] == len(want) and cache.meta["num_documents"] == len(docs)


def test_cache_is_built_once_and_reused(tmp_path, monkeypatch):
  c = cfg(tmp_path)
  calls, build = [], token_cache._build

  def counting_build(*args):
    calls.append(1)
    time.sleep(0.2)  # the other thread arrives while this one holds the lock
    build(*args)

  monkeypatch.setattr(token_cache, "_build", counting_build)
  caches = [None, None]
  threads = [threading.Thread(target=lambda i=i: caches.__setitem__(i, token_cache.load(c, "train"))) for i in (0, 1)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and caches[0].meta == caches[1].meta
  again = loader(c)
  assert len(calls) == 1 and again.cache.path == caches[0].path
  assert [f for f in os.listdir(os.path.dirname(again.cache.path)) if "incomplete" in f] == []


def test_cache_same_with_worker_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(token_cache, "DOCS_PER_CHUNK", 7)  # several tasks per worker
  one = token_cache.load(cfg(tmp_path), "train")
  two = token_cache.load(cfg(tmp_path, data_dir=str(tmp_path / "other"), num_workers=2), "train")
  assert one.meta["sha256"] == two.meta["sha256"] and np.array_equal(one.tokens, two.tokens)


# ---------------------------------------------------------------- rows and order


def test_rows_are_packed_and_shifted_windows(tmp_path):
  c = cfg(tmp_path)
  td = loader(c, seq_len=64)
  T, tokens = 64, td.cache.tokens
  assert td.num_rows == (len(tokens) - 1) // T
  for step in range(20):
    b = td.batch(step)
    assert b["inputs"].shape == b["targets"].shape == (8, T)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    for r, x, y in zip(td.row_indices(step), b["inputs"], b["targets"]):
      assert np.array_equal(x, tokens[r * T:r * T + T]) and np.array_equal(y, tokens[r * T + 1:r * T + T + 1])
  eos = sum((td.batch(s)["inputs"] == 0).sum() for s in range(20))
  assert 0 < eos < 0.1 * 20 * 8 * 64  # documents are packed, not padded


def test_each_epoch_is_a_new_permutation_of_all_rows(tmp_path):
  td = loader(cfg(tmp_path), global_batch=8)  # 174 rows: epochs end inside a batch
  N, B = td.num_rows, td.global_batch
  assert N % B
  order = np.concatenate([td.row_indices(s) for s in range(3 * N // B + 2)])
  epochs = [order[e * N:(e + 1) * N] for e in range(3)]
  for e in epochs:
    assert np.array_equal(np.sort(e), np.arange(N))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(N))  # shuffled from the first epoch on
  # The batch across the first epoch boundary: the end of epoch 0, then the start of epoch 1.
  s, k = divmod(N, B)
  assert np.array_equal(td.row_indices(s), np.concatenate([epochs[0][s * B:], epochs[1][:B - k]]))
  assert np.array_equal(td.row_indices(s + 1), epochs[1][B - k:2 * B - k])


def test_seeds_give_different_orders(tmp_path):
  c = cfg(tmp_path)
  assert np.array_equal(loader(c, seed=1).row_indices(3), loader(c, seed=1).row_indices(3))
  assert not np.array_equal(loader(c, seed=1).row_indices(3), loader(c, seed=2).row_indices(3))


@pytest.mark.parametrize("n", [1, 2, 3, 100, 1000, 4097])
def test_feistel_permutation(n):
  p = permutation.Permutation(n, seed=7, epoch=0)
  v = p(np.arange(n))
  assert np.array_equal(np.sort(v), np.arange(n))
  assert np.array_equal(p(np.arange(n)[::-1]), v[::-1])  # any index, any order
  if n > 3:
    assert not np.array_equal(v, permutation.Permutation(n, seed=7, epoch=1)(np.arange(n)))
  with pytest.raises(IndexError):
    p(np.array([n]))


@pytest.mark.parametrize("start", [0, 3, 21, 40])  # 21: the batch across the first epoch's end
def test_iterating_from_any_step_gives_the_uninterrupted_batches(tmp_path, start):
  td = loader(cfg(tmp_path))
  with td.iterate(0) as it:
    want = [next(it) for _ in range(start + 6)][start:]
  with loader(cfg(tmp_path)).iterate(start) as it:  # a fresh loader, as after a restart
    got = [next(it) for _ in range(6)]
  assert same(got, want) and same(got, [td.batch(s) for s in range(start, start + 6)])
  assert not same(got, [td.batch(s) for s in range(start + 1, start + 7)])


@pytest.mark.parametrize("mesh", [dict(data=8), dict(data=2, fsdp=4), dict(data=2, fsdp=2, tensor=2),
                                  dict(data=1, fsdp=1, tensor=8)])
def test_batches_do_not_depend_on_host_count_or_mesh(tmp_path, mesh):
  """The old pipeline fails this: each host took every process_count-th document and packed its own
  rows, so 2 hosts' rows (concatenated) differed from 1 host's, and a resume on another host count
  continued with other data. Here 1, 2 or 4 simulated hosts each read their devices' rows of the
  same global batch, and any mesh gives that batch."""
  td = loader(cfg(tmp_path))
  sh = batch_sharding(**mesh)
  for step in (0, 5, 21, 30):
    whole = td.read(step)
    for hosts in (1, 2, 4):
      assert np.array_equal(host_reads(td, step, sh, hosts), whole), (step, hosts)
    b = td.batch(step, sh)
    assert b["inputs"].sharding == sh and b["targets"].sharding == sh
    assert np.array_equal(np.asarray(b["inputs"]), whole[:, :-1])
    assert np.array_equal(np.asarray(b["targets"]), whole[:, 1:])


def test_each_host_reads_only_its_devices_rows(tmp_path, monkeypatch):
  td = loader(cfg(tmp_path))
  reads, read = [], td.read
  monkeypatch.setattr(td, "read", lambda step, lo=0, hi=None: reads.append((lo, hi)) or read(step, lo, hi))
  sh = batch_sharding(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])  # each row slice on 2 devices
  td.batch(4, sh)
  assert sorted(reads) == [(0, 2), (2, 4), (4, 6), (6, 8)]  # each slice once, for inputs and targets
  reads.clear()
  td.batch(4, batch_sharding(data=4, fsdp=2))  # one row per device
  assert sorted(reads) == [(i, i + 1) for i in range(8)]


TWO_PROCESS_WORKER = """
import json, os, sys
pid, port, cfg = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import ml_collections, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxtrain import data
c = ml_collections.ConfigDict(cfg[pid])
td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
reads, read = set(), td.read
td.read = lambda step, lo=0, hi=None: reads.add((lo, hi)) or read(step, lo, hi)
sh = NamedSharding(jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor")), P(("data", "fsdp"), None))
same = []
with td.iterate(20, sh) as it:
  for s in range(20, 24):
    b = next(it)
    whole = multihost_utils.process_allgather(b["inputs"], tiled=True)
    same.append(bool(np.array_equal(whole, read(s)[:, :-1])))
ev = data.eval_batches(c, seq_len=32, global_batch=8, num_batches=2, sharding=sh)[1]["targets"]
same.append(bool(np.array_equal(multihost_utils.process_allgather(ev, tiled=True),
                                data.eval_batches(c, seq_len=32, global_batch=8, num_batches=2)[1]["targets"])))
print("RESULT", json.dumps({"same": same, "reads": sorted(reads)}), flush=True)
"""


def run_two_processes(tmp_path, cfgs):
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(TWO_PROCESS_WORKER)
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), json.dumps([c.to_dict() for c in cfgs])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  try:
    outs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return outs


def test_two_processes_read_their_rows_of_the_one_process_batches(tmp_path):
  """Two real processes (4 CPU devices each, one 8-device mesh): the global batches are the one-process
  ones, and each process reads only the rows its devices hold."""
  c = cfg(tmp_path)
  outs = run_two_processes(tmp_path, [c, c])
  results = [json.loads(o.split("RESULT ")[1]) if "RESULT " in o else o[-2000:] for o in outs]
  assert all(isinstance(r, dict) for r in results), results
  assert all(all(r["same"]) for r in results)
  rows = [{i for lo, hi in r["reads"] for i in range(lo, hi)} for r in results]
  assert rows == [{0, 1, 2, 3}, {4, 5, 6, 7}]


def test_hosts_with_different_data_are_refused(tmp_path):
  c = cfg(tmp_path)
  other = tmp_path / "other"
  os.makedirs(other / "corpus")
  for f in os.listdir(tmp_path / "corpus"):  # the same files, one changed
    text = open(tmp_path / "corpus" / f).read()
    (other / "corpus" / f).write_text(text + ("!" if f == sorted(os.listdir(tmp_path / "corpus"))[-1] else ""))
  c2 = cfg(tmp_path, data_dir=str(other / "tfds"), text_glob=str(other / "corpus" / "*.txt"))
  outs = run_two_processes(tmp_path, [c, c2])
  for o in outs:
    assert "DataError: the token cache of 'text_files' split" in o and "differs from that of processes" in o, o[-2000:]


def test_prefetch_is_bounded_propagates_errors_and_closes():
  made = []

  def make(step):
    if step == 7:
      raise RuntimeError("boom at 7")
    made.append(step)
    return step

  it = data.Prefetcher(make, start=2, depth=2)
  deadline = time.time() + 10
  while len(made) < 3 and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  assert made == [2, 3, 4]  # two queued, one waiting to be queued, no more
  assert [next(it) for _ in range(3)] == [2, 3, 4] and it.step == 5
  assert [next(it), next(it)] == [5, 6]
  with pytest.raises(RuntimeError, match="boom at 7"):
    next(it)
  it = data.Prefetcher(make, start=0, depth=1)
  it.close()
  assert not it._thread.is_alive()
  with pytest.raises(StopIteration):
    next(it)


# ---------------------------------------------------------------- evaluation, fingerprint


def test_eval_batches(tmp_path):
  c = cfg(tmp_path)
  kw = dict(seq_len=32, global_batch=4, num_batches=6)
  ev = data.eval_batches(c, **kw)
  assert len(ev) == 6 and ev[0]["inputs"].shape == (4, 32)
  assert same(ev, data.eval_batches(c, **kw))
  tokens = token_cache.load(c, "validation").tokens
  n = (len(tokens) - 1) // 32
  rows = np.concatenate([b["inputs"] for b in ev])
  for i, row in enumerate(rows):  # rows 0, 1, 2, ... in order, cycled
    r = i % n
    assert np.array_equal(row, tokens[r * 32:r * 32 + 32])
  assert markers(ev) <= split_ids(c)["validation"]  # never leaks train
  sharded = data.eval_batches(c, **kw, sharding=batch_sharding(data=4, devices=jax.devices()[:4]))
  assert same([jax.tree.map(np.asarray, b) for b in sharded], ev)


def test_fingerprint_changes_with_each_field(tmp_path):
  c = cfg(tmp_path)
  base = loader(c).fingerprint()
  assert json.loads(json.dumps(base)) == base and base == loader(c).fingerprint()
  assert set(base) == {"name", "split", "tokenizer", "seq_len", "seed", "global_batch", "cache"}
  name = "text_files/" + builders.prepared_builder("text_files", c.data_dir, c.text_glob).builder_config.name
  changed = {
      "seq_len": loader(c, seq_len=16).fingerprint(),
      "seed": loader(c, seed=1).fingerprint(),
      "global_batch": loader(c, global_batch=4).fingerprint(),
      "name": loader(cfg(tmp_path, name=name)).fingerprint(),
      "split": loader(cfg(tmp_path, train_split="train[:80%]")).fingerprint(),
  }
  for field, fp in changed.items():  # the split holds other documents, so other tokens; the name reads the same files
    assert [k for k in base if fp[k] != base[k]] == ([field, "cache"] if field == "split" else [field]), field


def test_pystdlib(data_dir):
  root, files = builders.stdlib_files()
  assert files == sorted(files) and all("-packages" not in f for f in files)
  b = builders.prepared_builder("pystdlib", data_dir)
  assert b.builder_config.name.startswith("py%d%d_" % sys.version_info[:2])
  n_train, n_val = b.info.splits["train"].num_examples, b.info.splits["validation"].num_examples
  assert n_train + n_val == len(files) and 20 <= n_val < 0.05 * len(files)
  c = ml_collections.ConfigDict(dict(name="pystdlib", data_dir=data_dir, tokenizer="byte"))
  td = data.TrainData(c, seq_len=128, global_batch=4, seed=0)
  assert td.batch(0)["inputs"].shape == (4, 128) and td.cache.meta["num_documents"] == n_train


def test_tfds_dataset_by_name(tmp_path):
  c = cfg(tmp_path)
  name = "text_files/" + builders.prepared_builder("text_files", c.data_dir, c.text_glob).builder_config.name
  kw = dict(seq_len=32, global_batch=4, num_batches=2)
  assert same(data.eval_batches(cfg(tmp_path, name=name), **kw), data.eval_batches(c, **kw))
  with pytest.raises(data.DataError, match=r"no feature 'content'.*text_key"):
    data.eval_batches(cfg(tmp_path, name=name, text_key="content"), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(name="lm1b"), r"dataset 'lm1b' is not prepared in .*tfds build lm1b --data_dir="),
    (dict(name="no_such_dataset"), r"'no_such_dataset' is not prepared in"),
    (dict(name="lm1b", data_dir="/nonexistent/tfds"), r"data_dir /nonexistent/tfds does not exist"),
    (dict(text_glob="/nonexistent/*.txt"), r"matched 0 file\(s\).*text_glob"),
    (dict(tokenizer="/nonexistent/sp.model"), r"model /nonexistent/sp.model not found"),
    (dict(train_split="test"), r"has no split 'test'"),
])
def test_errors(tmp_path, kw, match):
  c = cfg(tmp_path, **kw)
  os.makedirs(tmp_path / "tfds", exist_ok=True)  # Exists but is empty.
  with pytest.raises(data.DataError, match=match) as e:
    loader(c)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("make, match", [
    (lambda c: loader(c, global_batch=200), r"174 rows of data.seq_len \+ 1 = 33, fewer than one global batch of 200"),
    (lambda c: data.eval_batches(c, seq_len=1000, global_batch=4, num_batches=1), r"fewer than one row"),
    (lambda c: loader(c, global_batch=6).batch(0, batch_sharding(data=8)), r"multiple of mesh.data·mesh.fsdp"),
    (lambda c: loader(c, seq_len=0), r"seq_len=0 .* must be positive"),
])
def test_size_errors(tmp_path, make, match):
  with pytest.raises(data.DataError, match=match) as e:
    make(cfg(tmp_path))
  assert "\n" not in str(e.value)
