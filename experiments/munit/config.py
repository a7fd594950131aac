"""The μnit Scaling study's model: shallow, as the paper's transfer models (4 layers there, 2 here), at one width.

  python -m jaxtrain --config=experiments/munit/config.py:mus --workdir=runs/mus              # μS, float32
  python -m jaxtrain --config=experiments/munit/config.py:sp,gpu --workdir=runs/sp_gpu         # SP, the GPU size
  ... --config.model.d_model=128 --config.model.num_heads=8 --config.optim.lr=0.0625         # another width / η

The argument is `<parametrization>[,<size>]`: `mus` (unit init, static 1/√fan_in multipliers, Res-Post-LN with
τ = 0.4, hidden η·√(d_base/fan_in): `optim.lr_rule=mus`) or `sp` (N(0, 0.02²) init, Pre-LN, every group
η·d_base/d_model: `optim.lr_rule=sp`, the paper's SP transfer rule, §3.2); size `cpu` (default), `smoke` or `gpu`.
Both use what the paper uses for every model (§3.1, A.4): Lion, fully decoupled weight decay, cosine to 10%, GELU,
LayerNorm, an untied head, multi-head attention; FP8 is off (`--config.model.fp8=static|delayed` turns it on).
d_base is the reference width (the paper's base, 256, was its smallest; on CPU 32, below the sweep's widths
64-256), so `optim.lr` is the rate at d_base and the rate that transfers. The width is changed with d_model and num_heads together (head_dim
fixed at 16 on CPU, 64 on GPU: the head count grows with width, as in the paper's models).
No gradient clipping (the paper names none; Lion's update is a sign, and a clip threshold would act differently on
SP's and μS's gradient scales). λ = 2⁻¹³ (fully decoupled: the per-step shrinkage) at every width, for both: the
paper also halves SP's λ when it transfers (λ_new = 0.5·λ_base); we keep λ fixed and sweep only η.
"""

import math

from jaxtrain.config import ConfigError, base

# size: (d_base = smallest width, head_dim, layers, seq_len, batch, steps, eval_batches, compute dtype)
SIZES = {
    "cpu": dict(d_base=32, head_dim=16, layers=2, seq_len=64, batch=8, steps=200, eval_batches=16, dtype="float32"),
    "smoke": dict(d_base=16, head_dim=8, layers=1, seq_len=32, batch=8, steps=20, eval_batches=2, dtype="float32"),
    # The paper's transfer models: 4 layers, widths 256-8192, 10k steps of 64 x 1024 tokens on H100s. Scaled to one
    # GPU and a sweep of ~100 points: widths 256-2048, 2k steps of 32 x 512 tokens, bfloat16 compute.
    "gpu": dict(d_base=256, head_dim=64, layers=4, seq_len=512, batch=32, steps=2000, eval_batches=32,
                dtype="bfloat16"),
}

