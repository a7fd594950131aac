"""Hugging Face `transformers` checkpoints: a jaxtrain model's config and parameters <-> an HF config and state dict.

The model mappings are pure functions over numpy arrays, with no torch or transformers (the tests load their
results with them); the tokenizer files are built with `tokenizers` (SentencePiece: transformers' converter).

    export:  jaxtrain model          HF architecture (transformers' modeling code, no custom code)
             pre | lns, RMSNorm, SwiGLU     LlamaForCausalLM        (+ qk_norm: Qwen3ForCausalLM)
             peri, RMSNorm, SwiGLU          Gemma2ForCausalLM       (+ qk_norm: Gemma3ForCausalLM, gemma3_text)
             pre | lns, LayerNorm, SwiGLU   StableLmForCausalLM
             pre | lns, LayerNorm, GELU     Starcoder2ForCausalLM   (use_bias=False)
    import:  Llama, Mistral (no sliding window), Qwen3, StableLM, Starcoder2 -> a `pre` model

Why each mapping is exact (checked against transformers 5.24 in tests/test_hf.py, logits and greedy tokens):
- RoPE: jaxtrain's rotate-half form over the whole head dim, θ^(-2i/K), is HF's `rotate_half` convention,
  so q and k are written as they are (no interleave permutation). Query head h reads kv head h // (H/G) in both;
  the attention scale is 1/√head_dim in both.
- Linears: jaxtrain's einsum weights [D, H, K], [D, G, K], [H, K, D], [D, 2, F], [F, D] are HF's [out, in]
  matrices reshaped and transposed; `wi[:, 0]` is gate_proj, `wi[:, 1]` up_proj.
- Norms: both compute RMSNorm and LayerNorm in float32 with eps inside the root (HF casts to the input dtype
  before the weight, jaxtrain after: the same in float32). LNS's 1/√(ℓ+1) on the pre-norm's output is folded into
  that norm's weight (and bias): N(x)·w·s = N(x)·(w·s).
- Gemma: its RMSNorm multiplies by (1 + w), so w = scale − 1; it multiplies the embedding by √d, so the table is
  written as E/√d and the head, untied, as E (or jaxtrain's head). Scaling 1/√query_pre_attn_scalar with
  query_pre_attn_scalar = head_dim, no softcaps, every layer full attention, activation silu.
- `embed_norm` is a function of each table row alone: folded into the table (the head, if tied, keeps E, so it is
  written untied).

What has no exact HF architecture is refused with one line naming what is: `post`, `mix`, `res_post` placements
(and so μnit Scaling, which needs res_post), `norm.final=False`, StableMax outputs, RMSNorm with GELU, LayerNorm
with QK-norm, Peri-LN with LayerNorm or GELU.
"""

from __future__ import annotations

import math

import numpy as np

from jaxtrain import config as cfg_lib
from jaxtrain.config import ConfigError

SUPPORTED = ("pre or lns with RMSNorm + SwiGLU (Llama; with qk_norm Qwen3), peri with RMSNorm + SwiGLU (Gemma 2; "
             "with qk_norm Gemma 3), pre or lns with LayerNorm + SwiGLU (StableLM) or + GELU (Starcoder2), each with "
             "norm.final=true, parametrization=sp, output=softmax")
IMPORTABLE = ("llama", "mistral", "qwen3", "stablelm", "starcoder2")

# model_type -> (architecture class, jaxtrain norm kind, mlp, qk_norm, Gemma-style norms and embedding)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "rmsnorm", "swiglu", False, False),
    "qwen3": ("Qwen3ForCausalLM", "rmsnorm", "swiglu", True, False),
    "gemma2": ("Gemma2ForCausalLM", "rmsnorm", "swiglu", False, True),
    "gemma3_text": ("Gemma3ForCausalLM", "rmsnorm", "swiglu", True, True),
    "stablelm": ("StableLmForCausalLM", "layernorm", "swiglu", False, False),
    "starcoder2": ("Starcoder2ForCausalLM", "layernorm", "gelu", False, False),
}


