"""Tokenizers: raw bytes (default) or a SentencePiece model.

Both map a document to int32 ids and expose `eos_id`, the id appended after
every document when packing, and `identity`, a name for what they compute (the
token cache and the resume check key on it, not on a file path).
"""

import hashlib

import numpy as np

from jaxtrain import paths
from jaxtrain.data.errors import DataError


class ByteTokenizer:
  """Token id = byte value; id 0 (NUL, which text doesn't contain) is eos."""

  vocab_size = 256
  eos_id = 0
  identity = "byte"

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    ids = np.frombuffer(text, np.uint8)
    return ids[ids != self.eos_id].astype(np.int32)  # Stray NULs would fake an eos.

  def decode(self, ids) -> str:
    return np.asarray(ids, np.uint8).tobytes().decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece `.model` (a local path or gs://); eos comes from the model."""

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    path = paths.resolve(path)
    if not path.is_file():
      raise DataError(f"SentencePiece model {path} not found: set --config.data.tokenizer "
                      "to an existing .model file, or to 'byte'")
    model = path.read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=model)
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

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])


def make_tokenizer(data_cfg) -> ByteTokenizer | SentencePieceTokenizer:
  """`data.tokenizer`: 'byte' or a path to a SentencePiece `.model` file."""
  spec = data_cfg.get("tokenizer", "byte")
  if spec == "byte":
    return ByteTokenizer()
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  raise DataError(f"data.tokenizer={spec!r} is neither 'byte' nor a path ending "
                  "in .model: set --config.data.tokenizer")


def vocab_size(data_cfg) -> int:
  return make_tokenizer(data_cfg).vocab_size
