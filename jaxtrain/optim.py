"""The optimizer: AdamW with decoupled weight decay, global-norm clipping and a schedule.

Every optimizer the trainer uses is built here, so per-parameter-group rules
(learning rates, decay masks) have one home.
"""

from __future__ import annotations

import jax
import optax

from jaxtrain import model, sharding
from jaxtrain.orthograd import orthograd


def schedule(o, steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay, WSD (stable then linear decay), or constant."""
  peak, floor, warm = o.lr, o.lr * o.min_lr_ratio, o.warmup_steps
  warmup = optax.linear_schedule(0.0, peak, max(warm, 1))
  if o.schedule == "cosine":
    rest = optax.cosine_decay_schedule(peak, max(steps - warm, 1), alpha=o.min_lr_ratio)
  elif o.schedule == "wsd":
    decay = int(round(o.decay_fraction * steps))
    stable = max(steps - warm - decay, 0)
    rest = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, max(decay, 1))], [stable])
  elif o.schedule == "constant":
    rest = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {o.schedule!r}")
  return optax.join_schedules([warmup, rest], [warm])


def decay_mask(axes_tree):
  """Weight decay on matrices only: parameters with two or more non-`layers` axes."""
  return jax.tree.map(lambda a: sum(n != "layers" for n in a) >= 2, axes_tree, is_leaf=sharding.is_axes)


def make(o, steps: int, axes_tree) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW chain, its learning-rate schedule) for the optimizer config `o`.

  The chain: global-norm clipping, ⊥Grad if `o.orthograd` (each layer's slice of
  a stacked tensor projected on its own, as the official code projects each
  layer's weight), then AdamW.
  """
  lr = schedule(o, steps)
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  if o.orthograd:
    parts.append(orthograd(stacked=model.stacked(axes_tree)))
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask(axes_tree)))
  return optax.chain(*parts), lr