def _refuse(what: str) -> ConfigError:
  return ConfigError(f"cannot export a model with {what}: no Hugging Face architecture computes it exactly; "
                     f"supported: {SUPPORTED}")


def architecture(m) -> str:
  """The HF `model_type` that computes jaxtrain model config `m` exactly; ConfigError (one line) if none does."""
  n = m.norm
  if n.placement not in ("pre", "lns", "peri"):
    raise _refuse(f"model.norm.placement={n.placement}")
  if m.parametrization != "sp":
    raise _refuse(f"model.parametrization={m.parametrization}")
  if not n.final:
    raise _refuse("model.norm.final=false")
  if m.output != "softmax":
    raise _refuse(f"model.output={m.output} (HF's probabilities are a softmax)")
  if n.placement == "peri":
    if n.kind != "rmsnorm" or m.mlp != "swiglu":
      raise _refuse(f"peri with {n.kind} and {m.mlp} (Gemma has RMSNorm and a gated MLP)")
    return "gemma3_text" if m.qk_norm else "gemma2"
  if n.kind == "rmsnorm":
    if m.mlp != "swiglu":
      raise _refuse("RMSNorm and a GELU MLP")
    arch = "qwen3" if m.qk_norm else "llama"
    if m.d_model % m.num_heads:
      raise _refuse(f"d_model={m.d_model} not divisible by num_heads={m.num_heads} (transformers refuses it)")
    return arch
  if m.qk_norm:
    raise _refuse("LayerNorm and qk_norm (StableLM's per-head QK LayerNorms have no bias)")
  if cfg_lib.head_dim(m) * m.num_heads != m.d_model:
    raise _refuse("head_dim·num_heads != d_model with LayerNorm (StableLM and Starcoder2 derive head_dim)")
  return "stablelm" if m.mlp == "swiglu" else "starcoder2"


# ---------------------------------------------------------------- export


def _norm_rows(x, scale, bias, kind: str, eps: float):
  """jaxtrain's Norm on the last axis, in float32 (as model.Norm computes it)."""
  x = x.astype(np.float32)
  if kind == "layernorm":
    x = x - x.mean(-1, keepdims=True)
  y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + np.float32(eps))
  y = y * scale
  return y + bias if bias is not None else y


