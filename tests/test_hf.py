"""Hugging Face export and import (jaxtrain/hf.py, export.py, import_hf.py) against transformers and torch on CPU.

Every supported mapping on a random tiny model: the HF model's float32 logits match jaxtrain's to 1e-4 of their
scale and `generate` picks the same greedy tokens. These are what pin jaxtrain's conventions (RoPE's rotation
direction and layout, GQA's head grouping, SwiGLU's gate/up order, Gemma's norms) to the ecosystem's.
"""

import json
import logging
import os
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from jaxtrain import __main__ as cli
from jaxtrain import checkpoint, export, hf, import_hf, model, train
from jaxtrain import config as cfg_lib
from jaxtrain.config import ConfigError
from jaxtrain.data import ByteTokenizer, SentencePieceTokenizer
from jaxtrain.run import load_run
from tiny import tiny_config

ONE = jax.devices()[:1]
TESTS = os.path.dirname(os.path.abspath(__file__))
TEXT = 'def f(x):\n  return "héllo ✓ Ā"  \t\x7f 🎉 ok\n\n  two  spaces  '

# name -> (config overrides, HF class); every mapping in hf.ARCHITECTURES, tied and untied, GQA, LNS, embed_norm
CASES = {
    "llama": ({}, "LlamaForCausalLM"),
    "llama_lns_embed_norm": ({"model.norm.placement": "lns", "model.norm.embed_norm": True}, "LlamaForCausalLM"),
    "qwen3": ({"model.qk_norm": True, "model.num_kv_heads": 2, "model.tie_embeddings": False, "model.head_dim": 16},
              "Qwen3ForCausalLM"),
    "gemma2": ({"model.norm.placement": "peri"}, "Gemma2ForCausalLM"),
    "gemma3": ({"model.norm.placement": "peri", "model.qk_norm": True, "model.norm.embed_norm": True,
                "model.tie_embeddings": False, "model.norm.out_norm_scale": False}, "Gemma3ForCausalLM"),
    "stablelm": ({"model.norm.kind": "layernorm", "model.norm.eps": 1e-5}, "StableLmForCausalLM"),
    "starcoder2": ({"model.norm.kind": "layernorm", "model.mlp": "gelu", "model.norm.placement": "lns",
                    "model.tie_embeddings": False, "model.num_kv_heads": 1}, "Starcoder2ForCausalLM"),
}


def random_model(data_dir, overrides, seed=0):
  """(config, params as numpy) of a tiny model, drawn with numpy (compiling model.init takes seconds) at std 0.3, so
  that every part shows in the logits; norm gains around 1 and biases around 0, so that Gemma's w − 1, LNS's
  folding and LayerNorm's biases are exercised."""
  c = tiny_config(data_dir, **overrides)
  rng = np.random.RandomState(seed)

  def draw(path, a):
    x = 0.3 * rng.standard_normal(a.shape).astype(a.dtype)
    return x + 1 if jax.tree_util.keystr(path).endswith("['scale']") else x

  return c, jax.tree_util.tree_map_with_path(draw, model.abstract(c.model)[1])


def jaxtrain_logits(c, params):
  """tokens_BT -> float32 logits of the jaxtrain model, jitted."""
  graphdef = model.abstract(c.model)[0]
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  return lambda tokens_BT: np.asarray(forward(params, tokens_BT))


def greedy(logits_fn, prompt_BP, n: int, width: int):
  """jaxtrain's greedy rollout: the argmax of the logits at the last real position, appended, n times (a fixed
  `width` buffer, so one compiled forward serves every step: causal attention ignores what comes after)."""
  B, P = prompt_BP.shape
  buf = np.zeros((B, width), np.int32)
  buf[:, :P] = prompt_BP
  for i in range(n):
    buf[:, P + i] = logits_fn(buf)[:, P + i - 1].argmax(-1)
  return buf[:, P:P + n]


def hf_logits(hf_model, tokens_BT):
  with torch.no_grad():
    return hf_model(torch.tensor(np.asarray(tokens_BT), dtype=torch.long)).logits.float().numpy()


