"""Weighted mixtures of sources: which source fills each row of a global batch, as a function of the step alone.

`data.mixture` names the sources, each a dict of `data`'s source fields (what it leaves out comes from `data`)
and a `weight`:

    c.data.mixture = {
        "code": dict(name="pystdlib", weight=0.7),
        "prose": dict(name="text_files", text_glob="/corpus/*.txt", weight=((0, 0.1), (5000, 0.5))),
    }

A weight is a number, or a schedule `((step, w), ...)` with increasing steps, linear between its points and
constant outside them; at each step the weights are divided by their sum. (Levanter's `train_weights` takes a
list of `(step, {source: weight})` stages, constant between them; two points one step apart make a stage here.)

The plan, as Levanter's block-deterministic `MixtureDataset`: the rows of training, position p = s·B + j for
row j of step s's batch, are cut into blocks of L rows (`data.mixture_block_size` rounded up to whole global
batches B, so a block is whole steps). Block b holds exactly n_k(b) rows of source k, the largest-remainder
apportionment of L·w_k at the block's first step (Hamilton's method: each count within one of L·w_k), laid
out as k = 0 .. K-1 in turn and then shuffled by a Feistel permutation of [0, L) keyed by (seed, b): slot j of
block b holds u = perm_b(j), which falls in source k's range [c_k, c_k + n_k) of the unshuffled block, and is
that source's row number o_k(b) + u - c_k, o_k(b) the rows of k in the blocks before b. So a row's source and
its index within the source cost one permutation evaluation, every host computes the same plan and reads
only its own rows, and a resume needs the step alone. Within a source, its own Feistel permutation per epoch
(`permutation.py`, keyed apart by the source's name) orders its rows; a source that runs out starts its next
epoch. The rows of source k before step s (`rows_before`) give `tokens/<source>` on every log line.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

from jaxtrain import config as cfg_lib
from jaxtrain.data import files, permutation

_BLOCK_ORDER = 0x6D6978  # "mix": keys the blocks' layout apart from the sources' row orders
# Fields of `data` that are the run's, not a source's: one value for every source.
RUN_WIDE = ("seq_len", "num_workers", "packing", "document_mask", "mixture", "mixture_block_size", "tokenizer",
            "eod_token")


def stream_key(name: str) -> int:
  """A source's key for its row order: stable across runs and hosts (not Python's salted hash)."""
  return zlib.crc32(name.encode("utf-8")) + 1  # never 0: stream 0 is a single-source run's order


def names(data_cfg) -> list[str]:
  """The mixture's source names, sorted (the order of the plan); [] for a single-source run."""
  mix = data_cfg.get("mixture") or {}
  return sorted(mix.keys())


def source_config(data_cfg, name: str):
  """Source `name` as a data config of its own: `data`'s fields with the source's over them, no mixture."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  own = dict(d["mixture"][name])
  own.pop("weight", None)
  d.update(own)
  d["mixture"] = {}
  return ml_collections.ConfigDict(d)


def schedule(weight) -> tuple[tuple[int, float], ...]:
  """A source's weight as ((step, w), ...): a number is ((0, w),)."""
  if isinstance(weight, (int, float)) and not isinstance(weight, bool):
    return ((0, float(weight)),)
  return tuple((int(s), float(w)) for s, w in weight)


def weights_at(schedules, steps) -> np.ndarray:
  """float64[len(steps), K]: each source's weight at each step (piecewise linear), normalized to sum to 1."""
  steps = np.asarray(steps, np.float64)
  raw = np.stack([np.interp(steps, [s for s, _ in sch], [w for _, w in sch]) for sch in schedules], axis=-1)
  return raw / raw.sum(-1, keepdims=True)


def apportion(weights_NK: np.ndarray, total: int) -> np.ndarray:
  """int64[N, K]: largest-remainder (Hamilton) counts summing to `total` per row, ties to the lower index."""
  quota = weights_NK * total
  counts = np.floor(quota).astype(np.int64)
  short = total - counts.sum(-1)
  # Rank each source by its remainder (descending, stable: lower index first) and give one more to the first `short`.
  order = np.argsort(-(quota - counts), axis=-1, kind="stable")
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(order.shape[-1])[None].repeat(len(order), 0), axis=-1)
  return counts + (rank < short[:, None])