def to_hf(m, params, *, bos_id: int | None = None, eos_id: int | None = None,
          dtype: str = "float32") -> tuple[dict, dict[str, np.ndarray]]:
  """(HF config.json as a dict, {tensor name: float32 array}) of jaxtrain model config `m` and its `params`.

  `params`: the plain parameter dict (model.init's, or a checkpoint's), any array type. `dtype` only names
  the stored dtype in the config (`dtype`); the arrays are float32, cast by the caller.
  """
  arch = architecture(m)
  _, kind, mlp, qk_norm, gemma = ARCHITECTURES[arch]
  p = _numpy(params)
  L, D, H = m.num_layers, m.d_model, m.num_heads
  G, K = cfg_lib.num_kv_heads(m), cfg_lib.head_dim(m)
  eps, b = m.norm.eps, p["blocks"]
  norm_w = (lambda w: w - 1.0) if gemma else (lambda w: w)
  ones = np.ones((L, D), np.float32)

  out = {}
  E = p["embed"]
  E_in = E if not m.norm.embed_norm else _norm_rows(E, p["embed_norm"]["scale"], p["embed_norm"].get("bias"),
                                                    kind, eps)
  head = E if m.tie_embeddings else p["head"]["w"].T
  tied = m.tie_embeddings and not m.norm.embed_norm and not gemma
  out["model.embed_tokens.weight"] = E_in / np.float32(math.sqrt(D)) if gemma else E_in
  if not tied:
    out["lm_head.weight"] = head
  out["model.norm.weight"] = norm_w(p["final_norm"]["scale"])
  if kind == "layernorm":
    out["model.norm.bias"] = p["final_norm"]["bias"]

  for l in range(L):
    pre = f"model.layers.{l}."
    s = np.float32(1.0 / math.sqrt(l + 1)) if m.norm.placement == "lns" else np.float32(1.0)
    a = pre + "self_attn."
    out[a + "q_proj.weight"] = b["attn"]["wq"]["w"][l].reshape(D, H * K).T
    out[a + "k_proj.weight"] = b["attn"]["wk"]["w"][l].reshape(D, G * K).T
    out[a + "v_proj.weight"] = b["attn"]["wv"]["w"][l].reshape(D, G * K).T
    out[a + "o_proj.weight"] = b["attn"]["wo"]["w"][l].reshape(H * K, D).T
    if qk_norm:
      out[a + "q_norm.weight"] = norm_w(b["attn"]["q_norm"]["scale"][l])
      out[a + "k_norm.weight"] = norm_w(b["attn"]["k_norm"]["scale"][l])
    wi, down = b["mlp"]["wi"]["w"][l], b["mlp"]["down"]["w"][l]
    if mlp == "swiglu":
      out[pre + "mlp.gate_proj.weight"] = wi[:, 0].T
      out[pre + "mlp.up_proj.weight"] = wi[:, 1].T
      out[pre + "mlp.down_proj.weight"] = down.T
    else:
      out[pre + "mlp.c_fc.weight"] = wi[:, 0].T
      out[pre + "mlp.c_proj.weight"] = down.T
    mlp_in = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
    for name, src in (("input_layernorm", "attn_norm"), (mlp_in, "mlp_norm")):
      out[pre + name + ".weight"] = norm_w(b[src]["scale"][l] * s)
      if kind == "layernorm":
        out[pre + name + ".bias"] = b[src]["bias"][l] * s
    if gemma:  # Peri-LN's output norms (scale fixed at 1 when not learnable: Gemma weight 0)
      for name, src in (("post_attention_layernorm", "attn_out_norm"), ("post_feedforward_layernorm", "mlp_out_norm")):
        out[pre + name + ".weight"] = norm_w(b[src]["scale"][l] if src in b else ones[l])

  out = {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
  return hf_config(m, arch, tied, bos_id=bos_id, eos_id=eos_id, dtype=dtype), out


def hf_config(m, arch: str, tied: bool, *, bos_id=None, eos_id=None, dtype="float32") -> dict:
  """The config.json of `arch` for jaxtrain model config `m`."""
  cls, kind, _, _, gemma = ARCHITECTURES[arch]
  L, K = m.num_layers, cfg_lib.head_dim(m)
  rope = {"rope_type": "default", "rope_theta": float(m.rope_theta)}
  c = {
      "architectures": [cls], "model_type": arch, "vocab_size": m.vocab_size, "hidden_size": m.d_model,
      "intermediate_size": cfg_lib.mlp_dim(m), "num_hidden_layers": L, "num_attention_heads": m.num_heads,
      "num_key_value_heads": cfg_lib.num_kv_heads(m), "max_position_embeddings": m.max_seq_len,
      "tie_word_embeddings": tied, "initializer_range": m.init_std, "rope_parameters": rope,
      "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None, "dtype": dtype,
      "attention_dropout": 0.0, "use_cache": True,
  }
  if kind == "rmsnorm":
    c |= {"head_dim": K, "rms_norm_eps": m.norm.eps, "attention_bias": False}
  if arch == "llama":
    c |= {"hidden_act": "silu", "mlp_bias": False, "pretraining_tp": 1}
  elif arch == "qwen3":
    c |= {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None,
          "layer_types": ["full_attention"] * L}
  elif gemma:
    c |= {"hidden_activation": "silu", "query_pre_attn_scalar": K, "final_logit_softcapping": None,
          "attn_logit_softcapping": None, "sliding_window": m.max_seq_len, "layer_types": ["full_attention"] * L}
    if arch == "gemma3_text":
      c["rope_parameters"] = {"full_attention": dict(rope), "sliding_attention": dict(rope)}
  elif arch == "stablelm":
    c |= {"hidden_act": "silu", "layer_norm_eps": m.norm.eps, "use_qkv_bias": False, "qk_layernorm": False,
          "use_parallel_residual": False, "hidden_dropout": 0.0,
          "rope_parameters": rope | {"partial_rotary_factor": 1.0}}
  elif arch == "starcoder2":
    c |= {"hidden_act": "gelu_pytorch_tanh", "norm_epsilon": m.norm.eps, "use_bias": False, "sliding_window": None,
          "residual_dropout": 0.0, "embedding_dropout": 0.0}
  return c


def _numpy(tree):
  """A nested dict of float32 numpy arrays (from jax arrays, nnx.State or numpy)."""
  if hasattr(tree, "items"):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


# ---------------------------------------------------------------- import


def _import_refusal(what: str) -> ConfigError:
  return ConfigError(f"cannot import {what}: it does not map exactly onto a jaxtrain model; importable: "
                     f"{', '.join(IMPORTABLE)} (no biases, default RoPE, no sliding window, full rotary)")


def rope_theta(c: dict) -> float:
  """RoPE θ of an HF config (v5 `rope_parameters`, or the older `rope_theta` / `rope_scaling` keys)."""
  rp = c.get("rope_parameters") or {}
  if "full_attention" in rp:
    rp = rp["full_attention"]
  rope_type = rp.get("rope_type", rp.get("type", "default"))
  scaling = c.get("rope_scaling")
  if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default")):
    raise _import_refusal(f"RoPE of type {rope_type if rope_type != 'default' else scaling} (jaxtrain's is the "
                          "default, unscaled)")
  if rp.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) != 1.0:
    raise _import_refusal("a partial rotary embedding (partial_rotary_factor != 1)")
  return float(rp.get("rope_theta", c.get("rope_theta", 10_000.0)))


