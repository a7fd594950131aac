"""Causal attention kernels, one per platform, behind one call: `causal(q, k, v, kind)`.

    blocked  jaxtrain's CPU kernel (below): query blocks that skip the keys after them, a FlashAttention-style
             backward pass that recomputes the probabilities from the saved log-sum-exp; also returns the max
             attention logit for the instability diagnostics
    xla      jax.nn.dot_product_attention(implementation="xla"): XLA's own, any platform
    cudnn    jax.nn.dot_product_attention(implementation="cudnn"): fused, NVIDIA GPUs, bfloat16/float16 only
    auto     (model.attention's default) blocked on CPU, cudnn on GPU with bfloat16/float16 compute, else xla

All take q [B, T, H, K] and k, v [B, T, G, K] (grouped-query heads: query head h reads kv head ⌊h/(H/G)⌋), with
the 1/√K scale inside, and return (out [B, T, H, K], max |q·k|/√K over causal pairs, NaN where the kernel hides
the logits). A splash-attention (TPU Pallas) kernel is not built yet: on TPU `auto` is `xla`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("auto", "blocked", "xla", "cudnn")


def kernel(kind: str, compute_dtype: str, platform: str | None = None) -> str:
  """The kernel `kind` means on `platform` (default: JAX's default backend): 'auto' resolved, others as given."""
  if kind != "auto":
    return kind
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "blocked"
  if platform in ("gpu", "cuda") and compute_dtype in ("bfloat16", "float16"):
    return "cudnn"
  return "xla"


def causal(q_BTHK, k_BTGK, v_BTGK, kind: str):
  """Causal softmax(q·kᵀ/√K)·v by kernel `kind` (not 'auto': see `kernel`) -> (out_BTHK, max logit or NaN)."""
  if kind == "blocked":
    return causal_attention(q_BTHK, k_BTGK, v_BTGK)
  if kind in ("xla", "cudnn"):
    out_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, is_causal=True, implementation=kind)
    return out_BTHK, jnp.float32(jnp.nan)
  raise ValueError(f"unknown attention kernel {kind!r}; choose one of {KINDS}")


# ---------------------------------------------------------------- the blocked CPU kernel


