"""Depth diagnostics inside the jitted diagnostics step (every `train.diagnostics_every` steps, jaxtrain/step.py).

Per-layer gradient norm (`per_layer_norm`) and, with `model.fp8`, the health of each FP8 cast per linear and layer
(`fp8_health`); the model adds per-layer residual-stream variance, max |activation| and max attention logit
(`Transformer.hidden(collect=True)`). What a notebook computes on a checkpoint (angular distances, skip drop, logit
lens) is in jaxtrain/analysis.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain import fp8


def per_layer_norm(stacked_tree) -> jax.Array:
  """‖θ_ℓ‖₂ for each ℓ over a pytree whose leaves are stacked on a leading layers axis: [L]."""
  sq = [jnp.sum(jnp.square(g.astype(jnp.float32)), axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(stacked_tree)]
  return jnp.sqrt(sum(sq))


def fp8_health(probes) -> dict:
  """{'layers/fp8/<linear>/<tensor>_<stat>': [L]} from the FP8 probes' cotangents (`fp8.split_side`'s second).

  <linear> is the path below `blocks` (attn.wq, attn.wk, attn.wv, attn.wo, mlp.wi, mlp.down); <tensor> is what
  enters a cast: x (activation, E4M3), w (weight, E4M3), g (output gradient times the static scale, E5M2);
  <stat>: rms, underflow (share of non-zeros cast to 0), saturation (share clipped at the format's max).
  """
  out = {}
  for path, probe_L33 in jax.tree_util.tree_flatten_with_path(probes)[0]:
    names = [k.key for k in path]
    name = ".".join(names[1:] if names[0] == "blocks" else names)
    for i, tensor in enumerate(fp8.TENSORS):
      for j, stat in enumerate(fp8.STATS):
        out[f"layers/fp8/{name}/{tensor}_{stat}"] = probe_L33[:, i, j]
  return out
