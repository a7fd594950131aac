"""The training loop: a config and a work directory in, checkpoints and metrics out.

It reads top to bottom in execution order: set up, check the config, build the
mesh, data, model and optimizer, compile the steps, restore or initialize, loop,
finish. The train step is a pure function `(state, batch) -> (state, metrics)`
over a plain-dict pytree, jitted once with explicit shardings and donation.

Resume order: 1. the newest checkpoint in <workdir>/checkpoints that every host
can read (a damaged one is set aside, the one before is used); 2. a fresh start.

On several hosts every host runs this same loop, and every decision that changes
which collectives run next (stop, save, which step to restore) is taken from
values all hosts have exchanged (jaxtrain/hosts.py), never from one host's
signal or read error alone, so no host waits in a barrier another never reaches.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain import checkpoint, collapse, data, flops, growth, hosts, losses, model, optim, paths, sharding
from jaxtrain import diagnostics as diagnostics_lib
from jaxtrain import fp8 as fp8_lib
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
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
    if config.model.fp8 == "delayed":  # per-tensor scales and amax histories, beside the params (jaxtrain/fp8.py)
      state["fp8"] = model.fp8_state(config.model)
    return state

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

  FP8 (model.fp8): the loss is also differentiated with respect to the FP8 linears' side inputs
  (`model.fp8_side`): their cotangents are delayed scaling's new state (`state["fp8"]`) and, with
  `diagnostics`, the casts' statistics `layers/fp8/<linear>/<x|w|g>_<rms|underflow|saturation>`.
  """
  t = config.train
  num_micro = t.microbatches
  stacked = model.stacked(param_axes) if param_axes is not None else None
  probes = diagnostics and config.model.fp8 != "none"

  def loss_fn(params, side, batch):
    model_ = nnx.merge(graphdef, params)
    if diagnostics:
      x_BTD, layer_stats = model_.hidden(batch["inputs"], collect=True, side=side)
      logits_BTV = model_.logits(x_BTD)
    else:
      logits_BTV, layer_stats = model_(batch["inputs"], side=side), {}
    loss, aux = _loss(config, logits_BTV, batch["targets"], collapse_stats=True)
    return loss, aux | {f"layers/{k}": v for k, v in layer_stats.items()}

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)  # side: None unless FP8 needs it

  def train_step(state, batch):
    params = state["params"]
    side = model.fp8_side(config.model, state.get("fp8"), probes)
    if num_micro == 1:
      (loss, aux), (grads, side_ct) = grad_fn(params, side, batch)
    else:
      micro = _microbatches(batch, num_micro)

      def accumulate(acc, mb):
        (loss, aux), (grads, side_ct) = grad_fn(params, side, mb)
        return (jax.tree.map(jnp.add, acc[0], (loss, grads)), fp8_lib.combine(acc[1], side_ct)), aux

      (loss_shape, _), (grads_shape, side_shape) = jax.eval_shape(
          lambda: grad_fn(params, side, jax.tree.map(lambda x: x[0], micro)))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), ((loss_shape, grads_shape), side_shape))
      ((loss, grads), side_ct), aux_M = jax.lax.scan(accumulate, zeros, micro)
      loss, grads = jax.tree.map(lambda x: x / num_micro, (loss, grads))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
      aux = {k: v.max(0) if k in MAXIMA else v.mean(0) for k, v in aux_M.items()}

    grad_norm = optax.tree.norm(grads)
    cos, cos_per = collapse.grad_weight_cosine(grads, params, stacked=stacked)  # of the raw gradient, before ⊥Grad
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
        "sc_fraction": aux["sc_fraction"], "zero_loss_fraction": aux["zero_loss_fraction"], "grad_weight_cos": cos,
    }
    if t.z_loss:
      metrics["z_loss"] = aux["z_loss"]
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