def model_fields(c: dict) -> dict:
  """The jaxtrain `model` fields an HF config.json fixes (everything else comes from the training config)."""
  mt = c.get("model_type")
  if mt not in IMPORTABLE:
    hint = (" (Gemma's √d embedding multiplier and (1+w) norms have no exact jaxtrain form)"
            if str(mt).startswith("gemma") else "")
    raise _import_refusal(f"model_type={mt!r}{hint}")
  act = c.get("hidden_act", "silu")
  want_act = ("gelu_pytorch_tanh", "gelu_new") if mt == "starcoder2" else ("silu", "swish")
  if act not in want_act:
    raise _import_refusal(f"{mt} with hidden_act={act!r} (jaxtrain's is {want_act[0]})")
  for key in ("attention_bias", "mlp_bias", "use_qkv_bias", "qk_layernorm", "use_parallel_residual", "use_bias",
              "use_sliding_window"):
    if c.get(key):
      raise _import_refusal(f"{mt} with {key}=true")
  if mt in ("mistral", "starcoder2") and c.get("sliding_window") is not None:
    raise _import_refusal(f"{mt} with sliding_window={c['sliding_window']} (set it to null only if no sequence is "
                          "longer than the window)")
  D, H = c["hidden_size"], c["num_attention_heads"]
  K = c.get("head_dim") or D // H
  layernorm = mt in ("stablelm", "starcoder2")
  eps = c.get("layer_norm_eps", c.get("norm_epsilon", 1e-5)) if layernorm else c.get("rms_norm_eps", 1e-6)
  return {
      "vocab_size": c["vocab_size"], "d_model": D, "num_layers": c["num_hidden_layers"], "num_heads": H,
      "num_kv_heads": c.get("num_key_value_heads") or H, "head_dim": K, "mlp_dim": c["intermediate_size"],
      "mlp": "gelu" if mt == "starcoder2" else "swiglu", "qk_norm": mt == "qwen3",
      "tie_embeddings": bool(c.get("tie_word_embeddings", mt == "starcoder2")),
      "max_seq_len": c.get("max_position_embeddings", 2048), "rope_theta": rope_theta(c),
      "parametrization": "sp",
      "norm": {"kind": "layernorm" if layernorm else "rmsnorm", "eps": float(eps), "placement": "pre",
               "embed_norm": False, "final": True},
  }


