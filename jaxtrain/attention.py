"""Causal attention kernels, one per platform, behind one call: `causal(q, k, v, kind, segment_ids)`.

    blocked  jaxtrain's CPU kernel (below): query blocks that skip the keys after them, a FlashAttention-style
             backward pass that recomputes the probabilities from the saved log-sum-exp; also returns the max
             attention logit for the instability diagnostics
    xla      jax.nn.dot_product_attention(implementation="xla"): XLA's own, any platform
    cudnn    jax.nn.dot_product_attention(implementation="cudnn"): fused, NVIDIA GPUs, bfloat16/float16 only
    splash   Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention): TPU; block-sparse
             FlashAttention that skips the key blocks above the diagonal; sequence lengths divisible by 128
    auto     (model.attention's default) blocked on CPU, cudnn on GPU with bfloat16/float16 compute, splash on TPU
             (xla where T is not a multiple of 128), else xla

All take q [B, T, H, K] and k, v [B, T, G, K] (grouped-query heads: query head h reads kv head ⌊h/(H/G)⌋), with
the 1/√K scale inside, and return (out [B, T, H, K], max |q·k|/√K over causal pairs, NaN where the kernel hides
the logits).

Packed rows (documents side by side in one row, as MaxText and torchtitan pack): `segment_ids` int32 [B, T] names
each token's document (1, 2, ...; 0 is padding, which attends only to padding); a query then sees only the keys of
its own document, in every kernel: blocked and xla mask the logits, cudnn takes the mask as its bias input (the
public `jax.nn.dot_product_attention` has no cuDNN sequence-packing offsets in this JAX: a [B, 1, T, T] bias in
the compute dtype, whose gradient cuDNN also computes and the model drops), splash passes its `SegmentIds`, so it
still skips the key blocks above the diagonal. `segment_positions` restarts RoPE's positions at each document.
Without segment ids every kernel is the causal one, unchanged.

`cached` is decoding's attention against a KV cache (jaxtrain/decode.py): queries at positions index.. read the
cache's first `index` entries and the new keys causally.

The platform is the one the step is compiled for: the devices of the mesh being traced on (sharding.traced_on),
so that `python -m jaxtrain.compile --topology=v5e:4x4` on a CPU machine compiles the TPU kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain import config as cfg_lib
from jaxtrain import sharding

KINDS = ("auto", "blocked", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # splash's smallest tile along the sequence: T must be a multiple of it


def check(config, target: cfg_lib.Target) -> None:
  """What the configured kernel cannot run with on `target.platform` (None: not checked); one line each."""
  m, platform, seq_len = config.model, target.platform, config.data.seq_len
  cfg_lib.check_choices(config, {"model.attention": KINDS})
  if m.attention == "cudnn" and m.compute_dtype == "float32":
    raise cfg_lib.ConfigError("model.attention=cudnn needs model.compute_dtype=bfloat16 or float16")
  if m.attention == "cudnn" and platform not in (None, "gpu"):
    raise cfg_lib.ConfigError(
        f"model.attention=cudnn runs on NVIDIA GPUs only, not on {platform}; use model.attention=auto")
  if m.attention == "splash" and platform not in (None, "tpu"):
    raise cfg_lib.ConfigError(f"model.attention=splash is a TPU kernel, not for {platform}; use model.attention=auto")
  if m.attention == "splash" and seq_len % SPLASH_BLOCK:
    raise cfg_lib.ConfigError(f"model.attention=splash needs data.seq_len divisible by {SPLASH_BLOCK} (its tile), "
                              f"not {seq_len}; change data.seq_len or use model.attention=auto")


def platform_of_trace() -> str:
  """The platform of the mesh the caller traces on (its abstract device), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def kernel(kind: str, compute_dtype: str, platform: str | None = None) -> str:
  """The kernel `kind` means on `platform` (default: `platform_of_trace`): 'auto' resolved, others as given."""
  if kind != "auto":
    return kind
  platform = platform or platform_of_trace()
  if platform == "cpu":
    return "blocked"
  if platform in ("gpu", "cuda") and compute_dtype in ("bfloat16", "float16"):
    return "cudnn"
  if platform == "tpu":
    return "splash"  # causal() takes xla where T is not a multiple of SPLASH_BLOCK
  return "xla"


def causal(q_BTHK, k_BTGK, v_BTGK, kind: str, segment_ids_BT=None):
  """Causal softmax(q·kᵀ/√K)·v by kernel `kind` (not 'auto': see `kernel`) -> (out_BTHK, max logit or NaN).

  segment_ids_BT: int [B, T] documents of a packed row, or None; a query attends only to keys of its own document.
  """
  if kind == "blocked":
    return causal_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT)
  if kind == "splash" and q_BTHK.shape[1] % SPLASH_BLOCK == 0:  # an explicit splash is checked in `check`
    return splash(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT), jnp.float32(jnp.nan)
  if kind in ("xla", "cudnn", "splash"):
    mask = None if segment_ids_BT is None else same_segment(segment_ids_BT, segment_ids_BT)[:, None]
    out_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, mask=mask, is_causal=True,
                                            implementation="xla" if kind == "splash" else kind)
    return out_BTHK, jnp.float32(jnp.nan)
  raise ValueError(f"unknown attention kernel {kind!r}; choose one of {KINDS}")


