"""The full-batch trainer: `log_every` steps per jitted `lax.scan`, collapse metrics every step, tests after each chunk.

Per step: the loss, train accuracy, Softmax Collapse and zero-loss fractions
(from that step's forward pass, in the loss's dtype; `jaxtrain.losses`,
`jaxtrain.collapse`), the weight norm and the gradient-weight cosine (before the
update), and for AdamW Adam's health (`optim.opt_stats`); after each chunk the
train and test accuracy and loss.
"""

from __future__ import annotations

import contextlib
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grokking.models import make_model
from grokking.optim import make_optimizer, opt_stats
from jaxtrain import collapse, losses

log = logging.getLogger("grokking")


def precision(opt_dtype: str):
  """x64 mode for float64 Adam state (float32_ieee keeps float32 values in float64), for tracing and running alike;
  nothing for float32."""
  return contextlib.nullcontext() if opt_dtype == "float32" else jax.enable_x64(True)


def load_data(c) -> dict[str, dict[str, np.ndarray]]:
  """The task's whole train and test splits as numpy arrays (TFDS, prepared on first use)."""
  from grokking import tasks  # pylint: disable=import-outside-toplevel  (TFDS: imported only to build data)
  if c.task == "modular":
    f = 0.4 if c.train_fraction is None else c.train_fraction
    return tasks.load_modular(c.op, c.p, f, c.data_seed, c.data_dir)
  if c.task == "parity":
    f = 0.5 if c.train_fraction is None else c.train_fraction
    return tasks.load_parity(c.n_bits, c.k, c.num_samples, f, c.data_seed, c.data_dir)
  raise ValueError(f"unknown task {c.task!r}; use modular or parity")


