"""The norm-placement study's model: deep and narrow, so depth effects show at CPU scale.

  python -m jaxtrain --config=experiments/norm_placement/config.py:mix --workdir=runs/mix
  python -m jaxtrain --config=experiments/norm_placement/config.py:lns,small --workdir=runs/lns_small
  python -m jaxtrain --config=experiments/norm_placement/config.py:lns,gpu --workdir=runs/lns_gpu

The argument is `<placement>[,<size>]`: placement in pre|post|mix|peri|lns|res_post; size
  (none)  the study's CPU size: 12 layers (LLaMA-130M's depth), d_model 128, 480 steps of 16×128 bytes, the
          largest whose four placements × three seeds fit about an hour of an idle 2-core CPU (see the README);
  small   the first study's size: d_model 64, 400 steps (a fifth of the compute of a run);
  gpu     24 layers, d_model 256, bfloat16 compute, 10k steps of 128×256.
Following the papers' code (pixeli99/MixLN scripts/run_*.sh and torchrun_main.py;
lmsdss/LayerNorm-Scaling, whose README warns against scaled init with LNS): Adam
with no weight decay, no gradient clipping, plain N(0, 0.02) init (no
depth-scaled init, which weakens LNS), warmup 10% then cosine to 10% of the peak.
"""

from jaxtrain.config import ConfigError, base

SIZES = ("", "small", "gpu")


def get_config(arg="pre"):
  placement, _, size = (arg or "pre").partition(",")
  if size not in SIZES:
    raise ConfigError(f"unknown size {size!r}: use '<placement>', '<placement>,small' or '<placement>,gpu'")
  c = base()
  c.data.document_mask = False  # measured on causal packed rows (before masking was the default)
  c.model.norm.placement = placement
  c.model.depth_scaled_init = False
  c.model.update(num_layers=12, d_model=128, num_heads=4, mlp_dim=384, max_seq_len=128)
  c.data.seq_len = 128
  c.train.update(steps=480, global_batch=16, log_every=20, eval_every=120, eval_batches=8,
                 checkpoint_every=120, diagnostics_every=48)
  c.optim.update(lr=2e-3, warmup_steps=48, schedule="cosine", weight_decay=0.0, clip_norm=0.0, b2=0.999)
  if size == "small":
    c.model.update(d_model=64, mlp_dim=192)
    c.train.update(steps=400, eval_every=100, checkpoint_every=100, diagnostics_every=40)
    c.optim.update(warmup_steps=40)
  elif size == "gpu":
    c.model.update(num_layers=24, d_model=256, num_heads=4, mlp_dim=704, max_seq_len=256,
                   compute_dtype="bfloat16")
    c.data.seq_len = 256
    c.train.update(steps=10_000, global_batch=128, eval_every=1000, checkpoint_every=1000, diagnostics_every=500)
    c.optim.update(lr=1e-3, warmup_steps=1000)
  return c
