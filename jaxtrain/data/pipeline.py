"""Batches as a pure function of the step: index-addressable rows of a token cache (Levanter's data loader).

A split is one flat token stream (`token_cache.py`: documents in order, each
followed by eos). Row r is the window of T + 1 tokens starting at r·T
(concatenate-then-split, no padding), with

    inputs = row[:-1],  targets = row[1:],

so consecutive rows overlap by one token and every token but the first is a
target once per epoch; a split of n tokens has N = (n - 1) // T rows. Training
visits them in a new pseudo-random order each epoch: the global batch of step s
holds the rows at positions p = s·B, ..., s·B + B - 1 of the endless sequence

    row(p) = perm_{p div N}(p mod N),

where perm_e is the Feistel permutation of [0, N) keyed by (seed, epoch e)
(`permutation.py`). A batch therefore depends on (dataset, tokenizer, seq_len,
seed, global batch, step) only: not on the host count or the mesh, and a resume
needs the step and nothing else. Each host builds the global arrays with
`jax.make_array_from_callback`, reading only the rows its own devices hold.
Evaluation reads the validation rows 0, 1, 2, ... in order (cycled if short).
"""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxtrain import hosts
from jaxtrain.data import permutation, token_cache
from jaxtrain.data.errors import DataError

PREFETCH = 2  # batches made ahead on the background thread: data costs ~ms per step, so two hide it


def _rows_of(tokens: np.ndarray, rows: np.ndarray, seq_len: int) -> np.ndarray:
  """int32[len(rows), T + 1]: the windows of T + 1 tokens at rows·T (fancy indexing reads only these)."""
  return tokens[rows[:, None] * seq_len + np.arange(seq_len + 1)].astype(np.int32)


def _check_same_on_every_host(cache: token_cache.TokenCache, data_cfg) -> None:
  """Hosts that share no disk build their own caches: refuse to mix batches of different data (a collective)."""
  if jax.process_count() == 1:
    return
  hosts.barrier("token cache")  # one host may have built the cache for minutes: meet before the collective
  sha = cache.meta["sha256"]
  digests_P32 = np.asarray(multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(sha), np.uint8)))
  differ = [i for i, d in enumerate(digests_P32.reshape(jax.process_count(), -1)) if d.tobytes().hex() != sha]
  if differ:
    raise DataError(f"the token cache of {data_cfg.name!r} split {cache.meta['split']!r} on process "
                    f"{jax.process_index()} differs from that of processes {differ}: the hosts' copies of the dataset "
                    "differ; give every host the same files, or a shared data.data_dir")


def _num_rows(cache: token_cache.TokenCache, data_cfg, split: str, seq_len: int) -> int:
  n = (cache.meta["num_tokens"] - 1) // seq_len
  if n < 1:
    raise DataError(f"split {split!r} of {data_cfg.name!r} has {cache.meta['num_tokens']} tokens, fewer than "
                    f"one row of data.seq_len + 1 = {seq_len + 1}: use a larger split or a smaller data.seq_len")
  return n


def _global_batch(read, global_batch: int, seq_len: int, sharding) -> dict:
  """{'inputs', 'targets'} int32[B, T] from `read(lo, hi)` -> the rows [lo, hi) of the batch, int32[hi - lo, T + 1].

  With a sharding, global jax.Arrays of which this host reads only the rows its
  devices hold (each distinct slice once); without one, numpy arrays of the whole batch.
  """
  if sharding is None:
    rows = read(0, global_batch)
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
  shape = (global_batch, seq_len)
  try:
    sharding.shard_shape(shape)
  except ValueError as e:
    raise DataError(f"a global batch of shape {shape} cannot be split evenly by {sharding.spec} over the mesh "
                    f"{dict(sharding.mesh.shape)}: make train.global_batch a multiple of mesh.data·mesh.fsdp") from e
  read_once = {}

  def rows(index):
    lo, hi, _ = index[0].indices(global_batch)
    if (lo, hi) not in read_once:
      read_once[lo, hi] = read(lo, hi)
    return read_once[lo, hi]

  return {name: jax.make_array_from_callback(shape, sharding, lambda index, part=part: rows(index)[part][:, index[1]])
          for name, part in (("inputs", np.s_[:, :-1]), ("targets", np.s_[:, 1:]))}


