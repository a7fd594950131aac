"""Data for jaxtrain: TFDS corpora (read without TensorFlow) -> a token cache -> global batches addressed by step,
from one source or a weighted mixture, packed with their documents' boundaries."""

from jaxtrain.data import files, mixture, packing
from jaxtrain.data.errors import DataError
from jaxtrain.data.pipeline import EvalSet, Prefetcher, TrainData, eval_batches, eval_sets
from jaxtrain.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, make_tokenizer, vocab_size


def check(config, target) -> None:
  """The data settings that can be checked before anything is read: packing, document masks, the mixture."""
  packing.check(config, target)
  mixture.check(config, target)
  files.check(config, target)  # data.name=files: the files exist, are their format, have the text field


__all__ = ["DataError", "TrainData", "Prefetcher", "EvalSet", "eval_batches", "eval_sets", "make_tokenizer",
           "vocab_size", "ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer", "check", "mixture", "packing"]