TOKENS = np.random.RandomState(0).randint(1, 256, (3, 40))  # 40 > head_dim: every RoPE frequency turns


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_jaxtrain_logits_and_greedy_tokens(case, data_dir, tmp_path):
  overrides, cls = CASES[case]
  c, params = random_model(data_dir, overrides)
  out = str(tmp_path / "hf")
  config = export.write_pretrained(out, c.model, params, eos_id=None)
  assert config["architectures"] == [cls]
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert type(hf_model).__name__ == cls  # transformers' own class: no custom code
  assert set(getattr(hf_model.config, "layer_types", None) or ["full_attention"]) == {"full_attention"}  # no windows

  logits_fn = jaxtrain_logits(c, params)
  ours, theirs = logits_fn(TOKENS), hf_logits(hf_model, TOKENS)
  scale = np.abs(ours).max()
  assert scale > 1.0  # logits large enough that a wrong mapping shows
  assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max()

  prompt = TOKENS[:, :7]
  want = greedy(logits_fn, prompt, 10, TOKENS.shape[1])
  with torch.no_grad():
    got = hf_model.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                            max_new_tokens=10, do_sample=False, pad_token_id=0)[:, prompt.shape[1]:].numpy()
  np.testing.assert_array_equal(got, want)

  if config["model_type"] in hf.IMPORTABLE and not (c.model.norm.embed_norm or c.model.norm.placement == "lns"):
    # the round trip: export -> import gives the parameters back bit for bit, and the model config's fields
    fields, back = hf.from_hf(json.load(open(os.path.join(out, "config.json"))),
                              load_file(os.path.join(out, "model.safetensors")))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)
    semantics = lambda m: checkpoint.semantics(m.to_dict())  # sizes resolved
    assert semantics(import_hf.derive_config(c, fields).model) == semantics(c.model)


def test_import_a_llama_that_transformers_wrote(data_dir, tmp_path):
  """Not only our own files: a random Llama (GQA, untied, θ = 5e5) saved by transformers imports exactly."""
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rope_parameters={"rope_type": "default", "rope_theta": 5e5})
  hf_model = transformers.LlamaForCausalLM(hf_config).float()
  with torch.no_grad():
    for p in hf_model.parameters():
      p.normal_(0.0, 0.3)  # large enough to show (norm weights too)
  hf_model.save_pretrained(str(tmp_path / "llama"))
  fields, params = hf.from_hf(*import_hf.read_pretrained(str(tmp_path / "llama")))
  assert (fields["num_kv_heads"], fields["tie_embeddings"], fields["rope_theta"]) == (2, False, 5e5)
  c = import_hf.derive_config(tiny_config(data_dir), fields)
  ours = jaxtrain_logits(c, params)(TOKENS)
  assert np.abs(ours - hf_logits(hf_model, TOKENS)).max() <= 1e-4 * np.abs(ours).max()


def test_bfloat16_export_loads_and_tracks_float32(data_dir, tmp_path):
  c, params = random_model(data_dir, CASES["qwen3"][0])
  out = str(tmp_path / "bf16")
  config = export.write_pretrained(out, c.model, params, dtype="bfloat16")
  assert config["dtype"] == "bfloat16"
  assert {str(v.dtype) for v in load_file(os.path.join(out, "model.safetensors")).values()} == {"bfloat16"}
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  ours = jaxtrain_logits(c, params)(TOKENS)
  assert np.abs(ours - hf_logits(hf_model, TOKENS)).max() <= 0.05 * np.abs(ours).max()


@pytest.mark.parametrize("overrides, what", [
    ({"model.norm.placement": "post"}, "placement=post"),
    ({"model.norm.placement": "mix"}, "placement=mix"),
    ({"model.norm.placement": "res_post"}, "placement=res_post"),
    ({"model.norm.final": False}, "norm.final=false"),
    ({"model.output": "stablemax"}, "output=stablemax"),
    ({"model.mlp": "gelu"}, "RMSNorm and a GELU MLP"),
    ({"model.norm.kind": "layernorm", "model.qk_norm": True}, "LayerNorm and qk_norm"),
    ({"model.norm.placement": "peri", "model.norm.kind": "layernorm"}, "peri with layernorm"),
])
def test_models_without_an_exact_architecture_are_refused(overrides, what, data_dir, tmp_path):
  c = tiny_config(data_dir, **overrides)
  with pytest.raises(ConfigError, match="supported: pre or lns") as e:
    export.write_pretrained(str(tmp_path / "x"), c.model, None)
  assert what in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "x")  # nothing written


