"""Batches as a pure function of the step: index-addressable rows of token caches (Levanter's data loader).

A split is one flat token stream (`token_cache.py`: documents in order, each
followed by eos), cut into rows of T + 1 tokens (`packing.py`: by default row r
is the window at r·T, concatenate-then-split, no padding; `data.packing=pad`
packs whole documents and pads), with

    inputs = row[:-1],  targets = row[1:],

and, with `data.document_mask`, each input token's document within its row
(`segment_ids`) and the loss weights (`weights`, also with padding). Training
visits the N rows in a new pseudo-random order each epoch: the global batch of
step s holds the rows at positions p = s·B, ..., s·B + B - 1 of the endless
sequence

    row(p) = perm_{p div N}(p mod N),

where perm_e is the Feistel permutation of [0, N) keyed by (seed, epoch e)
(`permutation.py`). With a mixture (`mixture.py`) position p first goes to a
source and a row number within it, by a plan that depends on the step alone,
and each source orders its own rows this way. A batch therefore depends on
(data, tokenizer, seq_len, seed, global batch, step) only: not on the host
count or the mesh, and a resume needs the step and nothing else. Each host
builds the global arrays with `jax.make_array_from_callback`, reading only the
rows its own devices hold. Evaluation reads the validation rows 0, 1, 2, ... in
order (cycled if short), of each source.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxtrain import hosts
from jaxtrain.data import mixture, packing, permutation, token_cache
from jaxtrain.data.errors import DataError
from jaxtrain.data.tokenizer import make_tokenizer

log = logging.getLogger("jaxtrain")

PREFETCH = 2  # batches made ahead on the background thread: data costs ~ms per step, so two hide it


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


class Rows:
  """One split of one source cut into rows of T + 1 tokens (`data.packing`): `num_rows`, `read(rows)` (int32[n,
  T + 1]) and, for `pad` packing, `lengths(rows)` (tokens before the padding); `efficiency`: the share of input
  tokens that are not padding."""

  def __init__(self, data_cfg, split: str, seq_len: int):
    self.cache = token_cache.load(data_cfg, split)
    _check_same_on_every_host(self.cache, data_cfg)
    self.seq_len, self.split, self.scheme = seq_len, split, data_cfg.get("packing", "concat")
    meta = self.cache.meta
    self.eos_id = int(meta["eos_id"]) if "eos_id" in meta else int(make_tokenizer(data_cfg).eos_id)
    if self.scheme == "pad":
      ends = np.flatnonzero(np.asarray(self.cache.tokens) == self.eos_id) + 1
      self.starts, self._lengths = packing.pack_documents(ends, seq_len)
      self.num_rows = len(self.starts)
      self.efficiency = float(np.minimum(self._lengths, seq_len).sum() / max(1, self.num_rows * seq_len))
    else:
      self.num_rows, self.efficiency = packing.concat_rows(meta["num_tokens"], seq_len), 1.0
    if self.num_rows < 1:
      raise DataError(f"split {split!r} of {data_cfg.name!r} has {meta['num_tokens']} tokens, fewer than "
                      f"one row of data.seq_len + 1 = {seq_len + 1}: use a larger split or a smaller data.seq_len")

  @property
  def padded(self) -> bool:
    return self.scheme == "pad"

  def read(self, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    if self.padded:
      return packing.read_packed(self.cache.tokens, self.starts[rows], self._lengths[rows], self.seq_len)
    return packing.read_concat(self.cache.tokens, rows, self.seq_len)

  def lengths(self, rows: np.ndarray) -> np.ndarray | None:
    return self._lengths[np.asarray(rows, np.int64)] if self.padded else None


class Order:
  """A source's rows in a new seeded order each epoch: row(i) = perm_{i div N}(i mod N), keyed by (seed, epoch,
  stream)."""

  def __init__(self, num_rows: int, seed: int, stream: int = 0):
    self.num_rows, self.seed, self.stream, self._perms = num_rows, seed, stream, {}

  def _perm(self, epoch: int) -> permutation.Permutation:
    if epoch not in self._perms:
      self._perms = {epoch: permutation.Permutation(self.num_rows, self.seed, epoch, self.stream)} | {
          e: p for e, p in self._perms.items() if abs(e - epoch) <= 1}  # a batch spans at most two epochs
    return self._perms[epoch]

  def __call__(self, positions) -> np.ndarray:
    """int64[n]: the rows at `positions` of the endless sequence of epochs."""
    epoch, i = np.divmod(np.asarray(positions, np.int64), self.num_rows)
    rows = np.empty_like(i)
    for e in np.unique(epoch):
      rows[epoch == e] = self._perm(int(e))(i[epoch == e])
    return rows


def _fields(rows_BT1: np.ndarray, lengths_B, eos_id: int, document_mask: bool) -> dict:
  """The batch's arrays from its token rows: inputs and targets, and the document boundaries (packing.segments):
  segment_ids with data.document_mask, weights with it or with padding."""
  out = {"inputs": rows_BT1[:, :-1], "targets": rows_BT1[:, 1:]}
  if document_mask or lengths_B is not None:
    segment_ids, weights = packing.segments(rows_BT1, eos_id, lengths_B)
    out["weights"] = weights
    if document_mask:
      out["segment_ids"] = segment_ids
  return out


def _global_batch(read, global_batch: int, seq_len: int, sharding) -> dict:
  """{'inputs', 'targets', ...} [B, T] from `read(lo, hi)` -> the fields (`_fields`) of rows [lo, hi) of the batch.

  With a sharding, global jax.Arrays of which this host reads only the rows its
  devices hold (each distinct slice once); without one, numpy arrays of the whole batch.
  """
  if sharding is None:
    return read(0, global_batch)
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

  names = rows(next(iter(sharding.addressable_devices_indices_map(shape).values()))).keys()
  return {name: jax.make_array_from_callback(shape, sharding, lambda index, name=name: rows(index)[name][:, index[1]])
          for name in names}


class TrainData:
  """The training data as global batches addressed by step: one source, or a mixture (`data.mixture`).

  `TrainData(config.data, seq_len=T, global_batch=B, seed=s)` opens each source's
  token cache (building it on first use) and checks that it holds at least one
  global batch (a mixture source: its share of one). `batch(step, sharding)` is
  the global batch of `step`; `iterate(start_step, sharding)` yields those of
  start_step, start_step + 1, ... made ahead on a background thread.
  `fingerprint()` is what a resume must not change; `log_fields(step, since)` the
  data's numbers for a log line (tokens per source, packing efficiency).
  """

  def __init__(self, data_cfg, *, seq_len: int, global_batch: int, seed: int):
    if seq_len < 1 or global_batch < 1:
      raise DataError(f"seq_len={seq_len} and global_batch={global_batch} must be positive")
    self.split = data_cfg.get("train_split", "train")
    self.name, self.seq_len, self.global_batch, self.seed = data_cfg.name, seq_len, global_batch, seed
    self.document_mask = bool(data_cfg.get("document_mask", False))
    self.scheme = data_cfg.get("packing", "concat")
    self.sources = mixture.names(data_cfg)
    if not self.sources:  # one source: the order as it always was
      self.rows = [Rows(data_cfg, self.split, seq_len)]
      self.cache, self.num_rows = self.rows[0].cache, self.rows[0].num_rows
      if self.num_rows < global_batch:
        raise DataError(
            f"split {self.split!r} of {data_cfg.name!r} has {self.cache.meta['num_tokens']} tokens: "
            f"{self.num_rows} rows of data.seq_len + 1 = {seq_len + 1}, fewer than one global batch of "
            f"{global_batch}; use a larger split, or a smaller train.global_batch or data.seq_len")
      self.orders, self.plan = [Order(self.num_rows, seed)], None
    else:
      cfgs = [mixture.source_config(data_cfg, n) for n in self.sources]
      self.rows = [Rows(c, c.get("train_split", "train"), seq_len) for c in cfgs]
      self.dataset_names = [c.name for c in cfgs]
      self.orders = [Order(r.num_rows, seed, mixture.stream_key(n)) for n, r in zip(self.sources, self.rows)]
      self.plan = mixture.Plan([data_cfg.mixture[n]["weight"] for n in self.sources], global_batch,
                               data_cfg.get("mixture_block_size", 2048), seed)
      for n, r, share in zip(self.sources, self.rows, self.plan.max_share()):
        need = int(np.ceil(share * global_batch))
        if r.num_rows < need:
          raise DataError(f"mixture source {n!r} has {r.num_rows} rows of data.seq_len + 1 = {seq_len + 1} tokens, "
                          f"fewer than its share of one global batch ({need} of {global_batch} rows at weight "
                          f"{share:.3g}): give it more data, or lower its weight, train.global_batch or data.seq_len")
    self.eos_id = self.rows[0].eos_id
    shares = [1.0] if self.plan is None else mixture.weights_at(self.plan.schedules, [0])[0]
    self.efficiency = float(np.dot(shares, [r.efficiency for r in self.rows]))  # of the split(s), at step 0's weights

  def _locate(self, step: int, lo: int, hi: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(source int64[n], row within the source's rows int64[n]) of positions [lo, hi) of the batch of `step`."""
    hi = self.global_batch if hi is None else hi
    p = step * self.global_batch + np.arange(lo, hi, dtype=np.int64)
    if self.plan is None:
      return np.zeros_like(p), self.orders[0](p)
    source, index = self.plan.locate(p)
    rows = np.empty_like(index)
    for k in np.unique(source):
      rows[source == k] = self.orders[k](index[source == k])
    return source, rows

  def row_indices(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """int64[hi - lo]: the rows (of the one source's token stream) at positions [lo, hi) of the batch of `step`."""
    return self._locate(step, lo, hi)[1]

  def _gather(self, step, lo, hi, what):
    source, rows = self._locate(step, lo, hi)
    if len(self.rows) == 1:
      return what(self.rows[0], rows)
    parts = {int(k): what(self.rows[k], rows[source == k]) for k in np.unique(source)}
    first = next(iter(parts.values()))
    out = np.empty((len(rows),) + first.shape[1:], first.dtype)
    for k, part in parts.items():
      out[source == k] = part
    return out

  def read(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """int32[hi - lo, T + 1]: the token rows at positions [lo, hi) of the global batch of `step`."""
    return self._gather(step, lo, hi, lambda r, rows: r.read(rows))

  def lengths(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray | None:
    """int32[hi - lo]: the tokens of each row before its padding (`pad` packing), else None."""
    if self.scheme != "pad":
      return None
    return self._gather(step, lo, hi, lambda r, rows: r.lengths(rows))

  def batch(self, step: int, sharding=None) -> dict:
    """The global batch of `step`: {'inputs', 'targets'} int32[B, T] (and 'segment_ids' int32, 'weights' float32
    with data.document_mask; 'weights' with padding), as jax.Arrays placed by `sharding` (a NamedSharding of the
    [B, T] batch; this host reads only its devices' rows), or numpy without one."""
    read = lambda lo, hi: _fields(self.read(step, lo, hi), self.lengths(step, lo, hi), self.eos_id,
                                  self.document_mask)
    return _global_batch(read, self.global_batch, self.seq_len, sharding)

  def iterate(self, start_step: int, sharding=None, prefetch: int = PREFETCH) -> Prefetcher:
    """The global batches of start_step, start_step + 1, ..., made `prefetch` ahead; `close()` it when done."""
    return Prefetcher(lambda step: self.batch(step, sharding), start_step, prefetch)

  def log_fields(self, step: int, since: int) -> dict:
    """What a log line at `step` says of the data, from the steps alone (right after a resume, the same on every
    host): `tokens/<source>`, the tokens of each mixture source in steps 0 .. step - 1; with `pad` packing
    `packing_efficiency`, the share of the input tokens of steps since .. step - 1 that are not padding."""
    out = {}
    if self.plan is not None:
      out |= {f"tokens/{n}": int(r) * self.seq_len for n, r in zip(self.sources, self.plan.rows_before(step))}
    if self.scheme == "pad" and step > since:
      n = np.concatenate([self.lengths(s) for s in range(since, step)])
      out["packing_efficiency"] = float(np.minimum(n, self.seq_len).mean() / self.seq_len)
    return out

  def fingerprint(self, step: int = 0) -> dict:
    """What determines the batches from `step` on: a resume at `step` must find the same. JSON-serializable.

    Of a mixture, each source's data and where its rows stand at `step`: the rows it gave the steps before and,
    inside a block, the block's counts. Its weights after `step` are not in it: a resume may change the weights
    ahead (a schedule that agrees up to the step continues the same batches, then follows its new weights)."""
    common = {"seq_len": self.seq_len, "seed": self.seed, "global_batch": self.global_batch}
    if self.scheme != "concat":  # only when set: checkpoints from before packing schemes resume as they were
      common["packing"] = self.scheme
    if self.plan is None:
      r = self.rows[0]
      return {"name": self.name, "split": self.split, "tokenizer": r.cache.meta["tokenizer"]} | common | {
          "cache": r.cache.fingerprint}
    block, rest = divmod(step * self.global_batch, self.plan.L)
    out = {"mixture": self.sources, "tokenizer": self.rows[0].cache.meta["tokenizer"]} | common | {
        "mixture_block": self.plan.L}
    before, counts = self.plan.rows_before(step), self.plan.counts([block])[0]
    for k, (n, r) in enumerate(zip(self.sources, self.rows)):
      out |= {f"mixture.{n}.data": [self.dataset_names[k], r.split, r.cache.fingerprint],
              f"mixture.{n}.rows_before": int(before[k])}
      if rest:  # the step is inside a block: its counts were fixed at the block's first step
        out[f"mixture.{n}.block_rows"] = int(counts[k])
    return out


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


class EvalSet(NamedTuple):
  batches: list          # the global batches, in order
  tokens: float          # the loss tokens in them (the sum of the weights): a source's share of the overall loss


def eval_sets(data_cfg, *, seq_len: int, global_batch: int, num_batches: int, sharding=None) -> dict[str, EvalSet]:
  """{source: EvalSet}: the first num_batches·B rows of each source's validation split, in order (cycled if
  short), as global batches; one source: {data.name: ...}. Always the same batches, on any host count;
  `sharding` as in `TrainData.batch`."""
  names = mixture.names(data_cfg)
  cfgs = {n: mixture.source_config(data_cfg, n) for n in names} if names else {data_cfg.name: data_cfg}
  document_mask = bool(data_cfg.get("document_mask", False))
  out = {}
  for name, c in cfgs.items():
    rows = Rows(c, c.get("eval_split", "validation"), seq_len)

    def read(step, lo, hi, rows=rows):
      r = (step * global_batch + np.arange(lo, hi)) % rows.num_rows
      return _fields(rows.read(r), rows.lengths(r), rows.eos_id, document_mask)

    batches = [_global_batch(lambda lo, hi, s=s: read(s, lo, hi), global_batch, seq_len, sharding)
               for s in range(num_batches)]
    if document_mask or rows.padded:  # every host counts all rows' weights: a few batches, read once more
      tokens = float(sum(read(s, 0, global_batch)["weights"].sum() for s in range(num_batches)))
    else:
      tokens = float(num_batches * global_batch * seq_len)
    out[name] = EvalSet(batches, tokens)
  return out


def eval_batches(data_cfg, *, seq_len: int, global_batch: int, num_batches: int, sharding=None) -> list[dict]:
  """The first num_batches·B rows of the validation split, in order (cycled if short), as global batches; of a
  mixture, each source's in turn (sorted by name). Always the same batches, on any host count; `sharding` as in
  `TrainData.batch`.
  """
  sets = eval_sets(data_cfg, seq_len=seq_len, global_batch=global_batch, num_batches=num_batches, sharding=sharding)
  return [b for s in sets.values() for b in s.batches]