# The study (run.py) per size: its widths, d_base (SIZES'), head_dim (heads = width/head_dim), η grids per rule
# (LO:HI:x2 of `optim.lr`, the rate at d_base), the FP8 runs' width and diagnostics interval.
STUDY = {
    # η grids centred on single timed pilots at widths 32 and 256 (μS best near 2^-4, SP near 2^-9 at both).
    # Widths from 64: at 32 the μS curve was flat from 2^-5 to 2^-2 (2.59-2.60) and alone pulled the fitted exponent
    # from -0.42 to -0.79 (the one-seed study of 2026-11-29). 5 points each, centred on that study's optima: with 3
    # (2^-5..2^-3, 2^-10..2^-8) one seed in three had its best η at a grid edge at most widths (2026-12-06).
    # 3 widths × 5 η × 2 rules × 3 seeds: ~25 min on an idle 2-core CPU.
    "cpu": dict(widths=(64, 128, 256), d_base=32, head_dim=16, lr={"mus": (2**-6, 2**-2), "sp": (2**-11, 2**-7)},
                fp8_width=128, diagnostics_every=20),
    "smoke": dict(widths=(16, 32), d_base=16, head_dim=8, lr={"mus": (2**-5, 2**-4), "sp": (2**-9, 2**-8)},
                  fp8_width=16, diagnostics_every=5),
    "gpu": dict(widths=(256, 512, 1024, 2048), d_base=256, head_dim=64, lr={"mus": (2**-9, 2**-1), "sp": (2**-15, 2**-7)},
                fp8_width=1024, diagnostics_every=100),
}
# Composer's amp_fp8 DelayedScaling(amax_history_len=16) (composer/core/precision.py): the paper's probable TE
# baseline (the paper does not print its TE recipe).
FP8_HISTORY = 16
# The FP8 runs: (key, parametrization, label, overrides beyond width and η), in the order they run: part 2, part 3.
FP8_RUNS = (
    ("mus_static", "mus", "μS, static FP8 (S = N·d)", ["model.fp8=static"]),
    ("mus_static_pl", "mus", "μS, static FP8, per-linear S·2^k", ["model.fp8=static", "model.fp8_grad_rule=per_linear"]),
    ("mus_none", "mus", "μS, no FP8", ["model.fp8=none"]),
    ("sp_delayed", "sp", f"SP, delayed FP8 (history {FP8_HISTORY})", ["model.fp8=delayed"]),
    ("sp_none", "sp", "SP, no FP8", ["model.fp8=none"]),
    ("mus_static_s1", "mus", "μS, static FP8, S = 1", ["model.fp8=static", "model.fp8_grad_scale=1"]),
    ("sp_static_s1", "sp", "SP, static FP8, no scaling (S = 1)", ["model.fp8=static", "model.fp8_grad_scale=1"]),
)
# The paper's claims the report checks (run.py computes each verdict from the measurements).
CLAIMS = {
    "mus_transfer": "μS: optimal η stable across widths 256→8192 (32×) (§3.1, Fig. 6)",
    "sp_transfer": "SP: η* decreases as the inverse of the width (§3.1, Fig. 6)",
    "quality": "μS reaches equal or better quality than SP (Table 5, 1B-13B)",
    "mus_fp8": "μS trains in FP8 with static scales to the loss of its BF16 twin (Fig. 7, 1B-13B)",
    "sp_fp8": "SP trains in FP8 with TE's delayed scaling at 1B-7B; at 13B it spikes and does not converge (Fig. 7)",
    "sp_static_s1": "SP cannot use static FP8 without scales (the premise of μS; the paper shows no such run: its "
                    "SP failure is TE's delayed scaling at 13B, §3.2)",
    "mus_static_s1": "(no claim: control) μS without a static gradient scale",
    "mus_static": "μS: weights, activations and gradients cast to FP8 directly, no dynamic scaling (§3.3)",
    "mus_static_pl": "(ours: the paper gives no gradient scale) a static per-linear backward scale keeps every hidden "
                     "linear's output gradient in E5M2's range for the whole run",
    "gelu": "GELU's FFN-down input underflows FP8 heavily during unit-scaled training: up to 30% (A.7)",
}
PART2 = ("mus_static", "mus_static_pl", "mus_none", "sp_delayed", "sp_none")
PART3 = ("sp_static_s1", "mus_static_s1")


def applied(param: str, lr: float, d_model: int, d_base: int) -> float:
  """The learning rate the hidden matrices get under `optim.lr_rule`: μS η·√(d_base/d), SP η·d_base/d."""
  return lr * (math.sqrt(d_base / d_model) if param == "mus" else d_base / d_model)


def get_config(arg="mus"):
  param, _, size = (arg or "mus").partition(",")
  size = size or "cpu"
  if param not in ("mus", "sp") or size not in SIZES:
    raise ConfigError(f"unknown variant {arg!r}: use '<mus|sp>[,<cpu|smoke|gpu>]'")
  s = SIZES[size]
  c = base()
  c.data.document_mask = False  # measured on causal packed rows (before masking was the default)
  d = s["d_base"]
  c.model.update(d_model=d, num_heads=d // s["head_dim"], num_layers=s["layers"], max_seq_len=s["seq_len"],
                 mlp="gelu", tie_embeddings=False, compute_dtype=s["dtype"], parametrization=param)
  c.model.norm.update(kind="layernorm", placement="res_post" if param == "mus" else "pre", res_post_tau=0.4)
  c.model.mus.update(d_base=d)
  c.data.update(name="pystdlib", seq_len=s["seq_len"])
  steps = s["steps"]
  c.train.update(steps=steps, global_batch=s["batch"], log_every=max(1, steps // 20), eval_every=steps,
                 eval_batches=s["eval_batches"], checkpoint_every=steps, progress="log",
                 peak_flops=0.0 if size == "gpu" else 3e10)  # CPU: skip the per-run peak measurement (MFU unused)
  c.optim.update(name="lion", lr_rule=param, lr=1e-2 if param == "mus" else 1e-3, weight_decay=2.0**-13,
                 weight_decay_mode="independent", warmup_steps=max(1, steps // 10), schedule="cosine",
                 min_lr_ratio=0.1, clip_norm=0.0)
  return c
