"""Data for jaxtrain: TFDS corpora (read without TensorFlow) -> a token cache -> global batches addressed by step."""

from jaxtrain.data.errors import DataError
from jaxtrain.data.pipeline import Prefetcher, TrainData, eval_batches
from jaxtrain.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, make_tokenizer, vocab_size

__all__ = ["DataError", "TrainData", "Prefetcher", "eval_batches", "make_tokenizer", "vocab_size",
           "ByteTokenizer", "SentencePieceTokenizer"]
