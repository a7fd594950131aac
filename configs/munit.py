"""μnit Scaling: the default-sized model (configs/default.py) with the μS parametrization, FP8 in every hidden matmul.

  python -m jaxtrain --config=configs/munit.py --workdir=runs/mus              # μS, static FP8 (E4M3 / E5M2)
  python -m jaxtrain --config=configs/munit.py:bf16 --workdir=runs/mus_bf16     # the same model without FP8

The recipe (Narayan et al., ICML 2025, arXiv 2502.05967, Table 2, §3.1, A.4): unit-variance init, static
1/√fan_in multipliers, Res-Post-LayerNorm with τ = 0.4 (the paper's value for 4 layers), GELU, untied head, Lion
with fully decoupled weight decay and per-group learning rates (hidden η·√(d_base/fan_in)), cosine to 10%, no
gradient clipping (the paper names none; the study, experiments/munit, uses none either).

Without FP8 the model computes in `model.compute_dtype`, float32 here as in every CPU config (XLA:CPU has no fast
bfloat16 matmul, and FP8 is emulated in float32 on CPU anyway); on a GPU add
--config.model.compute_dtype=bfloat16 to both, which makes `:bf16` the BF16 baseline it is named after.
"""

from jaxtrain.config import ConfigError, base


def get_config(arg=None):
  if arg not in (None, "bf16"):
    raise ConfigError(f"unknown variant {arg!r}: use configs/munit.py (FP8) or configs/munit.py:bf16 (no FP8)")
  c = base()
  c.model.update(d_model=128, num_layers=4, num_heads=4, max_seq_len=256, mlp="gelu", tie_embeddings=False,
                 parametrization="mus", fp8="none" if arg == "bf16" else "static")
  c.model.norm.update(kind="layernorm", placement="res_post", res_post_tau=0.4)
  c.model.mus.update(d_base=128)  # this width is the base: η below is the tuned value at d_model=128
  c.data.update(name="pystdlib", seq_len=128)
  c.train.update(steps=600, global_batch=16, log_every=25, eval_every=200, eval_batches=8, checkpoint_every=200)
  # η: the best of 3e-3, 1e-2, 3e-2, 1e-1 after 120 steps here (eval loss 4.81, 3.48, 2.65, 2.71; 3 seeds, no clip,
  # 2026-12-06: docs/munit_fp8.md); λ not swept.
  # No gradient clipping (the base config clips at 1.0): the paper names none, and Lion's update is a sign, so a
  # clip only changes how g mixes with the momentum, and acts differently on SP's and μS's gradient scales.
  c.optim.update(name="lion", lr_rule="mus", lr=3e-2, weight_decay=1e-4, weight_decay_mode="independent",
                 warmup_steps=60, schedule="cosine", min_lr_ratio=0.1, clip_norm=0.0)
  return c
