"""The training loop: a config and a work directory in, checkpoints and metrics out.

It reads top to bottom in execution order: set up, check the config, build the
mesh, data, model and optimizer, compile the steps, restore or initialize, loop,
finish. The train step is a pure function `(state, batch) -> (state, metrics)`
over a plain-dict pytree, jitted once with explicit shardings and donation.

Resume order: 1. the newest readable checkpoint in <workdir>/checkpoints (an
unreadable one is set aside, the one before is used); 2. a fresh start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain import checkpoint, collapse, data, flops, losses, model, optim, sharding
from jaxtrain import diagnostics as diagnostics_lib
from jaxtrain import config as cfg_lib
from jaxtrain.metrics import MetricWriter

log = logging.getLogger("jaxtrain")


# Metrics of the diagnostics step only (per layer or per tensor); they go on a line of their own.
DIAGNOSTIC_PREFIXES = ("layers/", "weight_norm/", "grad_weight_cos/")
MAXIMA = ("layers/resid_max_abs", "layers/attn_max_logit")  # over microbatches, the max; every other metric, the mean


class NonFiniteError(FloatingPointError):
  """The loss or gradient became NaN or Inf; the message names the step and the metric."""


# ---------------------------------------------------------------- the steps (pure functions)


def make_state_fn(config, tx):
  """init_state(key) -> the train state: a plain dict pytree."""

  def init_state(key):
    params = model.init(config.model, key)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

  return init_state


def _loss(config, logits_BTV, targets_BT, collapse_stats=False):
  """The configured loss: output activation, precision and z-loss, in one place for train and eval."""
  return losses.cross_entropy(logits_BTV, targets_BT, z_loss=config.train.z_loss, dtype=config.train.loss_dtype,
                              output=config.model.output, collapse=collapse_stats)


def make_train_step(config, graphdef, tx, lr_schedule, diagnostics: bool = False, param_axes=None):
  """train_step(state, batch) -> (state, metrics), with gradient accumulation over microbatches.

  Every step logs the Softmax Collapse metrics (`sc_fraction`, `zero_loss_fraction`,
  `grad_weight_cos`; jaxtrain/collapse.py). With `diagnostics`, metrics also hold
  per-layer arrays under `layers/...` (see jaxtrain/diagnostics.py; over microbatches
  maxima stay maxima, the rest is averaged) and, per parameter tensor (per layer for the stacked blocks),
  `weight_norm/<path>` and `grad_weight_cos/<path>`; `param_axes` marks the stacked ones.
  """
  t = config.train
  num_micro = t.microbatches
  stacked = model.stacked(param_axes) if param_axes is not None else None

  def loss_fn(params, batch):
    model_ = nnx.merge(graphdef, params)
    if diagnostics:
      x_BTD, layer_stats = model_.hidden(batch["inputs"], collect=True)
      logits_BTV = model_.logits(x_BTD)
    else:
      logits_BTV, layer_stats = model_(batch["inputs"]), {}
    loss, aux = _loss(config, logits_BTV, batch["targets"], collapse_stats=True)
    return loss, aux | {f"layers/{k}": v for k, v in layer_stats.items()}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    params = state["params"]
    if num_micro == 1:
      (loss, aux), grads = grad_fn(params, batch)
    else:
      micro = _microbatches(batch, num_micro)

      def accumulate(acc, mb):
        (loss, aux), grads = grad_fn(params, mb)
        return jax.tree.map(jnp.add, acc, (loss, grads)), aux

      (loss_shape, _), grads_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro)))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss_shape, grads_shape))
      (loss, grads), aux_M = jax.lax.scan(accumulate, zeros, micro)
      loss, grads = jax.tree.map(lambda x: x / num_micro, (loss, grads))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
      aux = {k: v.max(0) if k in MAXIMA else v.mean(0) for k, v in aux_M.items()}

    grad_norm = optax.tree.norm(grads)
    cos, cos_per = collapse.grad_weight_cosine(grads, params, stacked=stacked)  # of the raw gradient, before ⊥Grad
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if t.on_nonfinite == "skip":  # keep the old parameters and optimizer state
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_params, opt_state = keep(new_params, params), keep(opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
    metrics = {
        "loss": loss, "ce": aux["ce"], "accuracy": aux["accuracy"], "log_z": aux["log_z"],
        "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_params),
        "learning_rate": lr_schedule(state["step"]), "finite": finite,
        "sc_fraction": aux["sc_fraction"], "zero_loss_fraction": aux["zero_loss_fraction"], "grad_weight_cos": cos,
    }
    if t.z_loss:
      metrics["z_loss"] = aux["z_loss"]
    if diagnostics:
      metrics |= {k: v for k, v in aux.items() if k.startswith("layers/")}
      metrics["layers/grad_norm"] = diagnostics_lib.per_layer_norm(grads["blocks"])
      metrics |= collapse.flatten(collapse.weight_norms(new_params, stacked)[1], "weight_norm")
      metrics |= collapse.flatten(cos_per, "grad_weight_cos")
    return new_state, metrics

  return train_step


def _microbatches(batch, num_micro: int):
  """(M, B/M, ...) arrays: row j·M + m goes to microbatch m, so each device's rows split evenly."""
  split = lambda x: sharding.constrain(x.reshape(-1, num_micro, *x.shape[1:]).swapaxes(0, 1),
                                       (None, "batch", None))
  return jax.tree.map(split, batch)