def from_hf(c: dict, tensors) -> tuple[dict, dict]:
  """(jaxtrain model fields, params as a nested dict of float32 numpy arrays) of an HF config and state dict.

  `tensors`: {name: array} (any float dtype; a `safetensors` file's names, with or without a `model.` prefix
  on the body). The inverse of `to_hf` for the importable architectures.
  """
  f = model_fields(c)
  L, D, H, G, K = f["num_layers"], f["d_model"], f["num_heads"], f["num_kv_heads"], f["head_dim"]
  F, V = f["mlp_dim"], f["vocab_size"]
  layernorm, gelu = f["norm"]["kind"] == "layernorm", f["mlp"] == "gelu"

  def get(name, shape):
    key = name if name in tensors else name.removeprefix("model.")
    if key not in tensors:
      raise ConfigError(f"the checkpoint has no tensor {name!r} that its config.json ({c.get('model_type')}) implies")
    x = np.asarray(tensors[key], np.float32)
    if x.shape != shape:
      raise ConfigError(f"tensor {name} has shape {x.shape}, its config.json implies {shape}")
    return x

  def per_layer(fn):
    return np.stack([fn(f"model.layers.{l}.") for l in range(L)])

  def norm(name, dim):
    out = {"scale": per_layer(lambda p: get(p + name + ".weight", (dim,)))}
    if layernorm:
      out["bias"] = per_layer(lambda p: get(p + name + ".bias", (dim,)))
    return out

  a = "self_attn."
  attn = {
      "wq": {"w": per_layer(lambda p: get(p + a + "q_proj.weight", (H * K, D)).T.reshape(D, H, K))},
      "wk": {"w": per_layer(lambda p: get(p + a + "k_proj.weight", (G * K, D)).T.reshape(D, G, K))},
      "wv": {"w": per_layer(lambda p: get(p + a + "v_proj.weight", (G * K, D)).T.reshape(D, G, K))},
      "wo": {"w": per_layer(lambda p: get(p + a + "o_proj.weight", (D, H * K)).T.reshape(H, K, D))},
  }
  if f["qk_norm"]:
    attn["q_norm"] = {"scale": per_layer(lambda p: get(p + a + "q_norm.weight", (K,)))}
    attn["k_norm"] = {"scale": per_layer(lambda p: get(p + a + "k_norm.weight", (K,)))}
  if gelu:
    wi = per_layer(lambda p: get(p + "mlp.c_fc.weight", (F, D)).T[:, None, :])
    down = per_layer(lambda p: get(p + "mlp.c_proj.weight", (D, F)).T)
  else:
    wi = per_layer(lambda p: np.stack([get(p + "mlp.gate_proj.weight", (F, D)).T,
                                       get(p + "mlp.up_proj.weight", (F, D)).T], axis=1))
    down = per_layer(lambda p: get(p + "mlp.down_proj.weight", (D, F)).T)
  params = {
      "embed": get("model.embed_tokens.weight", (V, D)),
      "blocks": {"attn": attn, "attn_norm": norm("input_layernorm", D), "mlp_norm": norm("post_attention_layernorm", D),
                 "mlp": {"wi": {"w": wi}, "down": {"w": down}}},
      "final_norm": {"scale": get("model.norm.weight", (D,))},
  }
  if layernorm:
    params["final_norm"]["bias"] = get("model.norm.bias", (D,))
  if not f["tie_embeddings"]:
    params["head"] = {"w": get("lm_head.weight", (V, D)).T.copy()}
  return f, params


# ---------------------------------------------------------------- tokenizers


