"""What a trained model does, layer by layer, on a batch: the functions a notebook calls on `run.model(step)`.

    import jaxtrain as jt
    run = jt.load_run("runs/default")
    model, batch = run.model(), run.eval_batch(8)
    jt.analysis.logit_lens(model, batch)          # loss of the output head read off each layer's residual stream

Every function takes a `jaxtrain.run.Model` and a batch, which is one of
  - {'inputs', 'targets'} int[B, T] (`run.eval_batch(n)`, `jaxtrain.data.eval_batches`): targets as given;
  - tokens_BT, int[B, T + 1] (or one sequence, int[T + 1]): next-token targets, inputs tokens[:, :-1];
  - a string, encoded by the run's tokenizer into one such sequence.
Losses use the run's own output activation (`model.output`: softmax or StableMax) and loss precision
(`train.loss_dtype`), without the z-loss: the cross-entropy the run's `eval_loss` reports.

The functions, with where their definitions come from:
  loss                mean token cross-entropy
  residual_states     the residual stream entering each layer and after the last, [L+1, B, T, D]
  angular_distances   arccos(cos(x^ℓ, x^{ℓ+n}))/π between layers ℓ and ℓ+n (Gromov et al. 2024, "The
                      Unreasonable Ineffectiveness of the Deeper Layers"; used by Mix-LN and "The Curse of Depth")
  skip_drop           ΔL(ℓ): the loss with layer ℓ replaced by the identity, minus the full model's (ibid., their
                      "performance drop" in validation-loss form)
  logit_lens          the final norm and LM head applied to each layer's residual stream: loss per depth
                      (nostalgebraist 2020, "interpreting GPT: the logit lens")
  layer_stats         per-layer residual RMS, variance, max |activation| (massive activations), the block's update
                      RMS, max attention logit (Wortsman et al. 2023), and each block's weight norm
  collapse_stats      Softmax Collapse statistics of the output (Prieto et al. 2025, `jaxtrain.collapse`): the
                      share of collapsed and zero-loss tokens, weight norm, and (`gradient=True`) the
                      gradient-weight cosine
  generate            text sampled from the model (`jaxtrain.sample.generate_text`)

The residual streams are taken before the final norm (`Transformer.hidden`), so the last layer's are the model's
own: `logit_lens(model, batch)["loss"][-1] == loss(model, batch)` (and the last layer's distance does not mix in the
final norm, a pitfall of the HF-based originals).

Beneath them, on a graph definition, parameters and batches (what a study script or a test holds without a run):
  eval_loss           mean token cross-entropy over batches, optionally with layers skipped
  layer_skip_drops    (the full model's loss, ΔL per layer)
  stream_states       the residual streams, [L+1, B, T, D]
  stream_distances    A[n-1, ℓ] from stream_states' output
  angular_distance    arccos(cos(a, b)) / π over the last axis
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import collapse, diagnostics, losses
from jaxtrain.sample import generate_text as generate  # sampling, gathered here for notebooks

__all__ = ["loss", "residual_states", "angular_distances", "skip_drop", "logit_lens", "layer_stats", "collapse_stats",
           "generate", "eval_loss", "layer_skip_drops", "stream_states", "stream_distances", "angular_distance"]


def loss(model, batch) -> float:
  """Mean token cross-entropy of `model` on `batch` (the run's output activation and loss precision)."""
  return eval_loss(model.graphdef, model.params, [_batch(model, batch)], **_loss_kw(model))


def residual_states(model, batch) -> np.ndarray:
  """The residual stream entering each layer, and after the last one: float32 [L+1, B, T, D]."""
  return np.asarray(_states(model.graphdef, model.params, _batch(model, batch)["inputs"]))


def angular_distances(model, batch, *, last_token: bool = True) -> np.ndarray:
  """A[n-1, ℓ]: mean angular distance between the streams entering layers ℓ and ℓ+n, n = 1..L; NaN where ℓ+n > L.

  `last_token`: at the last position only (as Gromov et al.), else averaged over all positions.
  """
  states = _states(model.graphdef, model.params, _batch(model, batch)["inputs"])
  return stream_distances(states, last_token=last_token)


def skip_drop(model, batch) -> np.ndarray:
  """ΔL[ℓ] = loss with layer ℓ replaced by the identity − the full model's loss, for each of the L layers."""
  _, drops = layer_skip_drops(model.graphdef, model.params, [_batch(model, batch)],
                              int(model.config.model.num_layers), **_loss_kw(model))
  return drops


def logit_lens(model, batch) -> dict[str, np.ndarray]:
  """{'loss', 'accuracy'}, each [L+1]: the output head (final norm, unembedding) applied to the residual stream
  entering each layer ℓ = 0..L-1 and after the last (ℓ = L, the model's own output); ℓ = 0 reads the embeddings."""
  b = _batch(model, batch)
  ce, acc = _lens(model.graphdef, model.params, b["inputs"], b["targets"], **_loss_kw(model))
  return {"loss": np.asarray(ce), "accuracy": np.asarray(acc)}


def layer_stats(model, batch) -> dict[str, np.ndarray]:
  """Per layer ℓ (arrays [L]), on `batch`, of the residual stream after block ℓ and of the block itself:

  resid_rms      √mean(x²) over tokens and features
  resid_var      mean over tokens of the variance over features (as the trainer's `layers/resid_var`)
  resid_max_abs  max |x| (massive activations)
  update_rms     √mean((x^{ℓ+1} − x^ℓ)²): what the block adds to the stream
  attn_max_logit max |q·k|/√K over causal pairs (NaN where the attention kernel hides the logits: xla, cudnn)
  weight_norm    ‖θ_ℓ‖₂ of the block's parameters
  """
  stats = _layer_stats(model.graphdef, model.params, _batch(model, batch)["inputs"])
  return {k: np.asarray(v, np.float64) for k, v in stats.items()}


def collapse_stats(model, batch, *, gradient: bool = False) -> dict[str, float]:
  """The Softmax Collapse statistics of `model` on `batch`, as the trainer logs them (`jaxtrain.collapse`):

  loss, accuracy, log_z      mean cross-entropy, next-token accuracy, mean log normalizer of the output
  sc_fraction                share of tokens whose normalizer rounds to its largest term (in the loss's precision)
  zero_loss_fraction         share of tokens whose loss is exactly 0
  param_norm                 ‖θ‖₂ over all parameters (naive loss minimization shows as steady growth)
  grad_weight_cos            with `gradient`: ⟨∇L, θ⟩ / (‖∇L‖‖θ‖) on this batch; near −1, a descent step mostly
                             scales the weights up (a backward pass, and its compilation: seconds on CPU)
  """
  b = _batch(model, batch)
  out = _collapse(model.graphdef, model.params, b["inputs"], b["targets"], gradient=gradient, **_loss_kw(model))
  return {("loss" if k == "ce" else k): float(v) for k, v in out.items()}


# ---------------------------------------------------------------- the compiled parts


@functools.partial(jax.jit, static_argnums=0)
def _states(graphdef, params, inputs_BT):
  return stream_states(graphdef, params, inputs_BT)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("output", "dtype"))