@pytest.mark.parametrize("change, what", [
    ({"model_type": "gemma2"}, "Gemma's"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "RoPE of type linear"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window=4096"),
])
def test_imports_that_are_not_exact_are_refused(change, what, data_dir):
  c, params = random_model(data_dir, {})
  config, _ = hf.to_hf(c.model, params)
  with pytest.raises(ConfigError, match="importable: llama") as e:
    hf.model_fields(config | change)
  assert what in str(e.value)


def test_rope_theta_from_older_config_files():
  assert hf.rope_theta({"rope_theta": 5e5, "rope_scaling": None}) == 5e5  # transformers 4's keys
  assert hf.rope_theta({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) == 1e6
  with pytest.raises(ConfigError, match="RoPE of type"):
    hf.rope_theta({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


def test_tokenizers_round_trip(tmp_path):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  def load(spec):
    d = tmp_path / ("hf_" + os.path.basename(spec))
    d.mkdir()
    for name, blob in hf.tokenizer_files(spec, 64).items():
      (d / name).write_bytes(blob)
    return transformers.AutoTokenizer.from_pretrained(str(d))

  tok, ours = load("byte"), ByteTokenizer()
  ids = tok.encode(TEXT)
  assert ids == ours.encode(TEXT).tolist() and tok.decode(ids) == TEXT == ours.decode(ids)
  assert hf.is_byte_tokenizer_json((tmp_path / "hf_byte" / "tokenizer.json").read_text())

  corpus = tmp_path / "corpus.txt"
  corpus.write_text(open(os.path.join(TESTS, "..", "jaxtrain", "model.py")).read())
  for kind in ("bpe", "unigram"):
    prefix = str(tmp_path / f"sp_{kind}")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=500, model_type=kind,
                                   byte_fallback=True, minloglevel=2)
    tok, ours = load(prefix + ".model"), SentencePieceTokenizer(prefix + ".model")
    for text in (TEXT, open(os.path.join(TESTS, "..", "README.md")).read()[:3000]):
      ids = tok.encode(text, add_special_tokens=True)
      assert ids == ours.encode(text).tolist(), kind
      assert tok.decode(ids) == ours.decode(ids), kind


# ---------------------------------------------------------------- the command lines, on a trained run


def test_export_a_run_import_it_and_resume_training(data_dir, tmp_path, caplog):
  # The tiny config as tests/test_train.py trains it on one device: on CI its programs are in the XLA cache.
  run_dir, hf_dir, ft_dir = (str(tmp_path / n) for n in ("run", "hf", "ft"))
  train.train(tiny_config(data_dir), run_dir, devices=ONE)

  assert export.main(["--workdir", run_dir, "--out", hf_dir]) == 0
  assert export.main(["--workdir", run_dir, "--out", hf_dir]) == 2  # not empty
  assert export.main(["--workdir", run_dir, "--out", str(tmp_path / "x"), "--step=7"]) == 2  # no such step
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  run_model = load_run(run_dir).model()
  ours = np.asarray(run_model(TOKENS))
  assert np.abs(ours - hf_logits(hf_model, TOKENS)).max() <= 1e-4 * np.abs(ours).max()
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert tok.encode(TEXT) == ByteTokenizer().encode(TEXT).tolist()
  assert hf_model.config.eos_token_id == 0

  config_file = tmp_path / "ft_config.py"
  config_file.write_text(
      f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom tiny import tiny_config\n\n"
      f"def get_config(arg=None):\n  return tiny_config({data_dir!r})\n")
  config = cfg_lib.load(str(config_file))
  import_hf.import_hf(hf_dir, config, ft_dir, devices=ONE)  # the trainer's mesh below: its compiled init is reused
  imported = load_run(ft_dir).model(step=0)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), imported.params,
               run_model.params)  # the round trip through HF files: identical parameters
  assert import_hf.main([f"--from={hf_dir}", f"--config={config_file}", f"--workdir={ft_dir}"]) == 2  # not twice

  config, workdir = cli.parse([f"--config={config_file}", f"--flagfile={ft_dir}/import.flags", f"--workdir={ft_dir}"])
  assert config.model.head_dim == 8 and config.model.max_seq_len == 64 and config.model.tie_embeddings
  with caplog.at_level(logging.INFO, logger="jaxtrain"):
    summary = train.train(config, workdir, devices=ONE)
  assert "resumed from step 0" in caplog.text
  assert summary["step"] == 20 and np.isfinite(summary["final_eval_loss"])


def test_import_refuses_a_tokenizer_that_is_not_the_models(data_dir, tmp_path):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  c, params = random_model(data_dir, {"model.vocab_size": 200})
  out = str(tmp_path / "hf")
  export.write_pretrained(out, c.model, params)
  with pytest.raises(ConfigError, match="has 256 tokens, the model .* 200"):
    import_hf.import_hf(out, tiny_config(data_dir), str(tmp_path / "ft"), devices=ONE)

  (tmp_path / "corpus.txt").write_text(open(os.path.join(TESTS, "..", "jaxtrain", "model.py")).read())
  for name, seed in (("sp", 0), ("other", 1)):  # two vocabularies of the same size
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / name),
                                   vocab_size=500, model_type="unigram", seed_sentencepiece_size=10_000 + seed,
                                   minloglevel=2, byte_fallback=bool(seed))
  c, params = random_model(data_dir, {"model.vocab_size": 500})
  sp_out = str(tmp_path / "hf_sp")
  export.write_pretrained(sp_out, c.model, params, tokenizer=str(tmp_path / "sp.model"))
  with pytest.raises(ConfigError, match="a tokenizer of its own, not jaxtrain's byte"):
    import_hf.import_hf(sp_out, tiny_config(data_dir), str(tmp_path / "ft"), devices=ONE)
  with pytest.raises(ConfigError, match="is not that of the config's data.tokenizer"):
    import_hf.import_hf(sp_out, tiny_config(data_dir, **{"data.tokenizer": str(tmp_path / "other.model")}),
                        str(tmp_path / "ft"), devices=ONE)
  import_hf.check_tokenizer(sp_out, tiny_config(data_dir, **{"data.tokenizer": str(tmp_path / "sp.model")}).data,
                            500)  # its own tokenizer: accepted
  assert not os.path.exists(tmp_path / "ft")


