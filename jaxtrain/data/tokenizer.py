"""Tokenizers: raw bytes (default), a SentencePiece model, or a Hugging Face `tokenizer.json`.

All map a document to int32 ids and expose `eos_id`, the end-of-document id
appended after every document in the token stream (token_cache.py), and
`identity`, a name for what they compute (the token cache and the resume check
key on it, not on a file path).

`data.tokenizer` picks one: `byte`, a path ending in `.model` (SentencePiece,
Kudo & Richardson 2018), a path ending in `.json` (a `tokenizers` tokenizer.json,
as GPT-2, Llama 3 and Qwen ship theirs: byte-level BPE, Radford et al. 2019;
https://github.com/huggingface/tokenizers), or `bpe:N`, a byte-level BPE of N
tokens trained on the run's own train split on first use (bpe.py). For a tokenizer.json the
end-of-document token is `data.eod_token`, or by default the first of
`DEFAULT_EOD_TOKENS` in its vocabulary, else the `eos_token` of a
tokenizer_config.json beside it. Text never encodes to the eos id: bytes drop
NUL, a tokenizer.json encodes special tokens written in the text as plain text
(`encode_special_tokens`), SentencePiece never emits its control pieces. No BOS
is added.

A run keeps a copy of its tokenizer file in its workdir (`save_copy`:
tokenizer.json or tokenizer.model, written by process 0), which `load_run`,
sampling and export use (`workdir_copy`), so the run stays usable when the
original file moves.
"""

import hashlib
import json
import os
import uuid

import numpy as np

from jaxtrain import paths
from jaxtrain.data.errors import DataError

# The end-of-document tokens of GPT-2 and Qwen, Llama 3, Llama 2 / Mistral / T5, Gemma: the first present is eod.
DEFAULT_EOD_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


class ByteTokenizer:
  """Token id = byte value; id 0 (NUL, which text doesn't contain) is eos."""

  vocab_size = 256
  eos_id = 0
  identity = "byte"
  file_name = None  # no file to keep with the run

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    ids = np.frombuffer(text, np.uint8)
    return ids[ids != self.eos_id].astype(np.int32)  # Stray NULs would fake an eos.

  def encode_batch(self, texts) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return np.asarray(ids, np.uint8).tobytes().decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece `.model` (a local path or gs://); eos comes from the model."""

  file_name = "tokenizer.model"

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    path = paths.resolve(path)
    if not path.is_file():
      raise DataError(f"SentencePiece model {path} not found: set --config.data.tokenizer "
                      "to an existing .model file, or to 'byte'")
    model = path.read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=model)
    self.file_bytes = model
    self.identity = "sentencepiece-" + hashlib.sha256(model).hexdigest()[:16]
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise DataError(f"SentencePiece model {path} has no eos piece: retrain it "
                      "with --eos_id, or use --config.data.tokenizer='byte'")

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_batch(self, texts) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json (a local path or gs://), e.g. GPT-2's, Llama 3's or Qwen's
  byte-level BPE. `eod_token`: the end-of-document token's text ('': `DEFAULT_EOD_TOKENS`, then the
  tokenizer_config.json beside it)."""

  file_name = "tokenizer.json"

  def __init__(self, path: str, eod_token: str = ""):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    path = paths.resolve(path)
    if not path.is_file():
      raise DataError(f"tokenizer {path} not found: set --config.data.tokenizer to an existing tokenizer.json, "
                      "or to 'byte'")
    raw = path.read_bytes()
    try:
      self._tok = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except  # tokenizers raises its own Exception subclasses
      raise DataError(f"{path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]}): set "
                      "--config.data.tokenizer to the tokenizer.json a model ships") from None
    self._tok.encode_special_tokens = True  # "<|endoftext|>" written in a document is text, not a boundary
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1  # added tokens may sit above the model's vocabulary
    self.eod_token = eod_token or _default_eod(vocab, path)
    if self.eod_token not in vocab:
      special = sorted(t.content for t in self._tok.get_added_tokens_decoder().values() if t.special)[:8]
      raise DataError(f"data.eod_token={self.eod_token!r} is not in the vocabulary of {path}: set "
                      f"--config.data.eod_token to one of its special tokens {special}")
    self.eos_id = vocab[self.eod_token]
    self.file_bytes, self.path = raw, os.fspath(path)
    self.identity = f"hf-{hashlib.sha256(raw).hexdigest()[:16]}-eod{self.eos_id}"

  def encode(self, text: str | bytes) -> np.ndarray:
    return self.encode_batch([text])[0]

  def encode_batch(self, texts) -> list[np.ndarray]:
    """The ids of each text; `tokenizers` encodes the list on its own threads (TOKENIZERS_PARALLELISM)."""
    texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in texts]
    return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _default_eod(vocab: dict, path) -> str:
  for token in DEFAULT_EOD_TOKENS:
    if token in vocab:
      return token
  beside = path.parent / "tokenizer_config.json"
  if beside.is_file():
    eos = json.loads(beside.read_text()).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if eos:
      return eos
  raise DataError(f"{path} has none of the end-of-document tokens {list(DEFAULT_EOD_TOKENS)} and no "
                  "tokenizer_config.json eos_token beside it: set --config.data.eod_token")


Tokenizer = ByteTokenizer | SentencePieceTokenizer | HFTokenizer


def make_tokenizer(data_cfg) -> Tokenizer:
  """`data.tokenizer`: 'byte', a path to a SentencePiece `.model`, or to a Hugging Face tokenizer `.json`."""
  spec = data_cfg.get("tokenizer", "byte")
  if spec == "byte":
    return ByteTokenizer()
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  if spec.endswith(".json"):
    return HFTokenizer(spec, data_cfg.get("eod_token", ""))
  if spec.startswith("bpe:"):
    from jaxtrain.data import bpe  # pylint: disable=g-import-not-at-top  # reads the corpus: only when asked for
    return HFTokenizer(bpe.trained(data_cfg, bpe.parse(spec)), data_cfg.get("eod_token", ""))
  raise DataError(f"data.tokenizer={spec!r} is not 'byte', a path ending in .model (SentencePiece) or .json (a "
                  "Hugging Face tokenizer.json), or bpe:N (trained here): set --config.data.tokenizer")


def vocab_size(data_cfg) -> int:
  return make_tokenizer(data_cfg).vocab_size


def workdir_copy(workdir: str, data_cfg):
  """The copy of the run's tokenizer file kept in `workdir` (an epath.Path), or None (bytes, or none written)."""
  spec = data_cfg.get("tokenizer", "byte")
  name = ("tokenizer.model" if spec.endswith(".model") else
          "tokenizer.json" if spec.endswith(".json") or spec.startswith("bpe:") else None)
  if name is None:
    return None
  copy = paths.resolve(workdir) / name
  return copy if copy.exists() else None


def save_copy(workdir: str, tok: Tokenizer, replace: bool) -> None:
  """Keeps `tok`'s file in `workdir` (as tokenizer.json or tokenizer.model): written if absent, or if `replace`
  (a run starting afresh); the caller is process 0. Local files are renamed into place (readers never see half)."""
  if tok.file_name is None:
    return
  copy = paths.resolve(workdir) / tok.file_name
  if copy.exists() and (not replace or copy.read_bytes() == tok.file_bytes):
    return
  if paths.is_remote(str(copy)):
    copy.write_bytes(tok.file_bytes)  # one object upload: atomic
    return
  tmp = f"{copy}.{uuid.uuid4().hex}.tmp"
  with open(tmp, "wb") as f:
    f.write(tok.file_bytes)
  os.replace(tmp, copy)
