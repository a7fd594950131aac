"""The default model and data with StableMax in place of softmax at the output (issue 4).

  python -m jaxtrain --config=configs/lm_stablemax.py --workdir=runs/stablemax
  python -m jaxtrain --config=configs/lm_stablemax.py:float64 ...     # the loss in float64, as the paper computes it
  python -m jaxtrain --config=configs/lm_stablemax.py:orthograd ...   # StableMax with ⊥AdamW
  python -m jaxtrain --config=configs/lm_stablemax.py:float64,orthograd ...

StableMax (Prieto et al., "Grokking at the Edge of Numerical Stability", 2025)
replaces exp with s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0, so the
normalizer grows polynomially and the loss cannot reach Softmax Collapse; the
metrics `sc_fraction`, `zero_loss_fraction` and `grad_weight_cos` in
metrics.jsonl (every step here: train.collapse_metrics) show whether a run is heading there. Compare a run of
configs/default.py (softmax) on the same data: see README.md, "StableMax and ⊥Grad".
"""

import os

from jaxtrain import config as cfg_lib

VARIANTS = ("float64", "orthograd")


def get_config(arg=None):
  c = cfg_lib.load(os.path.join(os.path.dirname(__file__), "default.py"))
  c.model.output = "stablemax"
  c.train.collapse_metrics = True  # the collapse metrics on every step, not only on the diagnostics step
  for variant in filter(None, (arg or "").split(",")):
    if variant not in VARIANTS:
      raise cfg_lib.ConfigError(f"unknown variant {variant!r} of lm_stablemax.py; use a comma list of {VARIANTS}")
    if variant == "float64":
      c.train.loss_dtype = "float64"
    else:
      c.optim.orthograd = True
  return c