def _lens(graphdef, params, inputs_BT, targets_BT, *, output, dtype):
  module = nnx.merge(graphdef, params)
  _, stats = module.hidden(inputs_BT, collect=True, keep_states=True)

  def read(x_BTD):  # one depth at a time: [B, T, V] logits, not [L+1, B, T, V]
    _, aux = losses.cross_entropy(module.logits(x_BTD), targets_BT, output=output, dtype=dtype)
    return aux["ce_sum"] / aux["tokens"], aux["accuracy"]

  return jax.lax.map(read, stats["states"])


@functools.partial(jax.jit, static_argnums=0)
def _layer_stats(graphdef, params, inputs_BT):
  _, stats = nnx.merge(graphdef, params).hidden(inputs_BT, collect=True, keep_states=True)
  s_LBTD = stats["states"].astype(jnp.float32)
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x), axis=(1, 2, 3)))
  return {"resid_rms": rms(s_LBTD[1:]), "resid_var": stats["resid_var"], "resid_max_abs": stats["resid_max_abs"],
          "update_rms": rms(s_LBTD[1:] - s_LBTD[:-1]), "attn_max_logit": stats["attn_max_logit"],
          "weight_norm": diagnostics.per_layer_norm(params["blocks"])}


@functools.partial(jax.jit, static_argnums=0, static_argnames=("output", "dtype", "gradient"))
def _collapse(graphdef, params, inputs_BT, targets_BT, *, output, dtype, gradient):
  def loss_fn(p):
    logits_BTV = nnx.merge(graphdef, p)(inputs_BT)
    return losses.cross_entropy(logits_BTV, targets_BT, dtype=dtype, output=output, collapse=True)

  out = {}
  if gradient:
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    out["grad_weight_cos"], _ = collapse.grad_weight_cosine(grads, params)
  else:
    _, aux = loss_fn(params)
  out["param_norm"], _ = collapse.weight_norms(params)
  return out | {k: aux[k] for k in ("ce", "accuracy", "log_z", "sc_fraction", "zero_loss_fraction")}