def make_eval_step(config, graphdef):
  """eval_step(params, batch) -> (sum of token losses, number of tokens), in train.microbatches passes."""

  def sums(params, batch):
    logits_BTV = nnx.merge(graphdef, params)(batch["inputs"])
    _, aux = _loss(config, logits_BTV, batch["targets"])
    return aux["ce_sum"], aux["tokens"]

  def eval_step(params, batch):
    if config.train.microbatches == 1:
      return sums(params, batch)
    per_micro = jax.lax.map(lambda mb: sums(params, mb), _microbatches(batch, config.train.microbatches))
    return jax.tree.map(lambda x: x.sum(0), per_micro)

  return eval_step


class Program(NamedTuple):
  """What one config compiles to on one mesh: a notebook, test or benchmark can drive it directly."""
  mesh: jax.sharding.Mesh
  graphdef: Any                 # the model's NNX graph definition; nnx.merge(graphdef, params)
  param_axes: Any               # logical axis names of every parameter
  abstract_state: Any           # ShapeDtypeStructs with shardings, for restoring checkpoints
  init: Callable                # key -> state, placed on the mesh
  train_step: Callable          # (state, batch) -> (state, metrics); donates state
  diagnostics_step: Callable    # the same, with per-layer diagnostics in the metrics
  eval_step: Callable           # (params, batch) -> (loss sum, token count)
  lr_schedule: Callable


def build(config, mesh) -> Program:
  """Builds and jits the model, optimizer and steps of `config` over `mesh` (compiled on first call)."""
  graphdef, abstract_params, param_axes = model.abstract(config.model)
  sharding.check_divisible(abstract_params, param_axes, dict(mesh.shape))
  tx, lr_schedule = optim.make(config.optim, config.train.steps, param_axes)
  init_state = make_state_fn(config, tx)
  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_sh = sharding.shardings(mesh, param_axes)
  state_sh = {
      "step": replicated, "params": param_sh, "rng": replicated,
      "opt_state": optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt_state"], param_sh,
                                         transform_non_params=lambda _: replicated),
  }
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  with jax.set_mesh(mesh):  # the mesh is in context while tracing, for the activations' constraints
    train_step, diagnostics_step = (
        jax.jit(make_train_step(config, graphdef, tx, lr_schedule, diagnostics=d, param_axes=param_axes),
                in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,))
        for d in (False, True))
    eval_step = jax.jit(make_eval_step(config, graphdef), in_shardings=(param_sh, batch_sh))
    init = jax.jit(init_state, out_shardings=state_sh)

  def in_mesh(f):
    def run(*args):
      with jax.set_mesh(mesh):
        return f(*args)
    run.jitted = f
    return run

  abstract_with_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_sh)
  return Program(mesh, graphdef, param_axes, abstract_with_sh, in_mesh(init), in_mesh(train_step),
                 in_mesh(diagnostics_step), in_mesh(eval_step), lr_schedule)


# ---------------------------------------------------------------- the loop