def build(config, mesh, lr_schedule=None, peak_lr=None) -> Program:
  """Builds and jits the model, optimizer and steps of `config` over `mesh` (compiled on first call).

  `lr_schedule` and `peak_lr` replace the config's schedule (a growth phase's, growth.Phase).
  """
  graphdef, abstract_params, param_axes = model.abstract(config.model)
  sharding.check_divisible(abstract_params, param_axes, dict(mesh.shape))
  tx, lr_schedule = optim.make(config, param_axes, lr_schedule, peak_lr)
  init_state = make_state_fn(config, tx)
  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_sh = sharding.shardings(mesh, param_axes)
  state_sh = {
      "step": replicated, "params": param_sh, "rng": replicated,
      "opt_state": optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt_state"], param_sh,
                                         transform_non_params=lambda _: replicated),
  }
  if "fp8" in abstract_state:  # delayed scaling's scales and histories: small, replicated
    state_sh["fp8"] = jax.tree.map(lambda _: replicated, abstract_state["fp8"])
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  on_mesh = functools.partial(sharding.traced_on, mesh)  # each step carries its mesh, for the activations' constraints
  train_step, diagnostics_step = (
      jax.jit(on_mesh(make_train_step(config, graphdef, tx, lr_schedule, diagnostics=d, param_axes=param_axes)),
              in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,))
      for d in (False, True))
  eval_step = jax.jit(on_mesh(make_eval_step(config, graphdef)), in_shardings=(param_sh, batch_sh))
  init = jax.jit(on_mesh(init_state), out_shardings=state_sh)

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


def check(config, devices) -> tuple[dict, list]:
  """(mesh shape, growth phases) of `config` on `devices`, after every check that can run before compiling: of the
  config (cfg_lib.validate) and of the model of each phase between growth events (growth.plan). ConfigError."""
  validate = functools.partial(
      cfg_lib.validate, num_devices=len(devices), vocab_size=data.make_tokenizer(config.data).vocab_size,
      platform=devices[0].platform, process_count=len({d.process_index for d in devices}),
      local_devices=sum(d.process_index == jax.process_index() for d in devices),
      compute_capability=getattr(devices[0], "compute_capability", None))
  mesh_shape = validate(config)
  phases = growth.plan(config)
  for p in phases[1:]:
    with growth.event_errors(p):
      validate(p.config)
  return mesh_shape, phases


EVAL_IN_FLIGHT = 8  # eval steps queued before waiting: ~50 unwaited collective programs crash or hang XLA's CPU
                    # collectives (jax-ml/jax#25861, openxla/xla#32115)


