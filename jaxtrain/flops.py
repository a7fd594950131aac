"""Model FLOPs per step and the peak they are compared against (MFU), as in PaLM (Chowdhery et al., 2022, app. B).

The formula counts matmul FLOPs only (2 per multiply-add), forward pass, per token:

    per layer:  2·D·(H + 2G)·K            q, k, v projections
              + 2·H·K·D                   attention output projection
              + 2·D·F·(3 if SwiGLU else 2) MLP
              + 2·T·H·K                   causal attention: q·kᵀ and p·v are 2·T·H·K each
                                          per token over all T keys; causal masking halves it
    once:       2·D·V                     LM head (the embedding lookup is a gather: 0)

Training is 3× the forward pass (the backward pass costs two matmuls per forward one).
These are model FLOPs, not hardware FLOPs, as in MaxText and PaLM: what the model
needs, whatever the kernels do to compute it. tests/test_flops.py counts the
dot_generals of the real train step's jaxpr and finds exactly this, except where the
hardware does more work than the model needs, which is not counted:

- causal attention counts T²/2 query-key pairs. The blocked CPU kernel computes the
  full T×T square below 128 positions (masked) and 5/8 of it at T >= 256 (four query
  blocks skip the keys after them);
- its backward pass recomputes q·kᵀ from the saved log-sum-exp (FlashAttention-style):
  5 attention matmuls against 2 forward, so attention runs at 3.5× forward, not 3×;
- remat (`model.remat`) recomputes the forward pass of each layer ('dots': attention's
  matmuls only) in the backward pass.

MFU = model FLOPs per second / peak FLOP/s (`peak_flops`).
"""

from __future__ import annotations

import functools
import math
import time
import warnings

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


# ---------------------------------------------------------------- peaks

# Dense (no 2:4 sparsity) peak FLOP/s per device by dtype. On NVIDIA GPUs "tf32" is the tensor-core
# TF32 rate and "float32" the CUDA-core FP32 one: which of them a float32 matmul gets depends on
# the matmul precision (`float32_rule`). On TPUs a float32 matmul runs as bfloat16 passes, so only
# bfloat16 is listed. GPU figures: NVIDIA's datasheets (the sparse figures halved): H100 (SXM, NVL;
# PCIe from the 2022 revision), H200 (SXM, NVL), A100, HGX B200 (1000 W) and GB200 NVL72, as
# collected in marin-community/marin lib/fray device_flops.py. TPU figures: cloud.google.com/tpu/docs
# (v4, v5e, v5p, v6e), per chip, which is one JAX device from v4 on.
_H100_SXM = {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12}  # = H200 SXM
_H100_PCIE = {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12}
_H100_NVL = {"bfloat16": 835e12, "float16": 835e12, "tf32": 417e12, "float32": 60e12}  # = H200 NVL
_A100 = {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12}  # all four A100s
_B200 = {"bfloat16": 2250e12, "float16": 2250e12, "tf32": 1100e12, "float32": 75e12}
_GB200 = {"bfloat16": 2500e12, "float16": 2500e12, "tf32": 1250e12, "float32": 80e12}

# By `device.device_kind`, matched exactly. GPU kinds are the CUDA device name (as nvidia-smi
# shows it); the spellings come from XLA's own GPU target specs (openxla/xla
# xla/backends/gpu/target_config/specs/*.txtpb, `device_description_str`), else from
# karpathy/llm.c llmc/mfu.h and RunPod's GPU ids (which are the CUDA names). TPU kinds are
# those JAX matches itself (jax/_src/pallas/mosaic/tpu_info.py `chip_version_from_device_kind`,
# jax/_src/mesh_utils.py): v5e reports "TPU v5 lite", v5p "TPU v5" (older libtpu: "TPU v5p"),
# v6e "TPU v6 lite".
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,     # H100 SXM5 (XLA spec h100_sxm)
    "NVIDIA H100 PCIe": _H100_PCIE,         # XLA spec h100_pcie
    "NVIDIA H100 NVL": _H100_NVL,           # RunPod
    "NVIDIA H200": _H100_SXM,               # H200 SXM, as most drivers name it (RunPod)
    "NVIDIA H200 141GB HBM3e": _H100_SXM,   # the same card in XLA spec h200
    "NVIDIA H200 NVL": _H100_NVL,
    "NVIDIA A100-SXM4-40GB": _A100,         # XLA spec a100_sxm_40
    "NVIDIA A100-SXM4-80GB": _A100,         # XLA spec a100_sxm_80
    "NVIDIA A100-PCIE-40GB": _A100,         # llm.c
    "NVIDIA A100 80GB PCIe": _A100,         # RunPod (XLA spec a100_pcie_80 says only "A100 80GB")
    "NVIDIA B200": _B200,                   # XLA spec b200 (HGX/DGX B200)
    "NVIDIA GB200": _GB200,                 # XLA spec gb200
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},    # v5e
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5": {"bfloat16": 459e12},         # v5p
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},    # v6e (Trillium)
    "TPU v6e": {"bfloat16": 918e12},
}

