"""The grokking tasks as TFDS builders, made locally: modular arithmetic and sparse parity.

Power et al. 2022 ("Grokking"), and the settings of Prieto et al. 2025
("Grokking at the Edge of Numerical Stability", arXiv 2501.04697, official
`datasets.py`):

- `modular_arithmetic`: every pair (a, b) in [0, p)², label (a ∘ b) mod p for
  ∘ in add | sub | mul; a seeded permutation of the p² pairs puts the first
  ⌊train_fraction · p²⌋ in `train` and the rest in `test` (p = 113, 40%:
  5107 / 7662). The official code's transformer variant drops 0 from both
  operands; these builders always use all p² pairs.
- `sparse_parity`: `num_samples` distinct random n-bit strings, label the XOR
  of the first k bits (the other n - k are noise); ⌊train_fraction · N⌋ train.
  The paper: n = 43 (3 parity + 40 noise bits), 2000 samples, 50% train.

Examples are `{'a', 'b', 'label'}` and `{'bits', 'label'}`. They are written as
array_record under `data_dir` on first use (nothing is downloaded; the config
name carries every parameter, so each setting is its own dataset), and a
loader returns whole splits as numpy arrays: the training is full-batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxtrain.data import builders, sources

DEFAULT_DATA_DIR = "~/.cache/jaxtrain/tensorflow_datasets"
OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


def modular_split(p: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) indices a·p + b of the p² pairs: a seeded permutation, cut at ⌊fraction·p²⌋."""
  order = np.random.default_rng(seed).permutation(p * p)
  n_train = int(train_fraction * p * p)
  return np.sort(order[:n_train]), np.sort(order[n_train:])