class TrainData:
  """The training split as global batches addressed by step.

  `TrainData(config.data, seq_len=T, global_batch=B, seed=s)` opens the split's
  token cache (building it on first use) and checks that it holds at least one
  global batch. `batch(step, sharding)` is the global batch of `step`;
  `iterate(start_step, sharding)` yields those of start_step, start_step + 1, ...
  made ahead on a background thread. `fingerprint()` is what a resume must not change.
  """

  def __init__(self, data_cfg, *, seq_len: int, global_batch: int, seed: int):
    if seq_len < 1 or global_batch < 1:
      raise DataError(f"seq_len={seq_len} and global_batch={global_batch} must be positive")
    self.split = data_cfg.get("train_split", "train")
    self.cache = token_cache.load(data_cfg, self.split)
    _check_same_on_every_host(self.cache, data_cfg)
    self.num_rows = _num_rows(self.cache, data_cfg, self.split, seq_len)
    if self.num_rows < global_batch:
      raise DataError(
          f"split {self.split!r} of {data_cfg.name!r} has {self.cache.meta['num_tokens']} tokens: "
          f"{self.num_rows} rows of data.seq_len + 1 = {seq_len + 1}, fewer than one global batch of {global_batch}; "
          "use a larger split, or a smaller train.global_batch or data.seq_len")
    self.name, self.seq_len, self.global_batch, self.seed = data_cfg.name, seq_len, global_batch, seed
    self._perms = {}

  def _perm(self, epoch: int) -> permutation.Permutation:
    if epoch not in self._perms:
      self._perms = {epoch: permutation.Permutation(self.num_rows, self.seed, epoch)} | {
          e: p for e, p in self._perms.items() if abs(e - epoch) <= 1}  # a batch spans at most two epochs
    return self._perms[epoch]

  def row_indices(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """int64[hi - lo]: the rows (of the token stream) at positions [lo, hi) of the global batch of `step`."""
    hi = self.global_batch if hi is None else hi
    p = step * self.global_batch + np.arange(lo, hi, dtype=np.int64)
    epoch, i = np.divmod(p, self.num_rows)
    rows = np.empty_like(p)
    for e in np.unique(epoch):
      rows[epoch == e] = self._perm(int(e))(i[epoch == e])
    return rows

  def read(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """int32[hi - lo, T + 1]: the token rows at positions [lo, hi) of the global batch of `step`."""
    return _rows_of(self.cache.tokens, self.row_indices(step, lo, hi), self.seq_len)

  def batch(self, step: int, sharding=None) -> dict:
    """The global batch of `step`: {'inputs', 'targets'} int32[B, T], as jax.Arrays placed by `sharding`
    (a NamedSharding of the [B, T] batch; this host reads only its devices' rows), or numpy without one."""
    return _global_batch(lambda lo, hi: self.read(step, lo, hi), self.global_batch, self.seq_len, sharding)

  def iterate(self, start_step: int, sharding=None, prefetch: int = PREFETCH) -> Prefetcher:
    """The global batches of start_step, start_step + 1, ..., made `prefetch` ahead; `close()` it when done."""
    return Prefetcher(lambda step: self.batch(step, sharding), start_step, prefetch)

  def fingerprint(self) -> dict:
    """What determines the batches (with the step): a resume must find the same. JSON-serializable."""
    return {"name": self.name, "split": self.split, "tokenizer": self.cache.meta["tokenizer"],
            "seq_len": self.seq_len, "seed": self.seed, "global_batch": self.global_batch,
            "cache": self.cache.fingerprint}


class Prefetcher:
  """An iterator over make(step) for step = start, start + 1, ..., computed on one background thread,
  at most `depth` ahead. `step` is the step of the next batch `next()` returns."""

  def __init__(self, make, start: int, depth: int = PREFETCH):
    self.step = start
    self._queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(make, start), daemon=True, name="jaxtrain-data")
    self._thread.start()

  def _run(self, make, step):
    while not self._stop.is_set():
      try:
        item = (step, make(step))
      except Exception as e:  # pylint: disable=broad-except  # raised in the consumer by __next__
        item = (step, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item[1], Exception):
        return
      step += 1

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._stop.is_set():
      raise StopIteration
    step, batch = self._queue.get()
    if isinstance(batch, Exception):
      self.close()
      raise batch
    assert step == self.step, (step, self.step)
    self.step += 1
    return batch

  def close(self):
    """Stops the thread and drops the batches made ahead."""
    self._stop.set()
    self._thread.join()
    while not self._queue.empty():
      self._queue.get_nowait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def eval_batches(data_cfg, *, seq_len: int, global_batch: int, num_batches: int, sharding=None) -> list[dict]:
  """The first num_batches·B rows of the validation split, in order (cycled if short), as global batches.

  Always the same batches, on any host count; `sharding` as in `TrainData.batch`.
  """
  split = data_cfg.get("eval_split", "validation")
  cache = token_cache.load(data_cfg, split)
  _check_same_on_every_host(cache, data_cfg)
  n = _num_rows(cache, data_cfg, split, seq_len)

  def read(step):
    return lambda lo, hi: _rows_of(cache.tokens, (step * global_batch + np.arange(lo, hi)) % n, seq_len)

  return [_global_batch(read(s), global_batch, seq_len, sharding) for s in range(num_batches)]
