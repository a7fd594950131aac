"""Data for jaxtrain: TFDS corpora (read without TensorFlow) -> packed token batches."""

from jaxtrain.data.errors import DataError
from jaxtrain.data.grokking import load_modular, load_parity
from jaxtrain.data.pipeline import make_eval_batches, make_train_iterator
from jaxtrain.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, make_tokenizer, vocab_size

__all__ = ["DataError", "make_train_iterator", "make_eval_batches", "make_tokenizer",
           "vocab_size", "ByteTokenizer", "SentencePieceTokenizer", "load_modular", "load_parity"]
