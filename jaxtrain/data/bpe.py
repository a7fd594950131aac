"""A byte-level BPE trained on the run's own corpus: `data.tokenizer="bpe:N"`.

The tokenizer GPT-2 introduced (Radford et al. 2019: BPE over bytes, GPT-2's pre-tokenizer regex, no unknown
token), trained with Hugging Face `tokenizers`' `BpeTrainer` on the documents of the train split of `data_cfg` (of
every source of a `data.mixture`, in the order of their names), with
`<|endoftext|>` (id 0) as its end-of-document token and the 256 byte symbols in its alphabet, so every text
encodes. Training is deterministic (`tokenizers` breaks ties between equally frequent pairs by the pair itself), so
every host and every run that trains it gets the same tokenizer.json, byte for byte (tests/test_tokenizers.py);
it is trained once, on first use, and kept in the data dir as
`tokenizers/<dataset>.<train split>.bpe<N>.json`, from where it is an ordinary tokenizer.json (tokenizer.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import re

from jaxtrain.data import mixture, sources
from jaxtrain.data.errors import DataError

EOD = "<|endoftext|>"
MIN_VOCAB = 257  # the byte alphabet and EOD


def parse(spec: str) -> int | None:
  """N of a `bpe:N` spec; None for any other tokenizer spec."""
  m = re.fullmatch(r"bpe:(\d+)", spec)
  if not m:
    return None
  n = int(m.group(1))
  if n < MIN_VOCAB:
    raise DataError(f"data.tokenizer={spec!r}: a byte-level BPE needs at least {MIN_VOCAB} tokens (256 bytes and "
                    "<|endoftext|>): set e.g. data.tokenizer='bpe:4096'")
  return n


def trained(data_cfg, vocab_size: int) -> str:
  """The path of the BPE of `vocab_size` tokens trained on `data_cfg`'s train split (trained on first use)."""
  names = sorted(data_cfg.get("mixture") or {})
  cfgs = [mixture.source_config(data_cfg, n) for n in names] if names else [data_cfg]
  opened = [sources.open_split(c, c.get("train_split", "train")) for c in cfgs]
  what = [f"{o.identity}.{c.get('train_split', 'train')}" for o, c in zip(opened, cfgs)]
  if len(what) > 1:  # a mixture: one short name for all its sources
    what = ["mixture_" + hashlib.sha256("\0".join(what).encode()).hexdigest()[:16]]
  root = os.path.join(sources.local_dir(sources.data_dir(data_cfg)), "tokenizers")
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{what[0]}.bpe{vocab_size}") + ".json"
  path = os.path.join(root, name)
  if os.path.isfile(path):
    return path
  try:
    os.makedirs(root, exist_ok=True)
    with open(path + ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer; the others wait, then find it
      if not os.path.isfile(path):
        text = train(itertools.chain.from_iterable(_texts(o) for o in opened), vocab_size)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
          f.write(text)
        os.replace(tmp, path)
  except OSError as e:
    raise DataError(f"cannot write the trained tokenizer in {root} ({e}): set --config.data.data_dir to a writable "
                    "directory") from e
  return path


def _texts(opened):
  for task in sources.tasks(opened):
    for doc in sources.documents(opened, task):
      yield doc.decode("utf-8", errors="replace") if isinstance(doc, bytes) else doc


def train(texts, vocab_size: int) -> str:
  """A byte-level BPE of `vocab_size` tokens trained on the strings `texts`, as tokenizer.json text."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return tok.to_str(pretty=True)