def query_blocks(T: int) -> list[tuple[int, int]]:
  """Query rows [start, end) processed together: block i attends keys [0, end_i) only.

  Causal attention needs only the lower triangle of q·kᵀ. Four blocks compute
  10/16 of the full square (two: 3/4), at the price of smaller matmuls; blocks
  of fewer than 64 rows cost more than they save on CPU.
  """
  n = 4
  while n > 1 and T // n < 64:
    n //= 2
  return [(i * T // n, (i + 1) * T // n) for i in range(n)]


def _causal_logits(q_BGRCK, k_BGSK, start: int):
  """q·k/√K in float32 for queries start..start+C against keys 0..S, -big where a key is in the future."""
  C, K = q_BGRCK.shape[-2:]
  S = k_BGSK.shape[-2]
  logits_BGRCS = jnp.einsum("bgrtk,bgsk->bgrts", q_BGRCK, k_BGSK, preferred_element_type=jnp.float32) * K**-0.5
  causal_CS = jnp.arange(start, start + C)[:, None] >= jnp.arange(S)[None, :]
  return jnp.where(causal_CS, logits_BGRCS, jnp.finfo(jnp.float32).min), causal_CS


def _heads_first(q_BTHK, k_BTGK, v_BTGK):
  B, T, H, K = q_BTHK.shape
  G = k_BTGK.shape[2]
  q_BGRTK = q_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
  return q_BGRTK, k_BTGK.transpose(0, 2, 1, 3), v_BTGK.transpose(0, 2, 1, 3)


def _cat(xs, axis):
  return jnp.concatenate(xs, axis) if len(xs) > 1 else xs[0]


def _attention_fwd(q_BTHK, k_BTGK, v_BTGK):
  q, k, v = _heads_first(q_BTHK, k_BTGK, v_BTGK)
  outs, lses, max_logit = [], [], jnp.float32(0)
  for s, e in query_blocks(q.shape[3]):
    logits_BGRCS, causal_CS = _causal_logits(q[:, :, :, s:e], k[:, :, :e], s)
    max_logit = jnp.maximum(max_logit, jnp.max(jnp.where(causal_CS, jnp.abs(logits_BGRCS), 0.0)))  # dropped when unread
    m_BGRC1 = jnp.max(logits_BGRCS, axis=-1, keepdims=True)
    e_BGRCS = jnp.exp(logits_BGRCS - m_BGRC1)
    s_BGRC1 = jnp.sum(e_BGRCS, axis=-1, keepdims=True)
    o_BGRCK = jnp.einsum("bgrts,bgsk->bgrtk", e_BGRCS.astype(v.dtype), v[:, :, :e],
                         preferred_element_type=jnp.float32) / s_BGRC1
    outs.append(o_BGRCK.astype(v.dtype))
    lses.append(m_BGRC1 + jnp.log(s_BGRC1))
  o_BGRTK = _cat(outs, 3)
  B, G, R, T, K = o_BGRTK.shape
  out_BTHK = o_BGRTK.transpose(0, 3, 1, 2, 4).reshape(B, T, G * R, K)
  return (out_BTHK, max_logit), (q, k, v, o_BGRTK, _cat(lses, 3))


def _attention_bwd(res, cotangents):
  q, k, v, o_BGRTK, lse_BGRT1 = res
  dout_BTHK, _ = cotangents  # max_logit is a diagnostic: no gradient flows through it
  B, G, R, T, K = q.shape
  do_BGRTK = dout_BTHK.reshape(B, T, G, R, K).transpose(0, 2, 3, 1, 4)
  delta_BGRT1 = jnp.sum(do_BGRTK.astype(jnp.float32) * o_BGRTK.astype(jnp.float32), axis=-1, keepdims=True)
  dqs, dk_BGSK, dv_BGSK = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for s, e in query_blocks(T):
    q_c, do_c, k_c, v_c = q[:, :, :, s:e], do_BGRTK[:, :, :, s:e], k[:, :, :e], v[:, :, :e]
    # The probabilities are recomputed, not stored: T×T per head is the big tensor.
    p_BGRCS = jnp.exp(_causal_logits(q_c, k_c, s)[0] - lse_BGRT1[:, :, :, s:e])
    dp_BGRCS = jnp.einsum("bgrtk,bgsk->bgrts", do_c, v_c, preferred_element_type=jnp.float32)
    ds_BGRCS = (p_BGRCS * (dp_BGRCS - delta_BGRT1[:, :, :, s:e]) * K**-0.5).astype(q.dtype)
    f32 = dict(preferred_element_type=jnp.float32)  # dk, dv sum over blocks: round to the compute dtype once
    dqs.append(jnp.einsum("bgrts,bgsk->bgrtk", ds_BGRCS, k_c, **f32).astype(q.dtype))
    dk_BGSK = dk_BGSK.at[:, :, :e].add(jnp.einsum("bgrts,bgrtk->bgsk", ds_BGRCS, q_c, **f32))
    dv_BGSK = dv_BGSK.at[:, :, :e].add(jnp.einsum("bgrts,bgrtk->bgsk", p_BGRCS.astype(v.dtype), do_c, **f32))
  return (_cat(dqs, 3).transpose(0, 3, 1, 2, 4).reshape(B, T, G * R, K),
          dk_BGSK.astype(k.dtype).transpose(0, 2, 1, 3), dv_BGSK.astype(v.dtype).transpose(0, 2, 1, 3))


@jax.custom_vjp
def causal_attention(q_BTHK, k_BTGK, v_BTGK):
  """softmax(q·kᵀ/√K + causal mask)·v with grouped kv heads -> (out_BTHK, max |q·k|/√K over causal pairs).

  Queries go in blocks (`query_blocks`) that skip the keys after them, so only
  5/8 of q·kᵀ is computed at T >= 256. The backward pass recomputes the
  probabilities from the saved log-sum-exp, as FlashAttention does, instead of
  storing the [B, G, R, T, S] probabilities of every layer: on CPU the memory
  traffic costs more than the extra q·kᵀ matmul.
  """
  return _attention_fwd(q_BTHK, k_BTGK, v_BTGK)[0]


causal_attention.defvjp(_attention_fwd, _attention_bwd)
