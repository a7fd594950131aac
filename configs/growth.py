"""Depth stacking mid-run (G_stack; Du et al., NeurIPS 2024): 3 layers trained 1500 steps, stacked to 12, trained on.

  python -m jaxtrain --config=configs/growth.py --workdir=runs/grow           # G_stack, g = 4
  python -m jaxtrain --config=configs/growth.py:zero --workdir=runs/grow_zero # G↑zero: repeats start as identity
  python -m jaxtrain --config=configs/growth.py:random --workdir=runs/grow_random  # G↑random: MSG-masked new layers
  python -m jaxtrain --config=configs/growth.py:scratch --workdir=runs/scratch  # the 12-layer target from scratch

The default config's width on the embedded corpus. At step 1500 the trainer saves the 3-layer model, stacks it
(layer i <- layer i mod 3), starts a fresh AdamW and a new warmup to a lower peak (the official code's 1e-3 -> 3e-4
ratio), and trains the 12-layer model on the same data stream. G↑random (prts `msg.py`) puts 9 fresh layers on top
and fades them in over 420 steps (MSG's mask; prts' 5000 steps are 10.5% of the paper's 100B-token scratch run,
and 10.5% of 4000 steps is 420). Compare runs at equal compute with the metrics'
`total_flops` column; experiments/growth/ does that comparison.
"""

from jaxtrain.config import ConfigError, base

VARIANTS = ("stack", "zero", "random", "scratch")


def get_config(arg=None):
  variant = arg or "stack"
  if variant not in VARIANTS:
    raise ConfigError(f"unknown variant {variant!r}; choose one of {VARIANTS}, e.g. --config=configs/growth.py:zero")
  c = base()
  c.model.update(d_model=128, num_layers=3 if variant != "scratch" else 12, num_heads=4, mlp_dim=384,
                 max_seq_len=256)
  c.data.update(name="pystdlib", seq_len=128)
  c.train.update(steps=4000, global_batch=16, log_every=25, eval_every=250, eval_batches=8, checkpoint_every=500)
  c.optim.update(lr=3e-3, warmup_steps=100, schedule="cosine")
  if variant != "scratch":
    op = {"stack": dict(op="stack", g=4), "zero": dict(op="g_zero", g=4),
          "random": dict(op="g_random", num_layers=12, ramp_steps=420)}[variant]
    c.growth.update(events=({"step": 1500, **op},), opt="reset", lr="restart_warmup", warmup_steps=100, peak_lr=1e-3)
  return c