def same_segment(q_segment_ids_BT, kv_segment_ids_BS):
  """bool [B, T, S]: query t and key s are in the same document."""
  return q_segment_ids_BT[:, :, None] == kv_segment_ids_BS[:, None, :]


def segment_positions(segment_ids_BT):
  """int32 [B, T]: each token's position within its document (0 at a document's first token), for RoPE."""
  T = segment_ids_BT.shape[1]
  t_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), segment_ids_BT.shape)
  starts_BT = jnp.concatenate([jnp.ones_like(segment_ids_BT[:, :1], bool),
                               segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  return t_BT - jax.lax.cummax(jnp.where(starts_BT, t_BT, 0), axis=1)


def cached(q_BTHK, k_BTGK, v_BTGK, k_cache_BSGK, v_cache_BSGK, index):
  """Attention of T new queries at positions index..index+T-1 over a KV cache -> out_BTHK.

  Keys are the cache's entries before `index` (traced scalar; later entries are stale and masked) and the T new
  keys, causally. The logits of the two parts are computed apart and share one softmax in float32, so the cache is
  read once and never copied. The same function as `causal` over the whole sequence, up to float rounding.
  """
  B, T, H, K = q_BTHK.shape
  G, S = k_BTGK.shape[2], k_cache_BSGK.shape[1]
  q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
  f32 = dict(preferred_element_type=jnp.float32)
  old_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_cache_BSGK.astype(q_BTHK.dtype), **f32) * K**-0.5
  new_BGRTU = jnp.einsum("btgrk,bugk->bgrtu", q_BTGRK, k_BTGK, **f32) * K**-0.5
  low = jnp.finfo(jnp.float32).min
  old_BGRTS = jnp.where(jnp.arange(S) < index, old_BGRTS, low)
  new_BGRTU = jnp.where(jnp.tril(jnp.ones((T, T), bool)), new_BGRTU, low)
  p_BGRTX = jax.nn.softmax(jnp.concatenate([old_BGRTS, new_BGRTU], axis=-1), axis=-1).astype(v_BTGK.dtype)
  out_BTGRK = (jnp.einsum("bgrts,bsgk->btgrk", p_BGRTX[..., :S], v_cache_BSGK.astype(v_BTGK.dtype), **f32)
               + jnp.einsum("bgrtu,bugk->btgrk", p_BGRTX[..., S:], v_BTGK, **f32))
  return out_BTGRK.reshape(B, T, H, K).astype(q_BTHK.dtype)


# ---------------------------------------------------------------- splash attention (TPU)


def _splash_block(T: int) -> int:
  """The largest of 512, 256, 128 dividing T (MaxText's default tile is 512)."""
  return next(b for b in (512, 256, SPLASH_BLOCK) if T % b == 0)


def _splash_local(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=None):
  """Splash attention on one device's shard: the kernel runs per sequence over [heads, T, K] (vmapped over B)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # TPU-only module
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  _, T, H, K = q_BTHK.shape
  b = _splash_block(T)
  blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                         block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = sm.MultiHeadMask([sm.CausalMask((T, T))] * H)
  attend = sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=platform_of_trace() == "cpu")  # CPU: Pallas' interpreter (tests only)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # the kernel's G or H query heads share kv heads as ours do
  q_BHTK = heads_first(q_BTHK * jnp.asarray(K**-0.5, q_BTHK.dtype))  # splash applies no scale of its own
  if segment_ids_BT is None:
    return heads_first(jax.vmap(attend)(q_BHTK, heads_first(k_BTGK), heads_first(v_BTGK)))
  per_row = lambda q, k, v, ids: attend(q, k, v, segment_ids=sk.SegmentIds(q=ids, kv=ids))
  return heads_first(jax.vmap(per_row)(q_BHTK, heads_first(k_BTGK), heads_first(v_BTGK), segment_ids_BT))


def splash(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=None):
  """Causal splash attention; on a mesh, one kernel per device over its batch and head shard (a Pallas kernel is
  opaque to XLA's partitioner, which would otherwise gather the whole batch onto every device)."""
  mesh = jax.sharding.get_abstract_mesh()
  args = (q_BTHK, k_BTGK, v_BTGK) + (() if segment_ids_BT is None else (segment_ids_BT,))
  if mesh.empty:
    return _splash_local(*args)
  q_spec, kv_spec = sharding.spec(("batch", None, "heads", None)), sharding.spec(("batch", None, "kv_heads", None))
  in_specs = (q_spec, kv_spec, kv_spec) + (() if segment_ids_BT is None else (sharding.spec(("batch", None)),))
  return jax.shard_map(_splash_local, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)


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


def _causal_logits(q_BGRCK, k_BGSK, start: int, segment_ids_BT=None):
  """q·k/√K in float32 for queries start..start+C against keys 0..S, -big where a key is in the future (or, with
  segment ids, in another document). Returns (logits, the mask of allowed pairs: [C, S] or [B, 1, 1, C, S])."""
  C, K = q_BGRCK.shape[-2:]
  S = k_BGSK.shape[-2]
  logits_BGRCS = jnp.einsum("bgrtk,bgsk->bgrts", q_BGRCK, k_BGSK, preferred_element_type=jnp.float32) * K**-0.5
  causal_CS = jnp.arange(start, start + C)[:, None] >= jnp.arange(S)[None, :]
  if segment_ids_BT is not None:
    same_BCS = same_segment(segment_ids_BT[:, start:start + C], segment_ids_BT[:, :S])
    causal_CS = (causal_CS & same_BCS)[:, None, None]
  return jnp.where(causal_CS, logits_BGRCS, jnp.finfo(jnp.float32).min), causal_CS


def _heads_first(q_BTHK, k_BTGK, v_BTGK):
  B, T, H, K = q_BTHK.shape
  G = k_BTGK.shape[2]
  q_BGRTK = q_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
  return q_BGRTK, k_BTGK.transpose(0, 2, 1, 3), v_BTGK.transpose(0, 2, 1, 3)


def _cat(xs, axis):
  return jnp.concatenate(xs, axis) if len(xs) > 1 else xs[0]


def _attention_fwd(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=None):
  q, k, v = _heads_first(q_BTHK, k_BTGK, v_BTGK)
  outs, lses, max_logit = [], [], jnp.float32(0)
  for s, e in query_blocks(q.shape[3]):
    logits_BGRCS, causal_CS = _causal_logits(q[:, :, :, s:e], k[:, :, :e], s, segment_ids_BT)
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
  return (out_BTHK, max_logit), (q, k, v, o_BGRTK, _cat(lses, 3), segment_ids_BT)


def _attention_bwd(res, cotangents):
  q, k, v, o_BGRTK, lse_BGRT1, segment_ids_BT = res
  dout_BTHK, _ = cotangents  # max_logit is a diagnostic: no gradient flows through it
  B, G, R, T, K = q.shape
  do_BGRTK = dout_BTHK.reshape(B, T, G, R, K).transpose(0, 2, 3, 1, 4)
  delta_BGRT1 = jnp.sum(do_BGRTK.astype(jnp.float32) * o_BGRTK.astype(jnp.float32), axis=-1, keepdims=True)
  dqs, dk_BGSK, dv_BGSK = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for s, e in query_blocks(T):
    q_c, do_c, k_c, v_c = q[:, :, :, s:e], do_BGRTK[:, :, :, s:e], k[:, :, :e], v[:, :, :e]
    # The probabilities are recomputed, not stored: T×T per head is the big tensor.
    p_BGRCS = jnp.exp(_causal_logits(q_c, k_c, s, segment_ids_BT)[0] - lse_BGRT1[:, :, :, s:e])
    dp_BGRCS = jnp.einsum("bgrtk,bgsk->bgrts", do_c, v_c, preferred_element_type=jnp.float32)
    ds_BGRCS = (p_BGRCS * (dp_BGRCS - delta_BGRT1[:, :, :, s:e]) * K**-0.5).astype(q.dtype)
    f32 = dict(preferred_element_type=jnp.float32)  # dk, dv sum over blocks: round to the compute dtype once
    dqs.append(jnp.einsum("bgrts,bgsk->bgrtk", ds_BGRCS, k_c, **f32).astype(q.dtype))
    dk_BGSK = dk_BGSK.at[:, :, :e].add(jnp.einsum("bgrts,bgrtk->bgsk", ds_BGRCS, q_c, **f32))
    dv_BGSK = dv_BGSK.at[:, :, :e].add(jnp.einsum("bgrts,bgrtk->bgsk", p_BGRCS.astype(v.dtype), do_c, **f32))
  return (_cat(dqs, 3).transpose(0, 3, 1, 2, 4).reshape(B, T, G * R, K),
          dk_BGSK.astype(k.dtype).transpose(0, 2, 1, 3), dv_BGSK.astype(v.dtype).transpose(0, 2, 1, 3),
          None)  # segment ids: integers, no cotangent


@jax.custom_vjp
def causal_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=None):
  """softmax(q·kᵀ/√K + causal mask)·v with grouped kv heads -> (out_BTHK, max |q·k|/√K over causal pairs).

  With `segment_ids_BT` (int [B, T]) the mask also keeps each query to keys of its own document.

  Queries go in blocks (`query_blocks`) that skip the keys after them, so only
  5/8 of q·kᵀ is computed at T >= 256. The backward pass recomputes the
  probabilities from the saved log-sum-exp, as FlashAttention does, instead of
  storing the [B, G, R, T, S] probabilities of every layer: on CPU the memory
  traffic costs more than the extra q·kᵀ matmul.
  """
  return _attention_fwd(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT)[0]


causal_attention.defvjp(_attention_fwd, _attention_bwd)
