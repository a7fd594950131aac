"""Depth diagnostics: what each layer does, during training and on a checkpoint.

During training (inside the jitted step, every `train.diagnostics_every` steps):
per-layer gradient norm, and from the model (`Transformer.hidden(collect=True)`)
per-layer residual-stream variance, max |activation| and max attention logit.
With `model.fp8`, per FP8 linear and layer, the health of each FP8 cast (`fp8_health`).

On a checkpoint (library functions for notebooks):

    angular distance   d(x^ℓ, x^{ℓ+n}) = arccos(cos(x^ℓ, x^{ℓ+n})) / π
                       between the residual streams entering layers ℓ and ℓ+n
                       (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the
                       Deeper Layers"; used by Mix-LN and "The Curse of Depth"), at the
                       last token or averaged over all tokens;
    skip drop          ΔL(ℓ) = L(model with layer ℓ replaced by the identity) − L(model),
                       the validation-loss form of their "performance drop".

The residual streams are taken before the final norm, so the last layer's
distance does not mix in the final norm (a pitfall of the HF-based originals).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import fp8, losses


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


def residual_states(graphdef, params, tokens_BT) -> jax.Array:
  """The residual stream entering each layer, and after the last one: [L+1, B, T, D] (float32)."""
  _, stats = nnx.merge(graphdef, params).hidden(tokens_BT, collect=True, keep_states=True)
  return stats["states"].astype(jnp.float32)


@jax.jit  # one fused program per shape: eagerly, each of its small ops would compile on its own
def angular_distance(a, b, eps: float = 1e-12):
  """arccos(cos(a, b)) / π over the last axis, in [0, 1]; 0.5 where a vector is zero (as the papers' code)."""
  dot = jnp.sum(a * b, -1)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  cos = jnp.where(norms > eps, dot / jnp.maximum(norms, eps), 0.0)
  return jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi


def angular_distances(states_LBTD, *, last_token: bool = True) -> np.ndarray:
  """A[n-1, ℓ] = mean distance between the streams entering layers ℓ and ℓ+n, for n = 1..L.

  `states_LBTD` is `residual_states(...)` ([L+1, B, T, D]); entries with ℓ+n > L are NaN.
  `last_token`: only the last position (as the papers), else the mean over all tokens.
  """
  s = states_LBTD[:, :, -1:] if last_token else states_LBTD
  L = s.shape[0] - 1
  out = np.full((L, L), np.nan)
  for n in range(1, L + 1):
    out[n - 1, : L + 1 - n] = np.asarray(jnp.mean(angular_distance(s[:-n], s[n:]), axis=(1, 2)))
  return out


@functools.partial(jax.jit, static_argnums=0, static_argnames=("output", "dtype"))
def _loss_sums(graphdef, params, batch, skip, *, output, dtype):
  model = nnx.merge(graphdef, params)
  logits_BTV = model.logits(model.hidden(batch["inputs"], skip=skip))
  _, aux = losses.cross_entropy(logits_BTV, batch["targets"], output=output, dtype=dtype)
  return aux["ce_sum"], aux["tokens"]


def eval_loss(graphdef, params, batches, skip=None, *, output="softmax", dtype="float32") -> float:
  """Mean token cross-entropy over `batches`, optionally with layers skipped (bool[L]).

  `output` and `dtype` are the loss's output activation and precision: pass the
  run's `model.output` and `train.loss_dtype` to measure what it trained on.
  """
  if skip is None:
    skip = np.zeros(jax.tree.leaves(params["blocks"])[0].shape[0], bool)
  sums = [jax.device_get(_loss_sums(graphdef, params, b, np.asarray(skip), output=output, dtype=dtype))
          for b in batches]
  total = np.sum(sums, axis=0)
  return float(total[0] / total[1])


def skip_drop(graphdef, params, batches, num_layers: int, **loss_kw) -> tuple[float, np.ndarray]:
  """(full-model loss, ΔL[ℓ] = loss with layer ℓ skipped − full-model loss) over `batches`.

  `loss_kw`: `output` and `dtype`, as in `eval_loss`.
  """
  base = eval_loss(graphdef, params, batches, **loss_kw)
  drops = [eval_loss(graphdef, params, batches, skip=np.arange(num_layers) == l, **loss_kw) - base
           for l in range(num_layers)]
  return base, np.array(drops)
