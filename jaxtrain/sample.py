"""Sampling text from a language model: temperature, top-k (Fan et al. 2018, "Hierarchical Neural Story
Generation"), greedy at temperature 0.

    p(x_t | x_<t) ∝ exp(z_t / τ) over the k largest logits z_t (all of them without top_k); τ = 0: argmax.

Two ways to decode, each one compiled loop (temperature, top-k, the seed and the number of new tokens are traced,
so one program per shape serves them all; shapes are rounded up to powers of two):

  cache   (the default) a KV cache (jaxtrain/decode.py): the prompt is prefilled once, padded to a bucket length,
          then each token is one position's forward pass against the cache of S = the prompt plus the new tokens
          rounded up (at least 64), at most model.max_seq_len. A prompt longer than model.max_seq_len is refused;
          once prompt and tokens fill model.max_seq_len, the rest continues as `window` does past it.
  window  the reference: a fixed window of W tokens, the prompt and the tokens sampled so far padded at the end,
          one forward pass over the whole window per token (attention is causal, so the padding never reaches
          the position read). W is sized as S; past model.max_seq_len the window slides, the oldest token dropping
          out (RoPE sees only relative positions), and a longer prompt keeps its last W tokens.

Both give the same tokens (greedy: token for token, up to float rounding of near-ties; sampling: the same draws).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import decode as decode_lib

METHODS = ("cache", "window")


def sample_logits(logits_BV: jax.Array, key: jax.Array, temperature, top_k=None) -> jax.Array:
  """One token per row: argmax where temperature is 0, else a draw from softmax(logits/τ) over the top k.

  `temperature` and `top_k` (None: all) may be traced: one compiled program serves every setting.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  V = logits_BV.shape[-1]
  if top_k is not None:  # keep the logits ≥ the k-th largest (ties at the k-th kept too)
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, V)
    kth_B1 = jnp.take(jnp.sort(logits_BV, axis=-1), V - k, axis=-1)[:, None]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  t = jnp.asarray(temperature, jnp.float32)
  drawn_B = jax.random.categorical(key, logits_BV / jnp.maximum(t, 1e-6), axis=-1)
  return jnp.where(t > 0, drawn_B, jnp.argmax(logits_BV, -1)).astype(jnp.int32)


def generate(model, tokens_BT, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, vocab_size: int | None = None, method: str = "cache") -> np.ndarray:
  """int32[B, max_new_tokens]: tokens sampled after each row of `tokens_BT` (prompts of equal length, T ≥ 1).

  `model` is a `jaxtrain.run.Model` (anything with `config`, `graphdef`, `params`). The same seed gives the
  same tokens. `vocab_size`: draw only ids below it (the tokenizer's, where model.vocab_size pads it).
  `method`: 'cache' (KV cache) or 'window' (the whole window per token); see the module docstring.
  """
  tokens_BT = np.asarray(tokens_BT, np.int32)
  if tokens_BT.ndim == 1:
    tokens_BT = tokens_BT[None]
  B, T = tokens_BT.shape
  if T == 0:
    raise ValueError("generate: the prompt is empty; give at least one token")
  if temperature < 0 or (top_k is not None and top_k < 1):
    raise ValueError(f"generate: temperature={temperature} must be >= 0 and top_k={top_k} >= 1 (or None)")
  if method not in METHODS:
    raise ValueError(f"generate: method={method!r} is not one of {METHODS}")
  max_len = int(model.config.model.max_seq_len)
  if method == "cache":
    decode_lib.check_length(T, max_len)
  if max_new_tokens <= 0:
    return np.zeros((B, 0), np.int32)
  vocab = np.int32(vocab_size or model.config.model.vocab_size)
  key, temperature, top_k = jax.random.key(seed), np.float32(temperature), np.int32(top_k or 0)
  if method == "cache":
    return _generate_cached(model, tokens_BT, max_new_tokens, key, temperature, top_k, vocab, max_len)
  W = min(max_len, _bucket(T + max_new_tokens, 64))
  window_BW = np.zeros((B, W), np.int32)
  kept = tokens_BT[:, -W:]  # a prompt longer than the window: its last W tokens
  window_BW[:, :kept.shape[1]] = kept
  out_BN = _decode(model.graphdef, model.params, window_BW, np.int32(kept.shape[1]), key, temperature, top_k, vocab,
                   np.int32(max_new_tokens), np.int32(0), size=_bucket(max_new_tokens, 256))
  return np.asarray(out_BN)[:, :max_new_tokens]