def byte_alphabet() -> list[str]:
  """The printable character standing for each byte 0..255 (GPT-2's `bytes_to_unicode`, as ByteLevel uses it)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for byte in range(256):
    if byte in keep:
      chars[byte] = chr(byte)
    else:
      chars[byte], extra = chr(256 + extra), extra + 1
  return [chars[b] for b in range(256)]


def byte_tokenizer_json() -> str:
  """jaxtrain's byte tokenizer as a `tokenizers` tokenizer.json: a BPE with no merges over the byte alphabet,
  token id = byte value, byte-level pre-tokenizer and decoder without regex splits or prefix spaces.

  No special tokens: eos (id 0, NUL) is named in config.json only, so no text ever encodes to it by accident.
  """
  try:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("exporting the tokenizer needs the `tokenizers` package: pip install tokenizers") from None
  vocab = {ch: b for b, ch in enumerate(byte_alphabet())}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return tok.to_str(pretty=True)


def is_byte_tokenizer_json(text: str) -> bool:
  """Whether a tokenizer.json is `byte_tokenizer_json`'s: its model's vocabulary and merges, nothing added."""
  import json  # pylint: disable=g-import-not-at-top
  got, want = json.loads(text), json.loads(byte_tokenizer_json())
  return got.get("model", {}).get("vocab") == want["model"]["vocab"] and not got["model"].get("merges") and \
      not got.get("added_tokens")


def tokenizer_files(spec: str, max_len: int, eos_token: str | None = None) -> dict[str, bytes]:
  """{file name: contents} of the HF tokenizer for jaxtrain's `data.tokenizer` (`byte`, a SentencePiece path, or a
  tokenizer.json, written as it is with `eos_token`, the run's end-of-document token, in tokenizer_config.json).

  SentencePiece (BPE or unigram): a tokenizer.json that follows the model's own normalizer spec, built by
  transformers' `SpmConverter.build_tokenizer_from_spm_proto`, which encodes as `SentencePieceProcessor.encode`
  does (checked in the tests); its eos piece is the eos token (no BOS or EOS is added when encoding, as jaxtrain).
  """
  import json  # pylint: disable=g-import-not-at-top
  cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
         "clean_up_tokenization_spaces": False}
  if spec == "byte":
    return {"tokenizer.json": byte_tokenizer_json().encode(), "tokenizer_config.json": json.dumps(cfg).encode()}
  if spec.endswith(".json"):  # a Hugging Face tokenizer already: the model's tokenizer, byte for byte
    from jaxtrain import paths  # pylint: disable=g-import-not-at-top
    if eos_token:
      cfg["eos_token"] = eos_token
    return {"tokenizer.json": paths.resolve(spec).read_bytes(), "tokenizer_config.json": json.dumps(cfg).encode()}
  if not spec.endswith(".model"):  # bpe:N names no file: the run's copy in its workdir does (load_run's config)
    raise ConfigError(f"cannot export data.tokenizer={spec}: name a tokenizer file (a trained bpe:N is the run's "
                      "workdir/tokenizer.json)")
  import os  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
  try:
    from transformers.convert_slow_tokenizer import SpmConverter  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("exporting a SentencePiece tokenizer needs `transformers` (its converter): pip install "
                      "transformers") from None
  with open(os.path.expanduser(spec), "rb") as f:
    proto = pb.ModelProto.FromString(f.read())
  if proto.trainer_spec.model_type == pb.TrainerSpec.BPE:
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  elif proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
    vocab = [(p.piece, p.score) for p in proto.pieces]
  else:
    raise ConfigError(f"cannot export the SentencePiece tokenizer {spec}: only BPE and unigram models map onto "
                      "`tokenizers`; export with one of those or with data.tokenizer=byte")
  tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
  eos = proto.trainer_spec.eos_id
  if eos >= 0:
    cfg["eos_token"] = proto.pieces[eos].piece
  return {"tokenizer.json": tok.to_str(pretty=True).encode(), "tokenizer_config.json": json.dumps(cfg).encode()}
