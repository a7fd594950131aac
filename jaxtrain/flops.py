"""Model FLOPs per step and the peak they are compared against (MFU).

The formula counts matmul FLOPs only (2 per multiply-add), forward pass, per token:

    per layer:  2·D·(H + 2G)·K            q, k, v projections
              + 2·H·K·D                   attention output projection
              + 2·D·F·(3 if SwiGLU else 2) MLP
              + 2·T·H·K                   causal attention: q·kᵀ and p·v are 2·T·H·K each
                                          per token over all T keys; causal masking halves it
    once:       2·D·V                     LM head (the embedding lookup is a gather: 0)

Training is 3× the forward pass (the backward pass costs two matmuls per forward
one). Recomputation under remat is not counted: this is model FLOPs, not hardware
FLOPs, as in MaxText and PaLM. MFU = model FLOPs per second / peak FLOP/s.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from jaxtrain import config as cfg_lib


def forward_flops_per_token(m, seq_len: int) -> float:
  D, H, G, K, F, V = (m.d_model, m.num_heads, cfg_lib.num_kv_heads(m), cfg_lib.head_dim(m),
                      cfg_lib.mlp_dim(m), m.vocab_size)
  mlp_mats = 3 if m.mlp == "swiglu" else 2
  per_layer = 2 * D * (H + 2 * G) * K + 2 * H * K * D + 2 * D * F * mlp_mats + 2 * seq_len * H * K
  return m.num_layers * per_layer + 2 * D * V


def train_flops_per_step(m, seq_len: int, global_batch: int) -> float:
  """Model FLOPs of one optimizer step (forward + backward) over the global batch."""
  return 3.0 * forward_flops_per_token(m, seq_len) * seq_len * global_batch


# Dense peak FLOP/s per device (per chip for TPUs), by device_kind substring and dtype.
# float32 on NVIDIA GPUs is the TF32 tensor-core rate XLA uses by default.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
}


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """This host's matmul ceiling, measured once per process: see `time_matmul`."""
  return time_matmul(dtype, n, repeats)


def time_matmul(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """The best of `repeats` timed n×n×n matmuls, in FLOP/s.

  On CPU it covers all cores of the host (JAX's CPU client uses all of them).
  """
  a = jnp.ones((n, n), dtype) / n
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops(compute_dtype: str, override: float = 0.0, devices=None) -> tuple[float, str]:
  """(Peak FLOP/s of the whole job, where the figure comes from).

  The config's `train.peak_flops` (per device) wins; then the table by device kind;
  then a measured matmul ceiling: on CPU counted once per host, since simulated
  CPU devices share the same cores; on an accelerator missing from the table,
  once per device.
  """
  devices = devices or jax.devices()
  device, n = devices[0], len(devices)
  if override > 0:
    return override * n, "config train.peak_flops"
  for kind, table in PEAK_FLOPS.items():
    if kind.lower() in device.device_kind.lower():
      return table.get(compute_dtype, table["bfloat16"]) * n, f"table: {kind} {compute_dtype}"
  copies = jax.process_count() if device.platform == "cpu" else n
  return (measured_matmul_flops(compute_dtype) * copies,
          f"measured {compute_dtype} matmul on {device.platform} x {copies}")