class Plan:
  """The rows of a mixture: for positions p = step·B + j, the source and the row number within it."""

  def __init__(self, schedules, global_batch: int, block_size: int, seed: int):
    self.schedules = [schedule(w) for w in schedules]
    self.K, self.B, self.seed = len(self.schedules), global_batch, seed
    self.steps_per_block = max(1, math.ceil(block_size / global_batch))
    self.L = self.steps_per_block * global_batch
    self._offsets = np.zeros((1, self.K), np.int64)  # o_k(b) for b < len: rows of k before block b
    self.constant = all(len(s) == 1 for s in self.schedules)
    self._first = apportion(weights_at(self.schedules, [0]), self.L)[0]  # every block's counts if constant
    self._perms = {}

  def counts(self, blocks) -> np.ndarray:
    """int64[len(blocks), K]: n_k(b), the rows of each source in block b."""
    blocks = np.asarray(blocks, np.int64)
    if self.constant:  # one apportionment for every block
      return np.broadcast_to(self._first, (len(blocks), self.K))
    return apportion(weights_at(self.schedules, blocks * self.steps_per_block), self.L)

  def offsets(self, blocks) -> np.ndarray:
    """int64[len(blocks), K]: o_k(b), the rows of source k in the blocks before b."""
    blocks = np.asarray(blocks, np.int64)
    if self.constant:
      return blocks[:, None] * self._first[None]
    need = int(blocks.max(initial=0)) + 1
    known = self._offsets  # one snapshot: the data thread and the loop's log line may both extend it
    if need > len(known):  # extend the running sum (integers: exact and the same on every host)
      have = len(known)
      grow = max(need - have, have)  # doubling: amortized O(1) per block
      more = np.cumsum(self.counts(np.arange(have - 1, have - 1 + grow)), axis=0) + known[-1]
      known = self._offsets = np.concatenate([known, more])
    return known[blocks]

  def _perm(self, block: int) -> permutation.Permutation:
    if block not in self._perms:
      self._perms = {block: permutation.Permutation(self.L, self.seed, block, stream=_BLOCK_ORDER)} | {
          b: p for b, p in self._perms.items() if abs(b - block) <= 1}  # a batch spans at most two blocks
    return self._perms[block]

  def locate(self, positions) -> tuple[np.ndarray, np.ndarray]:
    """(source int64[n], row number within the source int64[n]) of training rows at `positions`."""
    p = np.asarray(positions, np.int64)
    block, slot = np.divmod(p, self.L)
    source, index = np.empty_like(p), np.empty_like(p)
    for b in np.unique(block):
      at = block == b
      u = self._perm(int(b))(slot[at])
      counts = self.counts([b])[0]
      starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
      k = np.searchsorted(np.cumsum(counts), u, side="right")
      source[at] = k
      index[at] = self.offsets([b])[0][k] + u - starts[k]
    return source, index

  def rows_before(self, step: int) -> np.ndarray:
    """int64[K]: the rows of each source in the batches of steps 0 .. step - 1."""
    block, rest = divmod(step * self.B, self.L)
    before = self.offsets([block])[0].copy()
    if rest:
      k, _ = self.locate(block * self.L + np.arange(rest))
      before += np.bincount(k, minlength=self.K)
    return before

  def max_share(self) -> np.ndarray:
    """float64[K]: each source's largest weight over the schedule (a ratio of linear functions between points
    is monotone, so the largest is at a point)."""
    points = sorted({s for sch in self.schedules for s, _ in sch})
    return weights_at(self.schedules, points).max(0)


def check(config, target) -> None:
  """The mixture's settings, before anything is read; one line each (ConfigError)."""
  del target
  d = config.data
  mix = d.get("mixture") or {}
  if d.mixture_block_size < 1:
    raise cfg_lib.ConfigError(f"data.mixture_block_size={d.mixture_block_size} must be positive")
  if not mix:
    return
  for name in names(d):
    src = mix[name]
    where = f"data.mixture.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
      raise cfg_lib.ConfigError(f"mixture source name {name!r} is not [A-Za-z0-9_-]+ (it names metrics: "
                                "tokens/<name>, eval_loss/<name>): rename it")
    if not hasattr(src, "keys"):
      raise cfg_lib.ConfigError(f"{where}={src!r} is not a source: write {where} = dict(name=..., weight=...)")
    if "weight" not in src:
      raise cfg_lib.ConfigError(f"{where} has no weight: set {where}.weight (a number, or ((step, w), ...))")
    for field in src:
      if field in RUN_WIDE:
        raise cfg_lib.ConfigError(f"{where}.{field} is set, but data.{field} is one for the whole run (every "
                                  f"source shares it): set data.{field} instead")
    try:
      sch = schedule(src["weight"])
    except (TypeError, ValueError):
      raise cfg_lib.ConfigError(f"{where}.weight={src['weight']!r} is neither a number nor ((step, weight), ...) "
                                "pairs") from None
    if not sch:
      raise cfg_lib.ConfigError(f"{where}.weight is an empty schedule: give at least one (step, weight)")
    if any(not math.isfinite(w) or w < 0 for _, w in sch):
      raise cfg_lib.ConfigError(f"{where}.weight={src['weight']!r} has a negative or non-finite weight: weights "
                                "are >= 0 (they are divided by their sum at each step)")
    steps = [s for s, _ in sch]
    if any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0:
      raise cfg_lib.ConfigError(f"{where}.weight={src['weight']!r}: the schedule's steps must be >= 0 and "
                                "strictly increasing, e.g. ((0, 0.2), (1000, 0.5))")
  for name in names(d):  # a source of dataset files: the same one-line errors as data.name=files
    if mix[name].get("name", d.name) == "files":
      try:
        files.check_source(source_config(d, name))
      except ValueError as e:  # DataError
        raise cfg_lib.ConfigError(f"data.mixture.{name}: {e}") from None
  schedules = [schedule(mix[n]["weight"]) for n in names(d)]
  points = sorted({s for sch in schedules for s, _ in sch})
  sums = np.sum([np.interp(points, [s for s, _ in sch], [w for _, w in sch]) for sch in schedules], axis=0)
  if not np.all(sums > 0):
    at = points[int(np.argmin(sums > 0))]
    raise cfg_lib.ConfigError(f"the mixture's weights sum to {sums.min():g} at step {at}: give some source of "
                              "data.mixture a positive weight at every step")
