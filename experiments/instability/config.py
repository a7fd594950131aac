"""The instability study's model: the paper's default setup (Wortsman et al. 2024), shrunk to a 2-core CPU.

  python -m jaxtrain --config=experiments/instability/config.py:128 --workdir=runs/inst \
      --config.optim.lr=0.1 --config.model.qk_norm=true

The argument is the width d_model (default 64, a multiple of 32): num_heads =
d_model/32, and the init std is 1/√d_model.

As in "Small-scale proxies for large-scale Transformer training instabilities"
(Wortsman et al., ICLR 2024; arXiv 2309.14322, §2): a
decoder-only pre-LN transformer with LayerNorm (eps 1e-6), RoPE, an untied LM
head, a GELU MLP of 4d, no biases in any matmul; AdamW β=(0.9, 0.95), ε 1e-8,
global-norm clipping at 1, independent weight decay 1e-4 (p ·= 1 − λ·s(t), not
multiplied by η); linear warmup over 5% of the steps, then cosine decay to 1e-5
(set `optim.min_lr_ratio` with `min_lr_ratio(lr)` when changing `optim.lr`);
weights and embedding N(0, 1/√d). Heads grow with the width (head_dim 32).
qk-norm (`model.qk_norm`) and z-loss (`train.z_loss`) are off here: the
study switches them.

What differs from the paper, and why:
- scale (a 2-core CPU): 2 layers at every width (the paper grows depth with
  width), d_model 64 and 128; 160 steps of 16×64 tokens (the paper: 1e5 steps
  of 256×512); the embedded corpus as bytes (V = 256), not C4 with a 32k vocabulary;
- jaxtrain's LayerNorm has a learnable bias (the paper's models have none);
- the MLP's output projection starts at std 1/√d, not 1/√(4d) (jaxtrain has one
  init std for all matrices); normal, not truncated normal.
"""

from jaxtrain.config import ConfigError, base

HEAD_DIM = 32
STEPS = 160
MIN_LR = 1e-5  # the paper's cosine ends at 1e-5, whatever the peak


def min_lr_ratio(lr: float) -> float:
  """optim.min_lr_ratio that ends the cosine at MIN_LR for peak `lr` (set it together with optim.lr)."""
  return float(f"{MIN_LR / lr:.12g}")


def get_config(arg=None):
  if not str(arg or 64).isdigit() or int(arg or 64) % HEAD_DIM:
    raise ConfigError(f"the argument is the width d_model, a multiple of {HEAD_DIM} (e.g. config.py:128), not {arg!r}")
  d = int(arg or 64)
  c = base()
  c.data.document_mask = False  # measured on causal packed rows (before masking was the default)
  c.model.update(d_model=d, num_heads=d // HEAD_DIM, num_layers=2, mlp="gelu",
                 tie_embeddings=False, qk_norm=False, depth_scaled_init=False, init_std=d ** -0.5,
                 max_seq_len=64)
  c.model.norm.update(kind="layernorm", eps=1e-6, placement="pre")
  c.data.seq_len = 64
  # log_every=1: the first line is step 1, the loss at initialization (ℓ0), and a run stopped by a
  # non-finite loss keeps every step before it.
  c.train.update(steps=STEPS, global_batch=16, log_every=1, eval_every=STEPS, eval_batches=8,
                 checkpoint_every=STEPS, keep_checkpoints=1, diagnostics_every=10, z_loss=0.0, progress="log",
                 peak_flops=1e11)  # a nominal peak: skips timing a matmul at every start (MFU is not studied here)
  c.optim.update(name="adamw", lr=1e-2, schedule="cosine", warmup_steps=STEPS // 20, b1=0.9, b2=0.95, eps=1e-8,
                 weight_decay=1e-4, weight_decay_mode="independent", clip_norm=1.0, min_lr_ratio=min_lr_ratio(1e-2))
  return c