def test_import_checks_a_tokenizer_json_model_against_the_config(data_dir, tmp_path):
  """A model whose tokenizer is a tokenizer.json (GPT-2 style): its own is accepted; bytes or another BPE of the
  same size are refused in one line that names the model's tokenizer.json."""
  from test_tokenizers import TEXTS, bpe_json  # pylint: disable=import-outside-toplevel
  ours = bpe_json(tmp_path / "ours.json")
  other = bpe_json(tmp_path / "other.json", texts=[t[::-1] for t in TEXTS] * 20)  # the same size, other merges
  c, params = random_model(data_dir, {"model.vocab_size": 320})
  out = str(tmp_path / "hf_bpe")
  export.write_pretrained(out, c.model, params, tokenizer=ours)
  want = f"set --config.data.tokenizer={os.path.join(out, 'tokenizer.json')}"
  with pytest.raises(ConfigError, match="a tokenizer of its own, not jaxtrain's byte tokenizer: " + re.escape(want)):
    import_hf.check_tokenizer(out, tiny_config(data_dir).data, 320)
  with pytest.raises(ConfigError, match="is not that of the config's data.tokenizer=.*other.json: " + re.escape(want)):
    import_hf.check_tokenizer(out, tiny_config(data_dir, **{"data.tokenizer": other}).data, 320)
  import_hf.check_tokenizer(out, tiny_config(data_dir, **{"data.tokenizer": ours}).data, 320)  # its own


def test_a_run_on_files_with_a_tokenizer_json_keeps_and_exports_its_tokenizer(data_dir, tmp_path):
  """A run on JSONL files with a GPT-2-style tokenizer.json: its workdir keeps the tokenizer, load_run and sampling
  use that copy after the original is gone, and export writes it as the model's tokenizer.json."""
  from test_data_files import DOCS, write  # pylint: disable=import-outside-toplevel
  from test_tokenizers import bpe_json  # pylint: disable=import-outside-toplevel
  os.makedirs(tmp_path / "gpt2_style")
  original = bpe_json(tmp_path / "gpt2_style" / "tokenizer.json")
  kept = open(original, "rb").read()
  run_dir, hf_dir = str(tmp_path / "run"), str(tmp_path / "hf")
  config = tiny_config(data_dir, **{"data.name": "files", "data.files": write(str(tmp_path / "corpus"), "jsonl", DOCS),
                                    "data.tokenizer": original, "model.vocab_size": 320, "train.steps": 4,
                                    "train.eval_every": 4, "train.checkpoint_every": 4})
  train.train(config, run_dir, devices=ONE)
  assert open(os.path.join(run_dir, "tokenizer.json"), "rb").read() == kept
  os.remove(original)  # the run's copy is what it uses from now on
  run = load_run(run_dir)
  assert run.config.data.tokenizer == os.path.join(run_dir, "tokenizer.json")
  assert isinstance(run.generate("<0042>", max_new_tokens=5, temperature=0.0), str)
  assert export.main(["--workdir", run_dir, "--out", hf_dir]) == 0
  assert open(os.path.join(hf_dir, "tokenizer.json"), "rb").read() == kept
  tok, ours = transformers.AutoTokenizer.from_pretrained(hf_dir), run.model().tokenizer
  for text in (TEXT, DOCS[7]):
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text).tolist()
  assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == ours.eos_id == 0
  assert transformers.AutoConfig.from_pretrained(hf_dir).eos_token_id == 0