# ---------------------------------------------------------------- on a graph definition, parameters and batches


def stream_states(graphdef, params, tokens_BT) -> jax.Array:
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


def stream_distances(states_LBTD, *, last_token: bool = True) -> np.ndarray:
  """A[n-1, ℓ] = mean distance between the streams entering layers ℓ and ℓ+n, for n = 1..L.

  `states_LBTD` is `stream_states(...)` ([L+1, B, T, D]); entries with ℓ+n > L are NaN.
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
  module = nnx.merge(graphdef, params)
  logits_BTV = module.logits(module.hidden(batch["inputs"], skip=skip))
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


def layer_skip_drops(graphdef, params, batches, num_layers: int, **loss_kw) -> tuple[float, np.ndarray]:
  """(full-model loss, ΔL[ℓ] = loss with layer ℓ skipped − full-model loss) over `batches`.

  `loss_kw`: `output` and `dtype`, as in `eval_loss`.
  """
  base = eval_loss(graphdef, params, batches, **loss_kw)
  drops = [eval_loss(graphdef, params, batches, skip=np.arange(num_layers) == l, **loss_kw) - base
           for l in range(num_layers)]
  return base, np.array(drops)


# ---------------------------------------------------------------- batches


def _loss_kw(model) -> dict:
  return {"output": model.config.model.output, "dtype": model.config.train.loss_dtype}


def _batch(model, batch) -> dict:
  """{'inputs', 'targets'} int32 numpy [B, T] from any of the accepted forms; ValueError (one line) otherwise."""
  if isinstance(batch, str):
    batch = model.tokenizer.encode(batch)
  if isinstance(batch, dict):
    if not {"inputs", "targets"} <= set(batch):
      raise ValueError(f"analysis: a dict batch needs 'inputs' and 'targets', not {sorted(batch)}")
    inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
  else:
    tokens = np.asarray(batch)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if tokens.ndim != 2 or tokens.shape[1] < 2:
      raise ValueError(f"analysis: tokens of shape {tokens.shape}: give int tokens [B, T + 1] with T ≥ 1 (the "
                       "targets are the inputs shifted by one), a {'inputs', 'targets'} dict, or a string")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
  V = int(model.config.model.vocab_size)
  for name, x in (("inputs", inputs), ("targets", targets)):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"analysis: {name} must be integer token ids, not {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= V):
      raise ValueError(f"analysis: {name} hold ids in [{x.min()}, {x.max()}], outside the vocabulary [0, {V})")
  if inputs.shape != targets.shape or inputs.ndim != 2 or inputs.shape[1] == 0:
    raise ValueError(f"analysis: inputs {inputs.shape} and targets {targets.shape} must be equal shapes [B, T], T ≥ 1")
  return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32)}