def make_fns(c, graphdef, tx):
  """(run_chunk, evaluate): jitted pure functions of (state, data)."""

  def loss_fn(params, x, y, key):
    logits = nnx.merge(graphdef, params)(x, key=key)
    return losses.cross_entropy(logits, y, output=c.output, dtype=c.loss_dtype, collapse=True)

  def step(state, x, y):
    params, opt_state, i = state["params"], state["opt_state"], state["step"]
    # Dropout masks from XLA's RngBitGenerator: threefry would cost seconds of compile on a CPU.
    key = jax.random.fold_in(jax.random.key(c.seed + 1, impl="rbg"), i) if c.model == "transformer" else None
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, key)
    w_norm, w_norms = collapse.weight_norms(params)
    cos, coss = collapse.grad_weight_cosine(grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    if c.optimizer == "adamw":
      metrics = {f"opt/{k}": v for k, v in opt_stats(grads, opt_state, updates, c.b2).items()}
    else:
      metrics = {}
    metrics |= {"loss": aux["ce"], "accuracy": aux["accuracy"], "sc_fraction": aux["sc_fraction"],
               "zero_loss_fraction": aux["zero_loss_fraction"], "weight_norm": w_norm,
               "grad_weight_cos": cos, "grad_norm": optax.tree.norm(grads),
               **collapse.flatten(w_norms, "weight_norm"), **collapse.flatten(coss, "grad_weight_cos")}
    new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": i + 1}
    return new, metrics

  def run_chunk(state, x, y):
    return jax.lax.scan(lambda s, _: step(s, x, y), state, None, length=c.log_every)

  def evaluate(params, data):
    # One forward pass over every split (one trace to compile), then the metrics per split.
    logits = nnx.merge(graphdef, params)(jnp.concatenate([d["inputs"] for d in data.values()]))
    out, start = {}, 0
    for split, d in data.items():
      n = len(d["labels"])
      _, aux = losses.cross_entropy(logits[start:start + n], d["labels"], output=c.output, dtype=c.loss_dtype)
      out[f"{split}_accuracy"], out[f"{split}_loss"], start = aux["accuracy"], aux["ce"], start + n
    return out

  return jax.jit(run_chunk, donate_argnums=0), jax.jit(evaluate)


def train(c, data=None, *, verbose: bool = True, state=None, save_at=()) -> dict:
  """Trains config `c` full-batch; returns its history as numpy arrays.

  `history['step']` indexes the per-step metrics (loss, accuracy,
  sc_fraction, zero_loss_fraction, weight_norm, grad_weight_cos, grad_norm,
  per-tensor `weight_norm/<name>`, `grad_weight_cos/<name>`, and for AdamW
  the `opt/<name>` statistics of `opt_stats`);
  `history['eval']` holds `step`, `train_accuracy`, `test_accuracy`,
  `train_loss`, `test_loss` after every chunk (and at the first step), and
  `history['seconds_per_step']` the training chunks' wall time per step
  (compile and evaluation excluded), `history['seconds']` everything's.

  `state` (a `history['states']` entry: params, opt_state, step) continues a
  run from that step to `c.steps`; its optimizer state is cast to `opt_dtype`,
  so a float32 run can be continued with float64 or float32_ieee Adam state. `save_at`: steps
  (multiples of `log_every`) whose full state goes to `history['states'][step]`
  as numpy arrays.
  """
  if c.steps % c.log_every:
    raise ValueError(f"steps={c.steps} is not a multiple of log_every={c.log_every}")
  if any(s % c.log_every for s in save_at):
    raise ValueError(f"save_at={list(save_at)}: every step must be a multiple of log_every={c.log_every}")
  with precision(c.opt_dtype):
    return _train(c, data, verbose, state, set(save_at))


def _train(c, data, verbose, state, save_at):
  data = data if data is not None else load_data(c)
  data = jax.tree.map(jnp.asarray, data)
  graphdef, params = make_model(c, jax.random.key(c.seed))
  tx = make_optimizer(c)
  if state is None:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  else:
    fresh, saved = tx.init(params), state["opt_state"]
    if jax.tree.structure(fresh) != jax.tree.structure(saved):  # another Adam: carry its count, m and ν over
      get = lambda name: optax.tree_utils.tree_get(saved, name)
      saved = optax.tree_utils.tree_set(fresh, count=get("count"), mu=get("mu"), nu=get("nu"))
    opt_state = jax.tree.map(lambda f, x: jnp.asarray(x, f.dtype), fresh, saved)
    state = {"params": jax.tree.map(jnp.asarray, state["params"]), "opt_state": opt_state,
             "step": jnp.asarray(state["step"], jnp.int32)}
  start = int(state["step"])
  if start >= c.steps or (c.steps - start) % c.log_every:
    raise ValueError(f"cannot continue from step {start} to steps={c.steps} in chunks of log_every={c.log_every}")
  run_chunk, evaluate = make_fns(c, graphdef, tx)

  t0 = time.perf_counter()
  x, y = data["train"]["inputs"], data["train"]["labels"]
  run_chunk = run_chunk.lower(state, x, y).compile()  # ahead of time, to keep it out of the step time
  per_step, evals = [], [{"step": start, **jax.device_get(evaluate(state["params"], data))}]
  states, seconds = {}, 0.0
  for chunk in range((c.steps - start) // c.log_every):
    t = time.perf_counter()
    state, metrics = run_chunk(state, x, y)
    metrics = jax.device_get(metrics)
    seconds += time.perf_counter() - t
    ev = {"step": start + (chunk + 1) * c.log_every, **jax.device_get(evaluate(state["params"], data))}
    per_step.append(metrics)
    evals.append(ev)
    if ev["step"] in save_at:
      states[ev["step"]] = jax.device_get(state)
    if verbose:
      extra = ""
      if "opt/nu_zero_fraction" in metrics:
        extra = "  ν=0 %.2e (m≠0: %d)  |Δθ|max %.3g  |g| %.2g..%.2g" % (
            metrics["opt/nu_zero_fraction"][-1], metrics["opt/nu_zero_m_nonzero"].max(),
            metrics["opt/update_max"].max(), metrics["opt/grad_min"].min(), metrics["opt/grad_max"][-1])
      log.info("step %6d  loss %.3g  train %.4f  test %.4f  SC %.3f  |θ| %.1f  cos %.3f%s",
               ev["step"], metrics["loss"][-1], ev["train_accuracy"], ev["test_accuracy"],
               metrics["sc_fraction"][-1], metrics["weight_norm"][-1], metrics["grad_weight_cos"][-1], extra)
  history = {k: np.concatenate([m[k] for m in per_step]) for k in per_step[0]}
  history["step"] = np.arange(start + 1, c.steps + 1)
  history["eval"] = {k: np.array([e[k] for e in evals]) for k in evals[0]}
  history["states"] = states
  history["seconds_per_step"] = seconds / (c.steps - start)
  history["seconds"] = time.perf_counter() - t0
  return history


def first_step_at(history, key: str = "test_accuracy", threshold: float = 0.95):
  """The first evaluated step with `history['eval'][key] >= threshold`, or None."""
  ev = history["eval"]
  hits = np.nonzero(ev[key] >= threshold)[0]
  return int(ev["step"][hits[0]]) if hits.size else None
