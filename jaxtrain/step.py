"""The steps: pure functions of the train state (a plain-dict pytree) that `train.build` jits over a mesh.

  init_state(key) -> state
  train_step(state, batch) -> (state, metrics)       gradient accumulation over train.microbatches
  eval_step(params, batch) -> (loss sum, tokens)

The LM step computes the loss, the gradient, the update and cheap scalars. Its diagnostics variant (the second
compiled step, run every train.diagnostics_every steps, as Levanter's jit hooks) adds what costs more: the Softmax
Collapse metrics (jaxtrain/collapse.py: an extra exp over B·T·V and the gradient-weight cosines), per-layer
statistics (jaxtrain/diagnostics.py) and FP8 health. `train.collapse_metrics=True` puts the collapse metrics on
every step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain import collapse, growth, losses, model, sharding
from jaxtrain import diagnostics as diagnostics_lib
from jaxtrain import fp8 as fp8_lib

# Metrics of the diagnostics step only (per layer or per tensor); they go on a line of their own.
DIAGNOSTIC_PREFIXES = ("layers/", "weight_norm/", "grad_weight_cos/")
MAXIMA = ("layers/resid_max_abs", "layers/attn_max_logit")  # over microbatches, the max; every other metric, the mean


def make_state_fn(config, tx):
  """init_state(key) -> the train state: a plain dict pytree."""

  def init_state(key):
    params = model.init(config.model, key)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
    if config.model.fp8 == "delayed":  # per-tensor scales and amax histories, beside the params (jaxtrain/fp8.py)
      state["fp8"] = model.fp8_state(config.model)
    return state

  return init_state


def _loss(config, logits_BTV, batch, collapse_stats=False):
  """The configured loss: output activation, precision and z-loss, in one place for train and eval; weighted by
  batch["weights"] where packed rows carry them (data.document_mask), over `weight_sum` in a microbatch."""
  return losses.cross_entropy(logits_BTV, batch["targets"], z_loss=config.train.z_loss,
                              dtype=config.train.loss_dtype, output=config.model.output, collapse=collapse_stats,
                              weights_BT=batch.get("weights"), weight_sum=batch.get("weight_sum"))


def _segments(config, batch):
  """The packed rows' segment ids for the model when data.document_mask is on, else None (the causal model)."""
  return batch.get("segment_ids") if config.data.get("document_mask", False) else None