# Memory per device (what `python -m jaxtrain.compile` checks a step against), bytes, by the same device kinds.
# GPUs: XLA's GPU target specs' device_memory_size (what CUDA reports: a little under the marketed size), else
# the datasheet. TPUs: cloud.google.com/tpu/docs, HBM per chip (v4 32 GiB, v5e 16, v5p 95, v6e 32).
HBM_BYTES = {
    "NVIDIA H100 80GB HBM3": 84942979072, "NVIDIA H100 PCIe": 80 * 2**30, "NVIDIA H100 NVL": 94 * 10**9,
    "NVIDIA H200": 151397597184, "NVIDIA H200 141GB HBM3e": 151397597184, "NVIDIA H200 NVL": 151397597184,
    "NVIDIA A100-SXM4-40GB": 40 * 2**30, "NVIDIA A100-SXM4-80GB": 85100068864, "NVIDIA A100-PCIE-40GB": 40 * 2**30,
    "NVIDIA A100 80GB PCIe": 85100068864, "NVIDIA B200": 191514411008,
    "TPU v4": 32 * 2**30, "TPU v5 lite": 16 * 2**30, "TPU v5e": 16 * 2**30, "TPU v5": 95 * 2**30,
    "TPU v5p": 95 * 2**30, "TPU v6 lite": 32 * 2**30, "TPU v6e": 32 * 2**30,
}

# How a float32 matmul runs, by `jax_default_matmul_precision` (None: XLA's DEFAULT precision,
# which is what jaxtrain's step uses: it sets no precision anywhere). From `jax.lax.Precision`'s
# docstring (jax 0.10.2, jax/_src/lax/lax.py; the aliases are its `_precision_strings`): on TPU,
# DEFAULT is one bfloat16 pass, HIGH three, HIGHEST six; on GPU, DEFAULT and HIGH use TF32
# tensor cores, HIGHEST full float32. Value: (bfloat16 passes on TPU, GPU rate).
FLOAT32_PRECISION = {
    None: (1, "tf32"), "default": (1, "tf32"), "fastest": (1, "tf32"), "bfloat16": (1, "tf32"),
    "high": (3, "tf32"), "tensorfloat32": (3, "tf32"), "bfloat16_3x": (3, "tf32"),
    "highest": (6, "float32"), "float32": (6, "float32"),
}


def device_peak_flops(device_kind: str, compute_dtype: str, precision: str | None = None) -> tuple[float, str]:
  """(Peak FLOP/s of one device for matmuls in `compute_dtype`, what it is), or (nan, why it is unknown).

  `precision` is `jax_default_matmul_precision`; it matters for float32 only (`FLOAT32_PRECISION`).
  """
  table = PEAK_FLOPS.get(device_kind)
  if table is None:
    return math.nan, f"no peak for device kind {device_kind!r} in jaxtrain/flops.py"
  if compute_dtype != "float32":
    if compute_dtype not in table:
      return math.nan, f"no {compute_dtype} peak for {device_kind!r} in jaxtrain/flops.py"
    return table[compute_dtype], f"table: {device_kind} {compute_dtype}"
  if precision not in FLOAT32_PRECISION:
    return math.nan, f"no float32 peak for jax_default_matmul_precision={precision!r} in jaxtrain/flops.py"
  passes, gpu_rate = FLOAT32_PRECISION[precision]
  if device_kind.startswith("TPU"):
    return table["bfloat16"] / passes, f"table: {device_kind} float32 as {passes} bfloat16 pass(es)"
  return table[gpu_rate], f"table: {device_kind} float32 at the {gpu_rate} rate"


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

  The config's `train.peak_flops` (per device) wins. Then, on CPU, this host's
  measured matmul ceiling, counted once per host (simulated CPU devices share its
  cores). On an accelerator, the table (`device_peak_flops`, at the
  `jax_default_matmul_precision` in effect, as the step is traced); one it does not know
  gives NaN (the logged MFU is then null), with a warning saying to set
  `train.peak_flops`: never a timed matmul passed off as the chip's peak.
  """
  devices = devices or jax.devices()
  device, n = devices[0], len(devices)
  if override > 0:
    return override * n, "config train.peak_flops"
  if device.platform == "cpu":
    copies = jax.process_count()
    return (measured_matmul_flops(compute_dtype) * copies,
            f"measured {compute_dtype} matmul on cpu x {copies}")
  peak, source = device_peak_flops(device.device_kind, compute_dtype, jax.config.jax_default_matmul_precision)
  if math.isnan(peak):
    # Python shows a warning once per call site and message: once per run.
    warnings.warn(f"MFU unknown: {source}; set --config.train.peak_flops=<this device's peak FLOP/s for "
                  f"{compute_dtype} matmuls> to report it", stacklevel=2)
    return math.nan, source
  return peak * n, source
