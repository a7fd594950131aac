"""Grokking: the paper's small models and a fast full-batch trainer with collapse metrics.

A package of its own, next to `jaxtrain` and built on its public modules (`jaxtrain.collapse`,
`jaxtrain.losses`, `jaxtrain.orthograd`): full batch and float64 Adam state are what the LM loop
does not do, and folding them into it would cost both. `python -m grokking --workdir DIR` trains one
run into a workdir with resume (`grokking.runs`); the studies launch it through `jaxtrain.sweep`.

Modules: `config` (the run's settings), `tasks` (the TFDS builders of the tasks), `models`, `optim`
(Adam in float64 and in PyTorch's float32), `trainer` (the jitted full-batch loop), `runs` (a run in a
workdir: checkpoints, history, metrics.jsonl), `__main__` (the CLI).

Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability"
(ICLR 2025, arXiv 2501.04697), on the tasks of Power et al. 2022. Settings are
the official code's (`utils.py`, `models.py`, `grokking_experiments.py` of
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability):

- `MLP`: in -> 200 -> 200 -> classes, ReLU, no biases (biases for sparse
  parity), PyTorch's default init U(±1/√fan_in). Modular arithmetic feeds it
  the concatenation of the two operands' one-hots (2p inputs); the first layer
  is computed as the sum of two rows of its weight, which is the same product
  without multiplying by 224 zeros.
- `Transformer`: one post-LN `nn.TransformerEncoderLayer(d_model=128, nhead=4)`
  with PyTorch's defaults (ReLU MLP of 2048, dropout 0.1, LayerNorm eps 1e-5,
  biases), token embedding N(0, 1), no positional encoding, no mask, a linear
  read-out at the last position.
- Full batch: one step sees the whole train split (an "epoch" is a step).

The trainer runs `log_every` steps per jitted `lax.scan` (no Python between
steps) and records per step the loss, train accuracy, Softmax Collapse and
zero-loss fractions (from that step's forward pass, in the loss's dtype), the
weight norm and the gradient-weight cosine (before the update), and after each
chunk the train and test accuracy and loss. Output activation, loss dtype,
optimizer, ⊥Grad and weight decay are config switches (`config()`).

Adam's state precision (`opt_dtype`). XLA on CPU flushes subnormal floats to
zero, PyTorch keeps them. In float32 a gradient entry below ~3e-18 then adds
exactly 0 to Adam's second moment ν ((1-β2)·g² < 1.2e-38, the smallest normal
float32) while the first moment m stays non-zero, and once ν has decayed to 0
the update m̂/(√ν̂ + ε) with the official ε = 1e-25 is ~g/ε: a step of ~1e3
for g = 1e-20 where Adam means ~lr. `opt_dtype="float64"` keeps m, ν and the
update arithmetic in float64 (x64 mode, scoped to `train`), where g² needs
|g| < 1e-154 to underflow; parameters, model and loss are unchanged.
`opt_dtype="float32_ieee"` is torch.optim.AdamW's float32 arithmetic with
subnormals kept (emulated in float64), the official code's optimizer: there ν
reaches 0 only for |g| ≲ 1e-21.
`opt_stats` records per step the share of ν entries that are exactly 0, the
entries with ν = 0 but m ≠ 0, the smallest non-zero ν, the gradient's
smallest non-zero and largest magnitudes, the share of non-zero gradient
entries in the flush band, and the largest |Δθ| of the step.

Names carry shapes: B examples, S = 2 operand positions, D d_model, H heads,
K head_dim, F mlp width, V classes, I input features, W hidden width.
"""

from grokking.config import OPT_DTYPES, config
from grokking.models import MLP, Transformer, make_model
from grokking.optim import (TorchAdamState, adamw_float32_ieee, ftz_threshold, in_dtype, make_optimizer, opt_stats,
                            round_float32)
from grokking.runs import load_history, load_state, run
from grokking.trainer import first_step_at, load_data, make_fns, precision, train

__all__ = ["OPT_DTYPES", "config", "MLP", "Transformer", "make_model", "TorchAdamState", "adamw_float32_ieee",
           "ftz_threshold", "in_dtype", "make_optimizer", "opt_stats", "round_float32", "load_history", "load_state",
           "run", "first_step_at", "load_data", "make_fns", "precision", "train"]
