"""The training loop: a config and a work directory in, checkpoints and metrics out.

It reads top to bottom in execution order: set up, check the config, build the mesh, the steps (jaxtrain/step.py,
jitted here once with explicit shardings and donation) and the data, restore or initialize, then loop: at each
step boundary `loop.due` decides what happens there (log, save, eval, stop, grow, the diagnostics step) and the
loop does it.

Resume order: 1. the newest checkpoint in <workdir>/checkpoints that every host
can read (a damaged one is set aside, the one before is used); 2. a fresh start.

On several hosts every host runs this same loop, and every decision that changes
which collectives run next (stop, save, which step to restore) is taken from
values all hosts have exchanged (jaxtrain/hosts.py), never from one host's
signal or read error alone, so no host waits in a barrier another never reaches.

Growth events (config.growth.events, jaxtrain/growth): one program per phase; at the end of an event's step the
small model is saved, then grown on the mesh. A run without events never enters growth code.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import checkpoint, data, flops, growth, hosts, loop, model, optim, paths, preflight, profiling, sharding
from jaxtrain import config as cfg_lib
from jaxtrain import downstream
from jaxtrain import step as step_lib
from jaxtrain.metrics import MetricWriter

log = logging.getLogger("jaxtrain")


class NonFiniteError(FloatingPointError):
  """The loss or gradient became NaN or Inf; the message names the step and the metric."""


class Program(NamedTuple):
  """What one config compiles to on one mesh: a notebook, test or benchmark can drive it directly."""
  mesh: jax.sharding.Mesh
  graphdef: Any                 # the model's NNX graph definition; nnx.merge(graphdef, params)
  param_axes: Any               # logical axis names of every parameter
  abstract_state: Any           # ShapeDtypeStructs with shardings, for restoring checkpoints
  init: Callable                # key -> state, placed on the mesh
  train_step: Callable          # (state, batch) -> (state, metrics); donates state
  diagnostics_step: Callable    # the same, with the collapse metrics and per-layer diagnostics in the metrics
  eval_step: Callable           # (params, batch) -> (loss sum, token count)
  lr_schedule: Callable


def build(config, mesh, lr_schedule=None, peak_lr=None, ramp=None) -> Program:
  """Builds and jits the model, optimizer and steps of `config` over `mesh` (compiled on first call).

  `lr_schedule` and `peak_lr` replace the config's schedule, `ramp` gates new layers (a growth phase's,
  growth.Phase; with a ramp the eval step takes the train step too).
  """
  graphdef, abstract_params, param_axes = model.abstract(config.model)
  sharding.check_divisible(abstract_params, param_axes, dict(mesh.shape))
  tx, lr_schedule = optim.make(config, param_axes, lr_schedule, peak_lr)
  init_state = step_lib.make_state_fn(config, tx)
  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_sh = sharding.shardings(mesh, param_axes)
  state_sh = {
      "step": replicated, "params": param_sh, "rng": replicated,
      # optax.partition (optim.name=muon) masks each branch's moments: MaskedNode where the other branch holds them
      "opt_state": optax.tree_map_params(tx, lambda v, s: v if isinstance(v, optax.MaskedNode) else s,
                                         abstract_state["opt_state"], param_sh,
                                         transform_non_params=lambda _: replicated,
                                         is_leaf=lambda v: isinstance(v, optax.MaskedNode)),
  }
  if "fp8" in abstract_state:  # delayed scaling's scales and histories: small, replicated
    state_sh["fp8"] = jax.tree.map(lambda _: replicated, abstract_state["fp8"])
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  on_mesh = functools.partial(sharding.traced_on, mesh)  # each step carries its mesh, for the activations' constraints
  train_step, diagnostics_step = (
      jax.jit(on_mesh(step_lib.make_train_step(config, graphdef, tx, lr_schedule, diagnostics=d,
                                               param_axes=param_axes, ramp=ramp)),
              in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,))
      for d in (False, True))
  eval_step = jax.jit(on_mesh(step_lib.make_eval_step(config, graphdef, ramp)),
                      in_shardings=(param_sh, batch_sh) + ((replicated,) if ramp else ()))
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


def check(config, devices) -> tuple[dict, list]:
  """(mesh shape, growth phases) of `config` on `devices`, after every check that can run before compiling: of the
  config (preflight.validate) and of the model of each phase between growth events (growth.plan). ConfigError.
  Without growth events the one phase is the config's own, its schedule the config's (None)."""
  validate = functools.partial(
      preflight.validate, num_devices=len(devices), vocab_size=data.make_tokenizer(config.data).vocab_size,
      platform=devices[0].platform, process_count=len({d.process_index for d in devices}),
      local_devices=sum(d.process_index == jax.process_index() for d in devices),
      compute_capability=getattr(devices[0], "compute_capability", None))
  mesh_shape = validate(config)
  if not config.growth.events:
    return mesh_shape, [growth.Phase(0, config, None, None, None)]
  phases = growth.plan(config)
  for p in phases[1:]:
    with growth.event_errors(p):
      validate(p.config)
  return mesh_shape, phases


def train(config, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a summary dict.

  `devices` (default: all) lets a notebook or test run on a subset of the devices. On a multi-host
  run every host calls it (after `jax.distributed.initialize`); all hosts take the same decisions.
  """
  t, m = config.train, config.model
  timer = loop.Breakdown(profiling.compile_seconds)  # where the wall time goes: one line at the end

  ##################################################################### Setup
  workdir = paths.resolve(workdir)  # local or gs://: every file below goes through epath
  is_main = jax.process_index() == 0
  if is_main:
    paths.makedirs(workdir)
  devices = list(devices or jax.devices())
  mesh_shape, phases = check(config, devices)
  growing = len(phases) > 1  # growth events; without them no growth code runs below
  phase_at = functools.partial(growth.phase_at, phases) if growing else (lambda _: 0)

  ##################################################################### Mesh
  mesh = sharding.make_mesh(mesh_shape, devices)
  hosts.open_collectives(mesh)  # before hosts drift apart compiling at different speeds
  log.info("devices: %d x %s in %d process(es), mesh %s", len(devices), devices[0].device_kind,
           jax.process_count(), mesh_shape)

  ##################################################################### Model, optimizer, steps
  programs = [build(config, mesh)]  # one per growth phase; each compiles on its first call
  for p in phases[1:]:
    with growth.event_errors(p):
      programs.append(build(p.config, mesh, p.lr_schedule, p.peak_lr, p.ramp))

  ##################################################################### Data
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  loader = data.TrainData(config.data, seq_len=config.data.seq_len, global_batch=t.global_batch, seed=config.seed)
  eval_sets = data.eval_sets(config.data, seq_len=config.data.seq_len, global_batch=t.global_batch,
                             num_batches=t.eval_batches, sharding=batch_sh)  # {source: its validation batches}
  score_tasks = (downstream.in_training(downstream.load_tasks(t.downstream_tasks), data.make_tokenizer(config.data),
                                        mesh, m.max_seq_len) if t.downstream_tasks else None)
  log.info("data: %s, %s packing (%.1f%% of input tokens are documents', the rest padding)",
           ", ".join(loader.sources) or config.data.name, loader.scheme, 100 * loader.efficiency)

  # The run's one Checkpointer: it restores, then saves; closed (its saves finished) on any way out.
  with checkpoint.Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints) as ckpt:
    ################################################################### Restore or initialize
    restored = ckpt.restore_latest(lambda s: programs[phase_at(s)].abstract_state,
                                   lambda s: phases[phase_at(s)].config.model.to_dict(), loader.fingerprint)
    if restored is not None and restored.step > t.steps:
      raise cfg_lib.ConfigError(f"the checkpoint in {ckpt.directory} is at step {restored.step}, past "
                                f"train.steps={t.steps}: raise train.steps to continue it, or use a new --workdir")
    start = restored.step if restored is not None else 0
    phase = phase_at(start)
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
      # The run's tokenizer file travels with its checkpoints (load_run, sampling, export read this copy).
      data.tokenizer.save_copy(workdir, data.make_tokenizer(config.data), replace=restored is None)

    ################################################################### Train loop
    writer = MetricWriter(workdir, total_steps=t.steps, first_step=start, progress=t.progress, enabled=is_main,
                          config=config)  # metrics.jsonl and the trackers of train.trackers, on process 0
    writer.log_config(configs_json[0])
    profiler = profiling.Profiler(workdir, jax.process_index())  # train.profile_steps, train.memory_profile_step
    peak, peak_source = flops.peak_flops(m.compute_dtype, t.peak_flops, devices)
    log.info("MFU against %.3g FLOP/s (%s)", peak, peak_source)
    step_flops = [flops.train_flops_per_step(p.config.model, config.data.seq_len, t.global_batch) for p in phases]
    # Across growth events: compare runs at equal compute.
    total_flops = functools.partial(growth.total_flops, phases) if growing else lambda n: float(n * step_flops[0])
    evaluate = lambda st: (_evaluate(prog.eval_step, st["params"], eval_sets, st["step"] if phases[phase].ramp else None)
                           | (score_tasks(prog.graphdef, st["params"]) if score_tasks else {}))  # downstream/<task>/..
    signals, clock, window = loop.Signals(), loop.Clock(), _Window(writer, t.on_nonfinite)
    due = functools.partial(
        loop.due, start=start, last_step=t.steps, log_every=t.log_every, eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every, diagnostics_every=t.diagnostics_every,
        growth_steps={p.start for p in phases[1:]},
        # A signal on any host, seen by all at the same step. On several hosts the all-gather waits for the step
        # it follows, so it runs every stop_check_every steps, letting the others queue behind their predecessor.
        stop_check_every=1 if jax.process_count() == 1 else t.stop_check_every,
        stop_signal=lambda: hosts.any_host(bool(signals.received)),
        profile=profiling.parse_steps(t.profile_steps), memory_profile_step=t.memory_profile_step)
    step, last_saved, last_eval, stopped_by, compiling = start, start, {}, None, True
    last_log = start  # the data's log fields (packing efficiency) cover the steps since
    batches = loader.iterate(start, batch_sh)
    timer.lap("setup")
    try:
      with signals:  # a signal only sets a flag: the hosts agree on stopping in `due`
        while True:
          a = due(step)
          # The steps' metrics are fetched a step late, so the host does not wait for the device, except before
          # anything is logged or saved (the step must be known good) and after a compiling step.
          with timer.phase("train"):
            window.fetch(0 if a.acts or compiling else 1, last_saved, ckpt.directory)
          if compiling and step > start:  # the first step of a program compiles: out of the throughput figures
            log.info("step %d (compile and run) took %.1f s", step, clock.elapsed())
            clock.restart()
            compiling = False
          if a.profile_stop or a.memory_profile:
            with timer.phase("profile"), clock.paused():
              jax.block_until_ready(state)  # the window's last step whole in the trace, and nothing after it
              if a.profile_stop:
                profiler.stop(step)
                clock.resume()  # the traced steps are left out of the throughput figures
              if a.memory_profile:
                profiler.memory(step)

          ############################################################### Log, save, eval, stop
          if a.log:
            row = window.mean() | {"tokens": step * t.global_batch * config.data.seq_len,
                                   "total_flops": total_flops(step)} | loader.log_fields(step, last_log)
            last_log = step
            if clock.steps:  # a window of only the compiling first step has no throughput to report
              row["step_time"] = clock.elapsed() / clock.steps
              row["tokens_per_second"] = t.global_batch * config.data.seq_len / row["step_time"]
              if math.isfinite(peak):  # nan: an accelerator without a known peak (flops.py said so once)
                row["mfu"] = step_flops[phase] / row["step_time"] / peak
            with timer.phase("log"):
              writer.write(step, row)
            clock.restart()
          with clock.paused():  # saving and evaluation are kept out of the throughput figures
            if a.save:  # before evaluation: a signal or crash during evaluation cannot cost the step
              writer.flush()  # in a bucket: the lines up to this step are there before its checkpoint can be
              with timer.phase("save"):
                ckpt.save(step, state, loader.fingerprint(step), configs_json[phase])
              last_saved = step
            if a.eval:
              with timer.phase("eval"):
                last_eval = evaluate(state)
              writer.write(step, last_eval)
            if a.save:
              writer.flush()  # and the saved step's evaluation, as on a disk, where each line is appended at once
          if a.stop:
            with timer.phase("save"):
              ckpt.wait()  # the step is on disk before the log says so
            stopped_by = signals.received or "a signal to another host"
            log.warning("received %s: saved step %d, exiting; run the same command to resume", stopped_by, step)
            break
          if step >= t.steps:
            break

          ############################################################### Grow (the small model saved above)
          if a.grow:
            with clock.paused(), timer.phase("grow"):  # the data stream goes on where it was
              before = evaluate(state)["eval_loss"]
              n_learn = growth.learn_steps(phases[phase + 1].event)  # g_learn fits its operator on the next batches
              learn = [loader.batch(step + i, batch_sh) for i in range(n_learn)] if n_learn else None
              phase += 1
              state, prog = grow(phases, phase, programs, state, learn), programs[phase]
              after = evaluate(state)["eval_loss"]
            n = model.count_params(state["params"])
            log.info("step %d: grew by %s to %.2fM parameters (%s); eval loss %.4f -> %.4f", step,
                     phases[phase].event["op"], n / 1e6, cfg_lib.describe(phases[phase].config.model), before, after)
            writer.write(step, {"growth/event": phase, "growth/parameters": n, "growth/eval_loss_before": before,
                                "growth/eval_loss_after": after})
            compiling = True

          if a.profile_start:
            with timer.phase("profile"):
              jax.block_until_ready(state)  # nothing from before the window in the trace
              clock.pause()
              profiler.start(step)

          ############################################################### One step
          with timer.phase("data"):
            batch = next(batches)
          with timer.phase("train"):
            state, metrics = (prog.diagnostics_step if a.diagnose else prog.train_step)(state, batch)
          step += 1
          writer.advance()
          clock.count()
          window.add(step, metrics)

      ################################################################# Where the time went (before the trackers close)
      if step == t.steps and not last_eval:  # a finished run resumed: its final evaluation
        with timer.phase("eval"):
          last_eval = evaluate(state)
      with timer.phase("save"):
        ckpt.wait()
      times = timer.totals()
      log.info("%s", timer.line(times))
      writer.write(step, {f"time/{k}": v for k, v in times.items()})
      writer.summary({"step": step, "stopped_by": stopped_by, "skipped_steps": window.skipped,
                      "final_eval_loss": last_eval.get("eval_loss") if step == t.steps else None,
                      **{f"time/{k}": v for k, v in times.items()}})
    finally:
      profiler.stop(step)  # a trace cut short by an error is still written
      batches.close()
      ckpt.wait()
      writer.close()

  ##################################################################### Finish
  summary = {"workdir": os.fspath(workdir), "step": int(step), "stopped_by": stopped_by,
             "checkpoints": ckpt.directory, "metrics": os.fspath(workdir / "metrics.jsonl"),
             "parameters": model.count_params(state["params"]), "skipped_steps": window.skipped,
             "total_flops": total_flops(step), "time": times}
  if step == t.steps:
    summary["final_eval_loss"] = (last_eval or evaluate(state))["eval_loss"]
  return summary