def parity_samples(n_bits: int, k: int, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(bits (N, n) uint8, labels (N,)): distinct random bit strings, label = XOR of the first k bits."""
  if num_samples > 2**n_bits:
    raise ValueError(f"{num_samples} distinct samples do not exist with {n_bits} bits")
  rng, seen, rows = np.random.default_rng(seed), set(), []
  while len(rows) < num_samples:
    for row in rng.integers(0, 2, (num_samples, n_bits), dtype=np.uint8):
      key = row.tobytes()
      if key not in seen and len(rows) < num_samples:
        seen.add(key)
        rows.append(row)
  bits = np.stack(rows)
  return bits, (bits[:, :k].sum(1) % 2).astype(np.int32)


class ModularConfig(tfds.core.BuilderConfig):
  """op, modulus p, train fraction and split seed; the name spells them out."""

  def __init__(self, *, op: str = "add", p: int = 113, train_fraction: float = 0.4, seed: int = 0):
    if op not in OPS:
      raise ValueError(f"unknown op {op!r}; use one of {sorted(OPS)}")
    if not 0 < train_fraction < 1:
      raise ValueError(f"train_fraction={train_fraction} must be in (0, 1)")
    super().__init__(name=f"{op}_p{p}_train{train_fraction:g}_seed{seed}",
                     description=f"(a {op} b) mod {p}, {train_fraction:.0%} of pairs in train, split seed {seed}")
    self.op, self.p, self.train_fraction, self.seed = op, p, train_fraction, seed


class ParityConfig(tfds.core.BuilderConfig):
  """n bits, k parity bits, number of distinct samples, train fraction, seed."""

  def __init__(self, *, n_bits: int = 43, k: int = 3, num_samples: int = 2000,
               train_fraction: float = 0.5, seed: int = 0):
    if not 0 < k <= n_bits:
      raise ValueError(f"k={k} parity bits must be in [1, n_bits={n_bits}]")
    if not 0 < train_fraction < 1:
      raise ValueError(f"train_fraction={train_fraction} must be in (0, 1)")
    super().__init__(name=f"n{n_bits}_k{k}_samples{num_samples}_train{train_fraction:g}_seed{seed}",
                     description=f"parity of {k} of {n_bits} bits, {num_samples} samples, seed {seed}")
    self.n_bits, self.k, self.num_samples = n_bits, k, num_samples
    self.train_fraction, self.seed = train_fraction, seed


class _Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # see jaxtrain.data.builders: tfds 4.9.10 cannot derive it without importlib_resources


class ModularArithmetic(_Local, skip_registration=True):
  """All p² pairs (a, b) with label (a ∘ b) mod p, split train/test by a seeded permutation."""
  name = "modular_arithmetic"

  def _info(self):
    scalar = lambda: tfds.features.Tensor(shape=(), dtype=np.int32)
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        features=tfds.features.FeaturesDict({"a": scalar(), "b": scalar(), "label": scalar()}),
        disable_shuffling=True)  # Keep the index order on disk.

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    c = self.builder_config
    train, test = modular_split(c.p, c.train_fraction, c.seed)
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, indices):
    c = self.builder_config
    for i in indices:
      a, b = divmod(int(i), c.p)
      yield int(i), {"a": a, "b": b, "label": OPS[c.op](a, b, c.p)}


class SparseParity(_Local, skip_registration=True):
  """Distinct random bit strings labelled by the parity of their first k bits."""
  name = "sparse_parity"

  def _info(self):
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=c.description,
        features=tfds.features.FeaturesDict({
            "bits": tfds.features.Tensor(shape=(c.n_bits,), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    bits, labels = parity_samples(c.n_bits, c.k, c.num_samples, c.seed)
    n_train = int(c.train_fraction * c.num_samples)  # the samples are already in random order
    return {"train": self._generate_examples(bits, labels, 0, n_train),
            "test": self._generate_examples(bits, labels, n_train, c.num_samples)}

  def _generate_examples(self, bits, labels, start, stop):
    for i in range(start, stop):
      yield i, {"bits": bits[i], "label": labels[i]}


def prepared(cls, config, data_dir: str = DEFAULT_DATA_DIR):
  """The builder `cls(config)` in `data_dir`, prepared on first use (see `builders.prepare_locked`); for a bucket
  data_dir, in its local mirror (the tasks are generated, so each host makes its own)."""
  return builders.prepare_locked(cls, config, sources.local_dir(sources.expand(data_dir)))


def _read(builder, split: str) -> dict[str, np.ndarray]:
  source = builder.as_data_source(split=split)
  rows = source.__getitems__(range(len(source)))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_modular(op: str = "add", p: int = 113, train_fraction: float = 0.4, seed: int = 0,
                 data_dir: str = DEFAULT_DATA_DIR) -> dict[str, dict[str, np.ndarray]]:
  """{'train'|'test': {'inputs': (N, 2) int32 [a, b], 'labels': (N,) int32}}, whole splits."""
  builder = prepared(ModularArithmetic, ModularConfig(op=op, p=p, train_fraction=train_fraction, seed=seed),
                     data_dir)
  out = {}
  for split in ("train", "test"):
    ex = _read(builder, split)
    out[split] = {"inputs": np.stack([ex["a"], ex["b"]], 1).astype(np.int32),
                  "labels": ex["label"].astype(np.int32)}
  return out


def load_parity(n_bits: int = 43, k: int = 3, num_samples: int = 2000, train_fraction: float = 0.5,
                seed: int = 0, data_dir: str = DEFAULT_DATA_DIR) -> dict[str, dict[str, np.ndarray]]:
  """{'train'|'test': {'inputs': (N, n_bits) float32 0/1, 'labels': (N,) int32}}, whole splits."""
  config = ParityConfig(n_bits=n_bits, k=k, num_samples=num_samples, train_fraction=train_fraction, seed=seed)
  builder = prepared(SparseParity, config, data_dir)
  out = {}
  for split in ("train", "test"):
    ex = _read(builder, split)
    out[split] = {"inputs": ex["bits"].astype(np.float32), "labels": ex["label"].astype(np.int32)}
  return out