def train(config, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a summary dict.

  `devices` (default: all) lets a notebook or test run on a subset of the devices.
  """
  t, m = config.train, config.model

  ##################################################################### Setup
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
  tokenizer = data.make_tokenizer(config.data)
  devices = list(devices or jax.devices())
  mesh_shape = cfg_lib.validate(config, len(devices), tokenizer.vocab_size, devices[0].platform)

  ##################################################################### Mesh
  mesh = sharding.make_mesh(mesh_shape, devices)
  log.info("devices: %d x %s, mesh %s", len(devices), devices[0].device_kind, mesh_shape)

  ##################################################################### Model, optimizer, steps
  prog = build(config, mesh)
  n_params = model.count_params(prog.abstract_state["params"])
  log.info("model: %.2fM parameters", n_params / 1e6)

  ##################################################################### Data
  data_kw = dict(seq_len=config.data.seq_len, global_batch=t.global_batch,
                 process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = data.make_train_iterator(config.data, seed=config.seed, **data_kw)
  eval_batches = [sharding.host_to_global(b, mesh) for b in
                  data.make_eval_batches(config.data, num_batches=t.eval_batches, **data_kw)]

  def evaluate(params):
    sums = [prog.eval_step(params, b) for b in eval_batches]
    ce_sum, tokens = np.sum(jax.device_get(sums), axis=0)
    loss = float(ce_sum / tokens)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}

  ##################################################################### Restore or initialize
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
  try:
    restored = ckpt.restore_latest(prog.abstract_state, m.to_dict())
    if restored is not None and restored[2] > t.steps:
      raise cfg_lib.ConfigError(f"the checkpoint in {ckpt.directory} is at step {restored[2]}, past "
                                f"train.steps={t.steps}: raise train.steps to continue it, or use a new --workdir")
  except Exception:
    ckpt.close()
    raise
  if restored is not None:
    state, data_state, start = restored
    train_iter.set_state(data_state)
    log.info("resumed from step %d in %s", start, ckpt.directory)
  else:
    state, start = prog.init(jax.random.key(config.seed)), 0
    log.info("initialized from seed %d", config.seed)
  config_json = json.loads(config.to_json_best_effort())
  if is_main:  # only now: a config refused above must not replace the one that describes the run
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_json, f, indent=2)

  ##################################################################### Train loop
  writer = MetricWriter(workdir, total_steps=t.steps, first_step=start, progress=t.progress, enabled=is_main)
  peak, peak_source = flops.peak_flops(m.compute_dtype, t.peak_flops, devices)
  step_flops = flops.train_flops_per_step(m, config.data.seq_len, t.global_batch)
  log.info("MFU against %.3g FLOP/s (%s); %.3g model FLOPs per step", peak, peak_source, step_flops)
  stop_signal = []
  def on_signal(signum, _):
    if stop_signal and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, keep what is saved
    stop_signal.append(signal.Signals(signum).name)
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  history, pending, skipped, last_eval = [], None, 0, {}
  last_saved = start
  t_mark, steps_since_mark = time.perf_counter(), 0

  def record(step, metrics):
    """Fetches one step's metrics and stops (or counts a skip) if they are not finite."""
    nonlocal skipped
    metrics = jax.device_get(metrics)
    if not metrics.pop("finite"):
      bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
      if t.on_nonfinite == "skip":
        skipped += 1
        log.warning("step %d: %s not finite; update skipped (%d so far)", step, ", ".join(bad), skipped)
      else:
        raise NonFiniteError(
            f"step {step}: {', '.join(bad)} became {metrics[bad[0]]}; stopped without saving, the last good "
            f"checkpoint (step {last_saved}) is intact in {ckpt.directory}. Lower optim.lr, or set "
            "train.on_nonfinite=skip to skip bad updates")
    layer_rows = {k: v.tolist() for k, v in metrics.items() if k.startswith(DIAGNOSTIC_PREFIXES)}
    if layer_rows:  # per-layer and per-tensor diagnostics get a line of their own
      writer.write(step, layer_rows)
    history.append({k: v for k, v in metrics.items() if k not in layer_rows})

  try:
    step = start
    while step < t.steps:
      batch = sharding.host_to_global(next(train_iter), mesh)
      diagnose = t.diagnostics_every and (step + 1) % t.diagnostics_every == 0
      state, metrics = (prog.diagnostics_step if diagnose else prog.train_step)(state, batch)
      step += 1
      writer.advance()
      steps_since_mark += 1
      # Fetch the previous step's metrics: this step is already queued behind it, so the device never idles.
      if pending is not None:
        record(*pending)
      pending = (step, metrics)
      if step == start + 1:  # the first step compiles: keep it out of the throughput figures
        record(*pending)
        pending = None
        log.info("first step (compile and run) took %.1f s", time.perf_counter() - t_mark)
        t_mark, steps_since_mark = time.perf_counter(), 0

      is_last = step == t.steps
      save_now = (step % t.checkpoint_every == 0 or is_last or bool(stop_signal)
                  or ckpt.manager.reached_preemption(step))
      if (step % t.log_every == 0 or step % t.eval_every == 0 or save_now) and pending is not None:
        record(*pending)  # before anything is logged or saved, this step must be known good
        pending = None
      if step % t.log_every == 0 or is_last:
        elapsed = time.perf_counter() - t_mark
        row = {k: float(np.mean([h[k] for h in history])) for k in history[-1]}
        row["step_time"] = elapsed / max(steps_since_mark, 1)
        row["tokens_per_second"] = t.global_batch * config.data.seq_len / row["step_time"]
        row["mfu"] = step_flops / row["step_time"] / peak
        writer.write(step, row)
        history = []
        t_mark, steps_since_mark = time.perf_counter(), 0
      t_pause = time.perf_counter()  # evaluation and saving are kept out of the throughput figures
      if step % t.eval_every == 0 or is_last:
        last_eval = evaluate(state["params"])
        writer.write(step, last_eval)
      if save_now:
        ckpt.save(step, state, train_iter.get_state(), config_json)
        last_saved = step
      t_mark += time.perf_counter() - t_pause
      if stop_signal:
        log.warning("received %s: saved step %d, exiting; run the same command to resume", stop_signal[0], step)
        break
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)

  ##################################################################### Finish
  summary = {"workdir": workdir, "step": int(step), "stopped_by": stop_signal[0] if stop_signal else None,
             "checkpoints": ckpt.directory, "metrics": os.path.join(workdir, "metrics.jsonl"),
             "parameters": n_params, "skipped_steps": skipped}
  if step == t.steps:
    summary["final_eval_loss"] = (last_eval or evaluate(state["params"]))["eval_loss"]
  return summary