def _generate_cached(model, tokens_BT, n: int, key, temperature, top_k, vocab, max_len: int) -> np.ndarray:
  """`generate` by the KV cache: the tokens whose context fits model.max_seq_len, then the window past it."""
  B, T = tokens_BT.shape
  S = min(max_len, _bucket(T + n, 64))
  P = min(_bucket(T, 64), S)  # the prefill's padded length: a few compiled prompt shapes
  prompt_BP = np.zeros((B, P), np.int32)
  prompt_BP[:, :T] = tokens_BT
  by_cache = min(n, max_len - T + 1)  # the last of these sees exactly max_seq_len tokens
  out_BN = _decode_cached(model.graphdef, model.params, prompt_BP, np.int32(T), key, temperature, top_k, vocab,
                          np.int32(by_cache), size=_bucket(by_cache, 256), cache_len=S)
  out_BN = np.asarray(out_BN)[:, :by_cache]
  if by_cache == n:
    return out_BN
  # Past model.max_seq_len: the windowed loop slides from the full window, its draws numbered on from by_cache.
  window_BW = np.concatenate([tokens_BT, out_BN], axis=1)[:, -max_len:]
  rest_BN = _decode(model.graphdef, model.params, window_BW, np.int32(max_len), key, temperature, top_k, vocab,
                    np.int32(n - by_cache), np.int32(by_cache), size=_bucket(n - by_cache, 256))
  return np.concatenate([out_BN, np.asarray(rest_BN)[:, :n - by_cache]], axis=1)


def _bucket(n: int, least: int) -> int:
  """The power of two ≥ n, at least `least`: the sizes programs are compiled for, so few compilations serve all."""
  return max(least, 2 ** math.ceil(math.log2(max(n, 1))))


def generate_text(model, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True, method: str = "cache") -> str:
  """The text sampled after `prompt`, decoded by the run's tokenizer (bytes or SentencePiece); ends at eos."""
  tok = model.tokenizer
  ids = tok.encode(prompt)
  if len(ids) == 0:  # an empty prompt starts a document: after eos, as in training
    ids = np.array([tok.eos_id], np.int32)
  new = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                 vocab_size=tok.vocab_size, method=method)[0]
  if stop_at_eos and (tok.eos_id == new).any():
    new = new[:int(np.argmax(new == tok.eos_id))]
  return tok.decode(new)


def _next_token(module, x_B1D, key, i, temperature, top_k, vocab_size):
  """The token drawn from the logits of hidden state x_B1D, with draw number i of `key`; top_k 0: all tokens."""
  logits_BV = module.logits(x_B1D)[:, 0]
  logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_size, logits_BV, -jnp.inf)
  top_k = jnp.where(top_k > 0, top_k, vocab_size)
  return sample_logits(logits_BV, jax.random.fold_in(key, i), temperature, top_k)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("size", "cache_len"))
def _decode_cached(graphdef, params, prompt_BP, length, key, temperature, top_k, vocab_size, steps, *, size: int,
                   cache_len: int):
  """int32[B, size], the first `steps` sampled after the prompt's first `length` tokens: prefill, then one token
  per step against a KV cache of `cache_len` positions (≥ length + steps - 1)."""
  module = nnx.merge(graphdef, params)
  B = prompt_BP.shape[0]
  cache = decode_lib.init_cache(module.m, B, cache_len)
  x_BPD, cache = decode_lib.extend(module, prompt_BP, cache, 0)  # the padding's entries are overwritten later
  x_B1D = jax.lax.dynamic_slice_in_dim(x_BPD, length - 1, 1, axis=1)
  token_B = _next_token(module, x_B1D, key, 0, temperature, top_k, vocab_size)
  out_BN = jnp.zeros((B, size), jnp.int32).at[:, 0].set(token_B)

  def step(i, carry):
    token_B, cache, out_BN = carry  # token_B, drawn at step i - 1, sits at position length + i - 1
    x_B1D, cache = decode_lib.extend(module, token_B[:, None], cache, length + i - 1)
    token_B = _next_token(module, x_B1D, key, i, temperature, top_k, vocab_size)
    return token_B, cache, jax.lax.dynamic_update_slice_in_dim(out_BN, token_B[:, None], i, axis=1)

  return jax.lax.fori_loop(1, steps, step, (token_B, cache, out_BN))[2]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("size",))
def _decode(graphdef, params, window_BW, length, key, temperature, top_k, vocab_size, steps, first, *, size: int):
  """int32[B, size], of which the first `steps` (traced, ≤ size) are sampled, draws numbered from `first`."""
  module = nnx.merge(graphdef, params)
  B, W = window_BW.shape

  def step(i, carry):
    window_BW, n, out_BN = carry  # n ≥ 1 tokens of the window are real
    x_BWD = module.hidden(window_BW)
    x_B1D = jax.lax.dynamic_slice_in_dim(x_BWD, n - 1, 1, axis=1)
    token_B = _next_token(module, x_B1D, key, first + i, temperature, top_k, vocab_size)
    full = n == W
    window_BW = jnp.where(full, jnp.roll(window_BW, -1, axis=1), window_BW)  # slide: the oldest token drops out
    window_BW = jax.lax.dynamic_update_slice_in_dim(window_BW, token_B[:, None], jnp.where(full, W - 1, n), axis=1)
    out_BN = jax.lax.dynamic_update_slice_in_dim(out_BN, token_B[:, None], i, axis=1)
    return window_BW, jnp.minimum(n + 1, W), out_BN

  _, _, out_BN = jax.lax.fori_loop(0, steps, step, (window_BW, length, jnp.zeros((B, size), jnp.int32)))
  return out_BN