def make_train_step(config, graphdef, tx, lr_schedule, diagnostics: bool = False, param_axes=None, ramp=None):
  """train_step(state, batch) -> (state, metrics), with gradient accumulation over microbatches.

  Metrics: loss, ce, accuracy, log_z, z_loss (if on), grad_norm, param_norm, learning_rate, finite. With
  `diagnostics` or train.collapse_metrics, also the Softmax Collapse metrics `sc_fraction`, `zero_loss_fraction`
  and `grad_weight_cos` (jaxtrain/collapse.py). With `diagnostics`, per-layer arrays under `layers/...`
  (jaxtrain/diagnostics.py; over microbatches maxima stay maxima, the rest is averaged) and, per parameter tensor
  (per layer for the stacked blocks, which `param_axes` marks), `weight_norm/<path>` and `grad_weight_cos/<path>`.

  FP8 (model.fp8): the loss is also differentiated with respect to the FP8 linears' side inputs
  (`model.fp8_side`): their cotangents are delayed scaling's new state (`state["fp8"]`) and, with
  `diagnostics`, the casts' statistics `layers/fp8/<linear>/<x|w|g>_<rms|underflow|saturation>`.

  `ramp` (a growth phase's `growth.Ramp`, else None): new layers fade in by a gate and new MLP units and heads by a
  mask on the columns of the weights that feed them (W_in; W_Q, W_K, W_V), both computed from the step
  (`growth.ramp_at`, `growth.masked_params`: MSG's masks); without it the step has neither.
  """
  t = config.train
  num_micro = t.microbatches
  stacked = model.stacked(param_axes) if param_axes is not None else None
  probes = diagnostics and config.model.fp8 != "none"
  collapse_stats = diagnostics or t.collapse_metrics

  def loss_fn(params, side, batch, gate, mask):
    model_ = nnx.merge(graphdef, growth.masked_params(ramp, params, mask))  # inside: the mask's gradient too
    seg = _segments(config, batch)
    if diagnostics:
      x_BTD, layer_stats = model_.hidden(batch["inputs"], gate=gate, collect=True, side=side, segment_ids_BT=seg)
      logits_BTV = model_.logits(x_BTD)
    else:
      logits_BTV, layer_stats = model_(batch["inputs"], side=side, segment_ids_BT=seg, gate=gate), {}
    loss, aux = _loss(config, logits_BTV, batch, collapse_stats=collapse_stats)
    return loss, aux | {f"layers/{k}": v for k, v in layer_stats.items()}

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)  # side: None unless FP8 needs it

  def train_step(state, batch):
    params = state["params"]
    side = model.fp8_side(config.model, state.get("fp8"), probes)
    gate, mask = growth.ramp_at(ramp, state["step"])
    if num_micro == 1:
      (loss, aux), (grads, side_ct) = grad_fn(params, side, batch, gate, mask)
    else:
      micro = _microbatches(batch, num_micro)
      if "weights" in batch:  # each microbatch's weighted mean over the batch's Σ w / M: their mean is the batch's
        micro["weight_sum"] = jnp.full((num_micro,), jnp.sum(batch["weights"].astype(jnp.float32)) / num_micro)

      def accumulate(acc, mb):
        (loss, aux), (grads, side_ct) = grad_fn(params, side, mb, gate, mask)
        return (jax.tree.map(jnp.add, acc[0], (loss, grads)), fp8_lib.combine(acc[1], side_ct)), aux

      (loss_shape, _), (grads_shape, side_shape) = jax.eval_shape(
          lambda: grad_fn(params, side, jax.tree.map(lambda x: x[0], micro), gate, mask))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), ((loss_shape, grads_shape), side_shape))
      ((loss, grads), side_ct), aux_M = jax.lax.scan(accumulate, zeros, micro)
      loss, grads = jax.tree.map(lambda x: x / num_micro, (loss, grads))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
      aux = {k: v.max(0) if k in MAXIMA else v.mean(0) for k, v in aux_M.items()}

    grad_norm = optax.tree.norm(grads)
    if collapse_stats:  # of the raw gradient, before ⊥Grad
      cos, cos_per = collapse.grad_weight_cosine(grads, params, stacked=stacked)
    # The learning rate is the schedule at state["step"] (the one logged), skipped updates or not.
    updates, opt_state = tx.update(grads, state["opt_state"], params, step=state["step"])
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if t.on_nonfinite == "skip":  # keep the old parameters and optimizer state (Adam's count: applied updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_params, opt_state = keep(new_params, params), keep(opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
    new_meta, probe = fp8_lib.split_side(side_ct)
    if "fp8" in state:  # delayed scaling: the cotangent of the old state is the new one
      new_state["fp8"] = keep(new_meta, state["fp8"]) if t.on_nonfinite == "skip" else new_meta
    metrics = {
        "loss": loss, "ce": aux["ce"], "accuracy": aux["accuracy"], "log_z": aux["log_z"],
        "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_params),
        "learning_rate": lr_schedule(state["step"]), "finite": finite,
    }
    if t.z_loss:
      metrics["z_loss"] = aux["z_loss"]
    if collapse_stats:
      metrics |= {"sc_fraction": aux["sc_fraction"], "zero_loss_fraction": aux["zero_loss_fraction"],
                  "grad_weight_cos": cos}
    if diagnostics:
      metrics |= {k: v for k, v in aux.items() if k.startswith("layers/")}
      metrics["layers/grad_norm"] = diagnostics_lib.per_layer_norm(grads["blocks"])
      metrics |= collapse.flatten(collapse.weight_norms(new_params, stacked)[1], "weight_norm")
      metrics |= collapse.flatten(cos_per, "grad_weight_cos")
      metrics |= diagnostics_lib.fp8_health(jax.tree.map(lambda x: x / num_micro, probe))
    return new_state, metrics

  return train_step


def _microbatches(batch, num_micro: int):
  """(M, B/M, ...) arrays: row j·M + m goes to microbatch m, so each device's rows split evenly."""
  split = lambda x: sharding.constrain(x.reshape(-1, num_micro, *x.shape[1:]).swapaxes(0, 1),
                                       (None, "batch", None))
  return jax.tree.map(split, batch)


def make_eval_step(config, graphdef, ramp=None):
  """eval_step(params, batch) -> (sum of token losses, number of tokens), in train.microbatches passes.

  With a growth phase's `ramp`: eval_step(params, batch, step), the model gated and masked as the train step at
  `step`."""

  def sums(params, batch, step=None):
    gate, mask = growth.ramp_at(ramp, step)
    model_ = nnx.merge(graphdef, growth.masked_params(ramp, params, mask))
    seg = _segments(config, batch)
    logits_BTV = model_(batch["inputs"], segment_ids_BT=seg, gate=gate)
    _, aux = _loss(config, logits_BTV, batch)
    return aux["ce_sum"], aux["tokens"]

  def eval_step(params, batch, *step):
    if config.train.microbatches == 1:
      return sums(params, batch, *step)
    per_micro = jax.lax.map(lambda mb: sums(params, mb, *step), _microbatches(batch, config.train.microbatches))
    return jax.tree.map(lambda x: x.sum(0), per_micro)

  return eval_step


EVAL_IN_FLIGHT = 8  # eval steps queued before waiting: ~50 unwaited collective programs crash or hang XLA's CPU
                    # collectives (jax-ml/jax#25861, openxla/xla#32115)


def evaluate_batches(eval_step, params, batches, step=None) -> dict:
  """Mean token loss and perplexity over `batches`, with at most EVAL_IN_FLIGHT eval steps queued at a time.
  `step`: the train step, for an eval step that takes one (a growth phase's mask ramp)."""
  sums = []
  for i, b in enumerate(batches):
    sums.append(eval_step(params, b) if step is None else eval_step(params, b, step))
    if (i + 1) % EVAL_IN_FLIGHT == 0:
      jax.block_until_ready(sums[-1])  # steps run in order: the last done means all done
  ce_sum, tokens = np.sum(jax.device_get(sums), axis=0)
  loss = float(ce_sum / tokens)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