def evaluate_batches(eval_step, params, batches) -> dict:
  """Mean token loss and perplexity over `batches`, with at most EVAL_IN_FLIGHT eval steps queued at a time."""
  sums = []
  for i, b in enumerate(batches):
    sums.append(eval_step(params, b))
    if (i + 1) % EVAL_IN_FLIGHT == 0:
      jax.block_until_ready(sums[-1])  # steps run in order: the last done means all done
  ce_sum, tokens = np.sum(jax.device_get(sums), axis=0)
  loss = float(ce_sum / tokens)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def train(config, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a summary dict.

  `devices` (default: all) lets a notebook or test run on a subset of the devices. On a multi-host
  run every host calls it (after `jax.distributed.initialize`); all hosts take the same decisions.
  """
  t, m = config.train, config.model

  ##################################################################### Setup
  workdir = paths.resolve(workdir)  # local or gs://: every file below goes through epath
  is_main = jax.process_index() == 0
  if is_main:
    paths.makedirs(workdir)
  devices = list(devices or jax.devices())
  mesh_shape, phases = check(config, devices)

  ##################################################################### Mesh
  mesh = sharding.make_mesh(mesh_shape, devices)
  hosts.open_collectives(mesh)  # before hosts drift apart compiling at different speeds
  log.info("devices: %d x %s in %d process(es), mesh %s", len(devices), devices[0].device_kind,
           jax.process_count(), mesh_shape)

  ##################################################################### Model, optimizer, steps
  programs = []
  for p in phases:  # one per growth phase; each compiles on its first call
    with growth.event_errors(p):
      programs.append(build(p.config, mesh, p.lr_schedule, p.peak_lr))

  ##################################################################### Data
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  loader = data.TrainData(config.data, seq_len=config.data.seq_len, global_batch=t.global_batch, seed=config.seed)
  eval_batches = data.eval_batches(config.data, seq_len=config.data.seq_len, global_batch=t.global_batch,
                                   num_batches=t.eval_batches, sharding=batch_sh)

  ##################################################################### Restore or initialize
  # Closed once restored: the loop opens its own right before the `try` that closes it, so no failure in between
  # leaves Orbax's threads running.
  with checkpoint.Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints) as ckpt:
    restored = ckpt.restore_latest(lambda s: programs[growth.phase_at(phases, s)].abstract_state,
                                   lambda s: phases[growth.phase_at(phases, s)].config.model.to_dict(),
                                   loader.fingerprint())
  if restored is not None and restored.step > t.steps:
    raise cfg_lib.ConfigError(f"the checkpoint in {ckpt.directory} is at step {restored.step}, past "
                              f"train.steps={t.steps}: raise train.steps to continue it, or use a new --workdir")
  start = restored.step if restored is not None else 0
  phase = growth.phase_at(phases, start)
  prog = programs[phase]
  if restored is not None:
    state = restored.state
    log.info("resumed from step %d in %s", start, ckpt.directory)
    _warn_if_schedule_reshapes(config, restored.config)
  else:
    state = prog.init(jax.random.key(config.seed))
    log.info("initialized from seed %d", config.seed)
  log.info("model: %.2fM parameters", model.count_params(state["params"]) / 1e6)
  # What each phase's checkpoints hold: the run's config with that phase's model.
  configs_json = [json.loads(p.config.to_json_best_effort()) for p in phases]
  if is_main:  # only now: a config refused above must not replace the one that describes the run
    (workdir / "config.json").write_text(json.dumps(configs_json[0], indent=2))

  ##################################################################### Train loop
  writer = MetricWriter(workdir, total_steps=t.steps, first_step=start, progress=t.progress, enabled=is_main)
  peak, peak_source = flops.peak_flops(m.compute_dtype, t.peak_flops, devices)
  log.info("MFU against %.3g FLOP/s (%s)", peak, peak_source)
  signals = _Signals()  # a signal only sets a flag here; the hosts agree on stopping below, every step
  history, pending, skipped, last_eval, last_saved = [], None, 0, {}, start
  clock = _Clock()
  evaluate = lambda params: evaluate_batches(prog.eval_step, params, eval_batches)
  step_flops = lambda: flops.train_flops_per_step(phases[phase].config.model, config.data.seq_len, t.global_batch)

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

  step, stopped_by, compiling = start, None, True
  batches = loader.iterate(start, batch_sh)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints)
  try:
    with signals:
      while step < t.steps:
        ################################################################# Grow (at the end of an event's step)
        if phase + 1 < len(phases) and step == phases[phase + 1].start:
          with clock.paused():  # the step before is saved (below); the data stream goes on where it was
            before = evaluate(state["params"])["eval_loss"]
            n_learn = growth.learn_steps(phases[phase + 1].event)  # g_learn fits its operator on the next batches
            learn = [loader.batch(step + i, batch_sh) for i in range(n_learn)] if n_learn else None
            state, phase = _grow(phases, phase + 1, programs, state, learn), phase + 1
            prog = programs[phase]
            after = evaluate(state["params"])["eval_loss"]
          n = model.count_params(state["params"])
          log.info("step %d: grew by %s to %.2fM parameters (%s); eval loss %.4f -> %.4f", step,
                   phases[phase].event["op"], n / 1e6, _describe(phases[phase].config.model), before, after)
          writer.write(step, {"growth/event": phase, "growth/parameters": n, "growth/eval_loss_before": before,
                              "growth/eval_loss_after": after})
          compiling = True

        ################################################################# One step
        diagnose = t.diagnostics_every and (step + 1) % t.diagnostics_every == 0
        state, metrics = (prog.diagnostics_step if diagnose else prog.train_step)(state, next(batches))
        step += 1
        writer.advance()
        clock.count()
        if pending is not None:  # the previous step's metrics: this step is already queued behind them
          record(*pending)
        pending = (step, metrics)
        if compiling:  # the first step of a program compiles: keep it out of the throughput figures
          record(*pending)
          pending, compiling = None, False
          log.info("step %d (compile and run) took %.1f s", step, clock.elapsed())
          clock.restart()

        ################################################################# Decide, once, on every host alike
        # A signal on any host, seen by all at this same step. On several hosts the all-gather waits for the step
        # it follows, so it runs every stop_check_every steps, letting the others queue behind their predecessor.
        stop = (jax.process_count() == 1 or step % t.stop_check_every == 0) and hosts.any_host(bool(signals.received))
        grows = phase + 1 < len(phases) and step == phases[phase + 1].start  # the small model is saved first
        actions = {name for name, due in (
            ("log", step % t.log_every == 0 or step == t.steps),
            ("save", step % t.checkpoint_every == 0 or step == t.steps or stop or grows),
            ("eval", step % t.eval_every == 0 or step == t.steps),
            ("stop", stop)) if due}
        if not actions:
          continue

        ################################################################# Act: log, save, eval, stop
        if pending is not None:
          record(*pending)  # before anything is logged or saved, this step must be known good
          pending = None
        if "log" in actions:
          row = {k: float(np.mean([h[k] for h in history])) for k in history[-1]}
          row["tokens"] = step * t.global_batch * config.data.seq_len
          row["total_flops"] = growth.total_flops(phases, step)  # across growth events: compare runs at equal compute
          if clock.steps:  # a window of only the compiling first step has no throughput to report
            row["step_time"] = clock.elapsed() / clock.steps
            row["tokens_per_second"] = t.global_batch * config.data.seq_len / row["step_time"]
            if math.isfinite(peak):  # nan: an accelerator without a known peak (flops.py said so once)
              row["mfu"] = step_flops() / row["step_time"] / peak
          writer.write(step, row)
          history = []
          clock.restart()
        with clock.paused():  # saving and evaluation are kept out of the throughput figures
          if "save" in actions:  # before evaluation: a signal or crash during evaluation cannot cost the step
            writer.flush()  # in a bucket: the lines up to this step are there before its checkpoint can be
            ckpt.save(step, state, loader.fingerprint(), configs_json[phase])
            last_saved = step
          if "eval" in actions:
            last_eval = evaluate(state["params"])
            writer.write(step, last_eval)
          if "save" in actions:
            writer.flush()  # and the saved step's evaluation, as on a disk, where each line is appended at once
        if "stop" in actions:
          ckpt.wait()  # the step is on disk before the log says so
          stopped_by = signals.received or "a signal to another host"
          log.warning("received %s: saved step %d, exiting; run the same command to resume", stopped_by, step)
          break
  finally:
    batches.close()
    ckpt.wait()
    ckpt.close()
    writer.close()

  ##################################################################### Finish
  summary = {"workdir": os.fspath(workdir), "step": int(step), "stopped_by": stopped_by,
             "checkpoints": ckpt.directory, "metrics": os.fspath(workdir / "metrics.jsonl"),
             "parameters": model.count_params(state["params"]), "skipped_steps": skipped,
             "total_flops": growth.total_flops(phases, step)}
  if step == t.steps:
    summary["final_eval_loss"] = (last_eval or evaluate(state["params"]))["eval_loss"]
  return summary


def _grow(phases, k: int, programs: list[Program], state, batches=None):
  """Phase k's train state from phase k-1's, transformed on the mesh: sharded in, sharded out, the old one donated,
  so under FSDP no host ever holds the whole model (growth.grow_state). `batches`: g_learn's, a list."""
  shardings = lambda p: jax.tree.map(lambda a: a.sharding, p.abstract_state)
  old, new = programs[k - 1], programs[k]

  def transform(state, batches):
    stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches) if batches else None
    return growth.grow_state(phases, k, state, stacked)

  jitted = jax.jit(transform, in_shardings=(shardings(old), None), out_shardings=shardings(new),
                   donate_argnums=(0,))
  with jax.set_mesh(new.mesh), warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Some donated buffers were not usable")  # new shapes: freed, not reused
    return jitted(state, batches)


