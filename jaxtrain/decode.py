"""The KV cache for generation: prefill the prompt once, then decode one token per step against the cache.

    cache = init_cache(module.m, batch=B, length=S)       # {"k", "v": [L, B, S, G, K]}, zeros
    x_BPD, cache = extend(module, prompt_BP, cache, 0)    # prefill: the prompt's keys and values at 0..P-1
    x_B1D, cache = extend(module, token_B1, cache, n)     # a decode step: one token at position n

As MaxText, Levanter and big_vision decode: the keys and values of every layer are kept in a preallocated cache of
S positions (L layers, G kv heads of K dims: grouped-query attention caches G, not H, heads), so each new token
costs one position's forward pass and one read of the cache, not a forward pass over the whole window. `extend`
runs the model's own blocks (`Transformer.hidden(..., cache=...)`: every norm placement's wiring, μS's multipliers,
QK-norm, RoPE at the tokens' true positions) with attention through `attention.cached`. The entries after the
written ones are stale (a padded prompt's tail, zeros) and masked until a step overwrites them, so a prompt padded
to a bucket length and the decode steps share one compiled program per shape (`jaxtrain.sample` runs the loop).
FP8 linears run as in the windowed sampler, without side inputs: static FP8 (μS) gives the window's tokens;
delayed scaling falls back to current scaling (jaxtrain/fp8.py), each tensor's own amax, which at a decode step is
the one new token's rather than the whole window's, so it matches the window only up to FP8 rounding.

The cache is laid out on the mesh by its logical axes (`CACHE_AXES`): rows over the batch axes, kv heads over
`tensor`, as the attention activations are; under `jax.set_mesh` with sharded parameters decoding runs sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain import config as cfg_lib
from jaxtrain.sharding import constrain

CACHE_AXES = ("layers", "batch", None, "kv_heads", None)  # [L, B, S, G, K]


def cache_shape(m, batch: int, length: int) -> tuple[int, ...]:
  """(L, B, S, G, K) of one of the cache's two arrays for model config `m`."""
  return (m.num_layers, batch, length, cfg_lib.num_kv_heads(m), cfg_lib.head_dim(m))


def init_cache(m, batch: int, length: int) -> dict:
  """A cache of `length` positions for `batch` rows: {"k", "v"} zeros in the compute dtype, on the mesh's layout."""
  zeros = lambda: constrain(jnp.zeros(cache_shape(m, batch, length), jnp.dtype(m.compute_dtype)), CACHE_AXES)
  return {"k": zeros(), "v": zeros()}


def check_length(prompt_len: int, cache_len: int) -> None:
  """ValueError (one line) for a prompt the cache cannot hold."""
  if prompt_len > cache_len:
    raise ValueError(f"generate: the prompt has {prompt_len} tokens, more than the KV cache's {cache_len} "
                     f"(model.max_seq_len); shorten the prompt, or use method='window' (it keeps the last tokens)")


def extend(module, tokens_BT, cache: dict, index):
  """(x_BTD, cache): the residual stream of `tokens_BT` at positions index..index+T-1 (the final norm's input) and
  the cache with their keys and values written there. `module` is the NNX Transformer; `index` may be traced."""
  x_BTD, cache = module.hidden(tokens_BT, cache=dict(cache, index=jnp.asarray(index, jnp.int32)))
  return x_BTD, {k: constrain(cache[k], CACHE_AXES) for k in ("k", "v")}