class _Window:
  """The steps' metrics since the last log line: fetched from the device, checked finite (NonFiniteError, or a
  skipped update counted), the diagnostics' per-layer and per-tensor arrays written on lines of their own."""

  def __init__(self, writer: MetricWriter, on_nonfinite: str):
    self.writer, self.on_nonfinite = writer, on_nonfinite
    self.pending, self.rows, self.skipped = [], [], 0

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))

  def fetch(self, keep: int, last_saved: int, directory: str) -> None:
    """Fetches the pending steps' metrics but the newest `keep`."""
    while len(self.pending) > keep:
      step, metrics = self.pending.pop(0)
      metrics = jax.device_get(metrics)
      if not metrics.pop("finite"):
        bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
        if self.on_nonfinite != "skip":
          raise NonFiniteError(
              f"step {step}: {', '.join(bad)} became {metrics[bad[0]]}; stopped without saving, the last good "
              f"checkpoint (step {last_saved}) is intact in {directory}. Lower optim.lr, or set "
              "train.on_nonfinite=skip to skip bad updates")
        self.skipped += 1
        log.warning("step %d: %s not finite; update skipped (%d so far)", step, ", ".join(bad), self.skipped)
      arrays = {k: v.tolist() for k, v in metrics.items() if k.startswith(step_lib.DIAGNOSTIC_PREFIXES)}
      if arrays:
        self.writer.write(step, arrays)
      self.rows.append({k: v for k, v in metrics.items() if k not in arrays})

  def mean(self) -> dict:
    """Each metric's mean over the window's steps that have it (a diagnostics step has more); starts a new one."""
    keys = dict.fromkeys(k for row in self.rows for k in row)
    out = {k: float(np.mean([row[k] for row in self.rows if k in row])) for k in keys}
    self.rows = []
    return out


def grow(phases, k: int, programs: list[Program], state, batches=None):
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


def _evaluate(eval_step, params, sets: dict, step=None) -> dict:
  """The eval loss of one source's batches; of a mixture's, each source's (`eval_loss/<source>`) and their tokens'
  mean over all sources (`eval_loss`)."""
  if len(sets) == 1:
    return step_lib.evaluate_batches(eval_step, params, next(iter(sets.values())).batches, step)
  per = {n: step_lib.evaluate_batches(eval_step, params, s.batches, step)["eval_loss"] for n, s in sets.items()}
  loss = sum(per[n] * s.tokens for n, s in sets.items()) / sum(s.tokens for s in sets.values())
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))} | {f"eval_loss/{n}": v
                                                                               for n, v in per.items()}


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