def _describe(m) -> str:
  return (f"{m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads of {cfg_lib.head_dim(m)}, "
          f"mlp {cfg_lib.mlp_dim(m)}")


class _Signals:
  """SIGTERM and SIGINT set `received` (the first one's name) while in context; a second Ctrl-C stops at once."""

  def __init__(self):
    self.received, self._old = None, {}

  def _on_signal(self, signum, _):
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, keep what is saved
    self.received = self.received or signal.Signals(signum).name

  def __enter__(self):
    self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *_):
    for s, h in self._old.items():
      signal.signal(s, h)


class _Clock:
  """Wall time and steps counted since the last restart, with paused intervals left out."""

  def __init__(self):
    self.restart()

  def restart(self):
    self._t0, self.steps = time.perf_counter(), 0

  def count(self):
    self.steps += 1

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self._t0 += time.perf_counter() - t


def _warn_if_schedule_reshapes(config, saved_config: dict) -> None:
  """A resume with another train.steps stretches a decaying schedule that follows it: say so, and the way out."""
  o = config.optim
  saved_steps = saved_config.get("train", {}).get("steps")
  saved_schedule_steps = saved_config.get("optim", {}).get("schedule_steps", 0) or saved_steps
  schedule_steps = optim.schedule_length(config)
  if o.schedule != "constant" and saved_steps is not None and schedule_steps != saved_schedule_steps:
    log.warning("train.steps changed from %d (checkpoint) to %d: the %s schedule now spans %d steps, not %d, so the "
                "learning rate jumps at the resume; set optim.schedule_steps=%d to keep the checkpoint's schedule",
                saved_steps, config.train.steps, o.schedule, schedule_steps, saved_schedule_steps,
                saved_schedule_steps)

