r"""Offline growth: a trained run's checkpoint -> a bigger model's checkpoint, in a new workdir, ready to train.

    python -m jaxtrain.grow --from=runs/small --to=configs/lm_small.py:base --op=stack --workdir=runs/grown
    python -m jaxtrain --config=configs/lm_small.py:base --workdir=runs/grown      # trains the grown model on

What the official G_stack code does between its two runs ("Stacking Your Transformers", Du et al., NeurIPS 2024,
arXiv 2405.15319; github.com/tongxuluo/prts), on the device mesh, with the operators of jaxtrain.growth:

- The source: `--from`'s config.json and its newest checkpoint every host can read, read as the trainer reads it
  (so, as there, a damaged newest step is moved to corrupt_checkpoints/ and the one before used, and Orbax
  removes an interrupted save's temporary directory: do not grow from a run that is still saving). A source that
  grew mid-run holds, at each step, the model of the growth phase that step is in (growth.plan, phase_at).
- The target: `--to` (a config file[:arg]) with `--config.<field>=<value>` overrides, as `python -m jaxtrain`
  reads them. The grown model must be the target's model (sizes compared resolved, as the checkpoint check does:
  head_dim=None and head_dim=d_model/num_heads are one model); otherwise one line names the field that differs.
  expand_d_model rescales model.norm.eps by D/D̂ (its exactness needs it): set the target's eps to the grown one.
- The operators: `--op=OP[,OP...]`, applied left to right (`--op=expand_mlp,expand_d_model`). Each one's
  arguments come from `--arg NAME=VALUE` (a Python literal: `--arg g=4`, `--arg at=[0,3]`, `--arg exact=False`;
  with several ops `--arg OP.NAME=VALUE` gives one op an argument another also takes) or, where not given, from
  the target's model: stack, g_zero and g_learn g = target layers / current layers (else give
  `--arg layer_map=[...]`), g_random num_layers, expand_mlp and split_mlp mlp_dim, add_heads num_heads and
  num_kv_heads, expand_head_dim head_dim, expand_d_model d_model; insert_layers needs `--arg at=[...]`. Fresh
  entries are drawn from growth.event_key(seed, 0) (op i of the list: folded with i); `--seed` defaults to the
  target's config.seed. g_learn fits its operator (`--arg fit_steps=N`) on the target's training batches from the
  grown run's first step on, the ones that run then trains on first, as mid-run growth does with the batches after
  the event.
- The step: 0 by default, the grown model starting a run of its own: its learning-rate schedule from the start,
  warmup included, as G_stack's official code does (prts `iter_num` starts at 0), and its data from the start
  too (prts skips the base's batches with --resume_id; here the data position is the step). `--keep_step`
  keeps the source's step: the grown run continues the data stream where the source stopped (no batch seen
  twice) and the target's schedule from that step; it needs the target's data setup to be the source's (the
  checkpoint's data fingerprint) and train.steps past the step. For prts' recipe exactly (a new warmup and
  schedule, the data continued), grow mid-run: config growth.events with lr=restart_warmup (growth/events.py).
- The optimizer: `--opt reset` (default; a fresh optimizer of the target's config: G_stack's code, LiGO),
  `--opt copy` (MSG, Yao et al. 2024: the old moments moved with the parameters, zeros for new entries and for
  copies such as a stacked layer's repeats, the counts kept) or `--opt duplicate` (as copy, but copies take their
  source's moments: staged training's depth growth, Shen et al. 2022); copy and duplicate need the source's
  optimizer kind. growth.grow_opt_state.
- The transform runs on the target's mesh over all devices: the source state restored sharded onto it, one
  jitted function from the source state's shardings to the target's, so no host holds the whole model.

Written into `--workdir`: checkpoints/<step> (the grown state, the target config's JSON and its data
fingerprint: what `python -m jaxtrain --config=<to> [same overrides] --workdir=<workdir>` resumes from),
config.json, and grow.json: the source, its step, the operators with their resolved arguments, the policies,
the eval loss before and after (on the target's validation batches), `source_total_flops` (the model FLOPs
spent on the source, flops.py) and `growth_flops` (g_learn's fit), to add to the grown run's `total_flops` when
comparing at equal compute.

Refused before anything is built, in one line each (exit code 2), nothing written: a workdir that already holds
checkpoints (nothing is ever overwritten), a source without config.json or checkpoints, an unknown op, an
--arg no op takes or that is not a literal, an op that does not reach the target or a target it cannot reach.

Multi-host: every host runs the same command (with --distributed, as `python -m jaxtrain`); the save is
collective and only process 0 writes config.json and grow.json.

This module is a tool: it imports the trainer, so the growth package does not import it (`jaxtrain/grow.py` is
its `python -m` entry point).
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import shlex
import sys
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxtrain import __main__ as cli
from jaxtrain import checkpoint, data, flops, hosts, model, optim, paths, sharding, train
from jaxtrain import config as cfg_lib
from jaxtrain import growth
from jaxtrain import step as step_lib
from jaxtrain.config import ConfigError

USAGE = ("python -m jaxtrain.grow --from=SOURCE_WORKDIR --to=CONFIG[:ARG] --op=OP[,OP...] --workdir=DIR\n"
         "       [--arg NAME=VALUE ...] [--opt reset|copy|duplicate] [--keep_step] [--seed N] [--no_eval]\n"
         "       [--config.<field>=<value> ...] [--distributed ...] [--cpu_devices=N] [--flagfile=FILE]")

# Which operators change which model field: the hint when the grown model misses the target there.
CHANGED_BY = {"num_layers": ("stack", "g_zero", "g_random", "insert_layers"), "mlp_dim": ("expand_mlp", "split_mlp"),
              "num_heads": ("add_heads",), "num_kv_heads": ("add_heads",), "head_dim": ("expand_head_dim",),
              "d_model": ("expand_d_model",)}


# ---------------------------------------------------------------- operators and their arguments


def parse_args(items: list[str]) -> dict:
  """{'g': 4, 'stack.layer_map': [0, 1]} from ['g=4', 'stack.layer_map=[0,1]']: values are Python literals."""
  out = {}
  for item in items:
    name, eq, raw = item.partition("=")
    name = name.strip()
    if not eq or not name:
      raise ConfigError(f"--arg {item!r}: expected NAME=VALUE, e.g. --arg g=4 or --arg at=[0,3]")
    try:
      value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      raise ConfigError(f"--arg {item}: {raw!r} is not a Python literal (a number, list, True/False, None)") from None
    if name in out:
      raise ConfigError(f"--arg {name} is given twice")
    out[name] = value
  return out


def assign_args(ops: list[str], args: dict) -> list[dict]:
  """Per op, the arguments `args` give it: NAME to every op taking NAME, OP.NAME to that op (one line on error)."""
  if not ops or any(not op for op in ops):
    raise ConfigError(f"--op={','.join(ops)}: name one operator or several joined by commas, e.g. --op=stack")
  for op in ops:
    if op not in growth.OPERATORS:
      raise ConfigError(f"--op: unknown operator {op!r}; choose from {sorted(growth.OPERATORS)}")
  if len(set(ops)) < len(ops):
    raise ConfigError(f"--op={','.join(ops)} names an operator twice; give it the final size once, or grow twice")
  per_op = [{} for _ in ops]
  for name, value in args.items():
    op, dot, arg = name.rpartition(".")
    targets = [i for i, o in enumerate(ops) if (o == op if dot else arg in growth.op_args(o))]
    if dot and op not in ops:
      raise ConfigError(f"--arg {name}: {op!r} is not an --op here (--op={','.join(ops)})")
    if dot and arg not in growth.op_args(op):
      raise ConfigError(f"--arg {name}: {op} takes {growth.op_args(op)}")
    if not targets:
      takes = "; ".join(f"{o} takes {growth.op_args(o)}" for o in ops)
      raise ConfigError(f"--arg {name}: no operator in --op={','.join(ops)} takes it ({takes})")
    if len(targets) > 1:
      raise ConfigError(f"--arg {name}: several operators take it; say which: --arg {ops[targets[0]]}.{arg}=...")
    per_op[targets[0]][arg] = value
  return per_op


def infer_args(op: str, m, target, given: dict) -> dict:
  """`given` plus what the target model implies for the arguments op leaves out (m: the model before op)."""
  out = dict(given)
  if op in ("stack", "g_zero", "g_learn") and "g" not in out and "layer_map" not in out:
    L, T = m.num_layers, target.num_layers
    if T <= L:
      raise ConfigError(f"{op}: the target has {T} layers and the model {L}: growth adds layers; set the target's "
                        f"model.num_layers above {L}, or drop {op}")
    out["g"] = T // L if T % L == 0 else T / L  # not a multiple: bert2BERT's / MSG's top fill (growth.top_fill_map)
  elif op == "g_random":
    out.setdefault("num_layers", target.num_layers)
  elif op == "insert_layers" and "at" not in out:
    raise ConfigError(f"insert_layers: say where the {target.num_layers - m.num_layers} new layer(s) go: "
                      f"--arg at=[...] (a new layer before each listed index of the model's {m.num_layers} layers; "
                      f"{m.num_layers}: on top)")
  elif op in ("expand_mlp", "split_mlp"):
    out.setdefault("mlp_dim", cfg_lib.mlp_dim(target))
  elif op == "add_heads":
    out.setdefault("num_heads", target.num_heads)
    if "num_kv_heads" not in out and not (m.num_kv_heads is None and target.num_kv_heads is None):
      out["num_kv_heads"] = cfg_lib.num_kv_heads(target)
  elif op == "expand_head_dim":
    out.setdefault("head_dim", cfg_lib.head_dim(target))
  elif op == "expand_d_model":
    out.setdefault("d_model", target.d_model)
  return out


def _grown_model(m, op: str, args: dict, batch_shape: tuple[int, int]):
  """The model config `op` grows `m` into, worked out on shapes alone (jax.eval_shape): nothing allocated."""
  out, key = {}, jax.random.key(0)  # concrete, outside the trace: split_mlp draws its unit map from it

  def shape_only(params, batches):
    out["m"], new = growth.apply(m, params, op, args, key, batches)
    return new

  n = growth.learn_steps({"op": op, **args})
  jax.eval_shape(shape_only, model.abstract(m)[1],
                 {k: jax.ShapeDtypeStruct((n, *batch_shape), jnp.int32) for k in ("inputs", "targets")})
  return out["m"]


def resolve(m, target, ops: list[str], given: list[dict], batch_shape: tuple[int, int] = (1, 8)):
  """([(op, args)] with inferred arguments, the grown model config), worked out abstractly: nothing allocated.

  `batch_shape`: (B, T) of the batches an operator that learns (g_learn) fits on. Raises ConfigError naming the op
  for an operator that cannot apply, and the field for a grown model that is not the target's.
  """
  chain, cur = [], m
  for op, op_given in zip(ops, given):
    args = op_given
    try:
      args = infer_args(op, cur, target, op_given)
      grown = _grown_model(cur, op, args, batch_shape)
    except (ConfigError, TypeError, ValueError) as e:  # an argument of the wrong kind: one line too
      inferred = sorted(set(args) - set(op_given))
      hint = f" (inferred from the target: {', '.join(f'{k}={args[k]!r}' for k in inferred)})" if inferred else ""
      raise ConfigError(f"--op {op}: {e}{hint}") from None
    chain.append((op, args))
    cur = grown
  check_reaches(cur, target, [op for op, _ in chain])
  return chain, cur


def check_reaches(grown, target, ops: list[str]) -> None:
  """ConfigError naming the first model field (resolved, as checkpoint compatibility compares) that differs."""
  have, want = checkpoint.semantics(grown.to_dict()), checkpoint.semantics(target.to_dict())
  for key, value in want.items():
    if key in have and have[key] != value:
      by = CHANGED_BY.get(key, ())
      if key == "norm.eps" and "expand_d_model" in ops:
        fix = (f"expand_d_model rescales eps by D/D̂ to stay exact: set --config.model.norm.eps={have[key]!r} "
               "(or set it so in the target's config file)")
      elif by and not set(by) & set(ops):
        fix = f"--op={','.join(ops)} does not change it; add {' or '.join(by)} to --op"
        if key in ("head_dim", "mlp_dim") and target.get(key) is None:  # derived from d_model (and num_heads)
          fix += f", or pin the target's (None derives it from d_model): --config.model.{key}={have[key]!r}"
      elif by:
        fix = f"give its size with --arg, or set the target's model.{key} to {have[key]!r}"
      else:
        fix = (f"growth keeps the source's model.{key}; set --config.model.{key}={have[key]!r} "
               "(a different one would not be the trained model)")
      raise ConfigError(f"the grown model's model.{key} is {have[key]!r}, the target's {value!r}: {fix}")


# ---------------------------------------------------------------- the source run


class Source(NamedTuple):
  """The run grown from."""
  workdir: Any              # its workdir (an epath)
  checkpoints: Any          # its checkpoint directory
  steps: list[int]          # the steps saved there
  config: ml_collections.ConfigDict
  phases: list              # its growth phases (growth.plan): which model each step holds


def load_source_config(source: str):
  """The source run's config (its config.json; sections a newer jaxtrain added filled from base())."""
  path = paths.resolve(source) / "config.json"
  try:
    saved = json.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f"--from={source}: no config.json there; name the workdir of a jaxtrain run") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"--from={source}: config.json is unreadable ({e})") from None
  return cfg_lib.from_json(saved)


def open_source(source) -> Source:
  """The source run, checked: it exists, has checkpoints, a config.json and a valid growth plan."""
  if not source.is_dir():
    raise ConfigError(f"--from={source} does not exist; name the workdir of a trained jaxtrain run")
  ckpts = source / "checkpoints"
  steps = checkpoint.checkpoint_steps(ckpts)
  if not steps:
    raise ConfigError(f"--from={source} has no checkpoints (in {ckpts}); train it first, or name another run")
  config = load_source_config(source)
  try:
    phases = growth.plan(config)
  except ConfigError as e:
    raise ConfigError(f"--from={source}: its config.json: {e}") from None
  return Source(source, ckpts, steps, config, phases)


def saved_fingerprint(directory, step: int) -> dict | None:
  """The data fingerprint saved with checkpoint `step` (None where unreadable)."""
  try:
    return json.loads((paths.resolve(directory) / str(step) / "data" / "metadata").read_text()).get("fingerprint")
  except (OSError, json.JSONDecodeError):
    return None


# ---------------------------------------------------------------- growing


class Steps(NamedTuple):
  """Which phases a source step and its grown step fall in."""
  source: list              # the source's growth phases
  target: list              # the target's
  keep_step: bool

  def at(self, src_step: int) -> tuple[int, int, int]:
    """(source phase index, output step, target phase index) for a source checkpoint at src_step."""
    step = src_step if self.keep_step else 0
    return growth.phase_at(self.source, src_step), step, growth.phase_at(self.target, step)


def check_keep_step(src: Source, fingerprint: dict) -> None:
  """--keep_step continues the source's data stream: the target's data must be the source's."""
  newest = src.steps[-1]
  saved = saved_fingerprint(src.checkpoints, newest)
  for key in fingerprint:
    if saved is not None and saved.get(key) != fingerprint.get(key):
      raise ConfigError(f"--keep_step continues the source's data stream, but the target's data differs ({key}: "
                        f"source {saved.get(key)!r} vs target {fingerprint.get(key)!r}): set the target's back, or "
                        "grow to step 0 (no --keep_step)")


def first_difference(got, want) -> str:
  """The first state leaf (path) whose presence, shape or dtype differs, in words."""
  name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  flat = lambda tree: {name(p): (tuple(x.shape), str(x.dtype))
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  g, w = flat(got), flat(want)
  for path in list(w) + [p for p in g if p not in w]:
    if g.get(path) != w.get(path):
      return f"{path}: grown {g.get(path, 'absent')} vs target {w.get(path, 'absent')}"
  return "the same leaves in another tree structure"


def transform(state, batches, *, chain, m, step: int, keys, opt: str, tx, abstract_state, fp8=None):
  """The target's train state from the source's: params by the ops in turn, the optimizer by `opt` (pure; jitted).

  `fp8`: the target's fresh FP8 delayed-scaling state (scales and histories start afresh for the new shapes)."""
  stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches) if batches else None
  _, params, index_map = growth.apply_chain(m, state["params"], chain, keys, stacked)
  params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, abstract_state["params"])
  opt_state = (tx.init(params) if opt == "reset"
               else growth.grow_opt_state(opt, state["opt_state"], params, index_map))
  new = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state, "rng": state["rng"]}
  if fp8 is not None:
    new["fp8"] = fp8
  return new


class Compiled(NamedTuple):
  """The grow transform for one source step, compiled: `fn(state)` -> the grown state."""
  fn: Callable
  chain: list               # [(op, args)], the arguments resolved
  learn_steps: int          # the batches g_learn fits on


class Job:
  """One offline growth: the target's mesh and program, and the source's programs and resolved ops per phase."""

  def __init__(self, src: Source, target_config, steps: Steps, mesh_shape, devices, ops, given, *, opt, seed):
    self.src, self.target_config, self.steps = src, target_config, steps
    self.ops, self.given, self.opt = ops, given, opt
    self.batch_shape = (target_config.train.global_batch, target_config.data.seq_len)
    self.newest = src.steps[-1]
    self.out_phase = steps.target[steps.at(self.newest)[2]]
    self.chains = {}          # source phase index -> (chain, grown model)
    self.programs = {}        # source phase index -> train.Program of the source model on the target's mesh
    self.compiled = {}        # (source phase index, output step) -> Compiled
    self.resolve(steps.at(self.newest)[0])  # the ops checked against the target before anything is built
    self.loader = data.TrainData(target_config.data, seq_len=target_config.data.seq_len,
                                 global_batch=target_config.train.global_batch, seed=target_config.seed)
    if steps.keep_step:  # a mixture's fingerprint depends on the step (the rows each source has given)
      check_keep_step(src, self.loader.fingerprint(self.newest))
    self.mesh = sharding.make_mesh(mesh_shape, devices)
    self.mesh_shape = mesh_shape
    hosts.open_collectives(self.mesh)
    self.batch_sharding = jax.sharding.NamedSharding(self.mesh, sharding.spec(("batch", None)))
    with growth.event_errors(self.out_phase):
      self.program = train.build(self.out_phase.config, self.mesh, self.out_phase.lr_schedule, self.out_phase.peak_lr)
    self.tx, _ = optim.make(self.out_phase.config, self.program.param_axes, self.out_phase.lr_schedule,
                            self.out_phase.peak_lr)
    self.seed = target_config.seed if seed is None else seed
    # Op i draws from fold_in(event_key(seed, 0), i), made here, not in the trace: split_mlp needs a concrete key.
    self.keys = [jax.random.fold_in(growth.event_key(self.seed, 0), i) for i in range(len(ops))]
    self.fp8 = model.fp8_state(self.out_phase.config.model) if "fp8" in self.program.abstract_state else None

  def resolve(self, sp: int):
    """The ops with their arguments from source phase `sp`'s model to the target's, and the grown model."""
    if sp not in self.chains:
      self.chains[sp] = resolve(self.src.phases[sp].config.model, self.out_phase.config.model, self.ops, self.given,
                                self.batch_shape)
    return self.chains[sp]

  def source_program(self, src_step: int) -> train.Program:
    """The source model's program on the target's mesh (its abstract state, its eval on the target's batches)."""
    sp = self.steps.at(src_step)[0]
    if sp not in self.programs:
      c = ml_collections.ConfigDict(self.src.phases[sp].config.to_dict())
      c.train.microbatches = self.target_config.train.microbatches  # for the eval on the target's batches
      p = self.src.phases[sp]
      try:
        self.programs[sp] = train.build(c, self.mesh, p.lr_schedule, p.peak_lr)
      except ConfigError as e:
        raise ConfigError(f"the source model on the target's mesh {self.mesh_shape}: {e}") from None
    return self.programs[sp]

  def compile(self, src_step: int) -> Compiled:
    """The jitted transform of a source state at src_step, checked abstractly against the target's state."""
    sp, step, tp = self.steps.at(src_step)
    if self.steps.target[tp] is not self.out_phase:  # only with --keep_step, a fallback past damage, and growth events
      raise ConfigError(f"the newest readable source checkpoint, step {src_step}, falls in another growth phase of the "
                        f"target than step {self.newest} did: grow from a source whose newest step is readable")
    if (sp, step) not in self.compiled:
      self.compiled[sp, step] = self._compile(src_step, sp, step)
    return self.compiled[sp, step]

  def _compile(self, src_step: int, sp: int, step: int) -> Compiled:
    chain = self.resolve(sp)[0]
    in_abstract, want_abstract = self.source_program(src_step).abstract_state, self.program.abstract_state
    shardings = lambda abstract: jax.tree.map(lambda a: a.sharding, abstract)
    # g_learn fits on the batches the grown run trains on first (as mid-run: the ones after the event)
    n_learn = sum(growth.learn_steps({"op": op, **a}) for op, a in chain)
    batches = [self.loader.batch(step + i, self.batch_sharding) for i in range(n_learn)]
    grow_fn = functools.partial(transform, chain=chain, m=self.src.phases[sp].config.model, step=step,
                                keys=self.keys, opt=self.opt, tx=self.tx, abstract_state=want_abstract, fp8=self.fp8)
    fn = jax.jit(grow_fn, in_shardings=(shardings(in_abstract), None), out_shardings=shardings(want_abstract),
                 donate_argnums=(0,))
    with jax.set_mesh(self.mesh):
      traced = fn.trace(in_abstract, batches)
    self._check_fits(traced.out_info, want_abstract, sp)
    with jax.set_mesh(self.mesh), warnings.catch_warnings():
      warnings.filterwarnings("ignore", "Some donated buffers were not usable")  # new shapes: freed, not reused
      exe = traced.lower().compile()
    return Compiled(lambda state: exe(state, batches), chain, n_learn)

  def _check_fits(self, out_info, want_abstract, sp: int) -> None:
    """ConfigError (one line) where the grown state's leaves are not the target's."""
    got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out_info)
    want = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), want_abstract)
    if jax.tree.structure(got) == jax.tree.structure(want) and jax.tree.leaves(got) == jax.tree.leaves(want):
      return
    what = first_difference(got, want)
    if self.opt == "reset":
      raise ConfigError(f"the grown train state does not fit the target's ({what})")
    source_opt, target_opt = self.src.phases[sp].config.optim.name, self.target_config.optim.name
    raise ConfigError(f"--opt={self.opt} moves the source's optimizer state (optim.name={source_opt}), which does not fit "
                      f"the target's (optim.name={target_opt}; {what}): use --opt=reset, or the source's optimizer "
                      "settings")

  def restore(self) -> checkpoint.Restored:
    """The source's newest readable checkpoint, restored sharded onto the target's mesh (the source never changed)."""
    with checkpoint.Checkpointer(self.src.checkpoints, read_only=True) as ckpt:
      restored = ckpt.restore_latest(lambda s: self.source_program(s).abstract_state,
                                     lambda s: self.src.phases[self.steps.at(s)[0]].config.model.to_dict())
    if restored is None:
      raise ConfigError(f"--from={self.src.workdir}: no checkpoint in {self.src.checkpoints} could be restored")
    return restored

  def eval_batches(self):
    c = self.target_config
    return data.eval_batches(c.data, seq_len=c.data.seq_len, global_batch=c.train.global_batch,
                             num_batches=c.train.eval_batches, sharding=self.batch_sharding)


def check_request(source: str, workdir: str, ops, args: dict | None, opt: str):
  """The cheap checks, before anything is read or built: (source, workdir as epaths, ops, per-op given arguments)."""
  source, workdir = (paths.resolve(p) for p in (source, workdir))  # local or gs://, through epath
  ops = [o.strip() for o in ops.split(",")] if isinstance(ops, str) else list(ops)
  given = assign_args(ops, dict(args or {}))
  if opt not in growth.POLICIES:
    raise ConfigError(f"--opt={opt!r} is not one of {growth.POLICIES}")
  if steps := checkpoint.checkpoint_steps(workdir / "checkpoints"):  # (an interrupted save's temporary dir is none)
    raise ConfigError(f"--workdir={workdir} already holds checkpoints (steps {steps}); growth "
                      "never overwrites a run: use a new --workdir")
  return source, workdir, ops, given


def write(job: Job, workdir, step: int, state, summary: dict) -> str:
  """The grown state as workdir's checkpoint `step` (collective); config.json and grow.json from process 0."""
  is_main = jax.process_index() == 0
  if is_main:
    paths.makedirs(workdir)
  out = checkpoint.Checkpointer(workdir / "checkpoints", keep=job.target_config.train.keep_checkpoints)
  try:
    out.save(step, state, job.loader.fingerprint(step), json.loads(job.out_phase.config.to_json_best_effort()))
    out.wait()
  finally:
    out.close()
  summary["checkpoints"] = out.directory
  if is_main:
    config_json = json.loads(job.steps.target[0].config.to_json_best_effort())
    (workdir / "config.json").write_text(json.dumps(config_json, indent=2))
    (workdir / "grow.json").write_text(json.dumps(summary, indent=2, default=repr))
  return out.directory


def grow(source: str, target_config, ops: list[str] | str, workdir: str, args: dict | None = None, *,
         opt: str = "reset", keep_step: bool = False, seed: int | None = None, evaluate: bool = True,
         devices=None) -> dict:
  """Grows `source`'s newest checkpoint into `target_config`'s model and saves it as `workdir`'s first checkpoint.

  `ops`: operator names (or one, or 'a,b'); `args`: {'NAME' or 'OP.NAME': value}, the rest inferred from the
  target. Returns a summary (also in grow.json). Every host calls it; ConfigError (one line) for bad input,
  raised before anything is built or written.
  """
  source, workdir, ops, given = check_request(source, workdir, ops, args, opt)
  src = open_source(source)
  devices = list(devices or jax.devices())
  mesh_shape, phases = train.check(target_config, devices)
  if keep_step and src.steps[-1] >= target_config.train.steps:
    raise ConfigError(f"--keep_step: the source is at step {src.steps[-1]}, not before the target's train.steps="
                      f"{target_config.train.steps}: raise --config.train.steps, or grow to step 0 (no --keep_step)")
  job = Job(src, target_config, Steps(src.phases, phases, keep_step), mesh_shape, devices, ops, given, opt=opt,
            seed=seed)
  job.compile(job.newest)  # checked and compiled before the checkpoint is read

  restored = job.restore()
  src_step = restored.step
  sp, step, _ = job.steps.at(src_step)
  compiled = job.compile(src_step)
  src_program = job.source_program(src_step)
  eval_batches = job.eval_batches() if evaluate else None
  evaluate_loss = lambda program, params: (step_lib.evaluate_batches(program.eval_step, params, eval_batches)["eval_loss"]
                                           if evaluate else None)
  before = evaluate_loss(src_program, restored.state["params"])
  with jax.set_mesh(job.mesh):
    state = compiled.fn(restored.state)
  after = evaluate_loss(job.program, state["params"])

  out_model, src_model = job.out_phase.config.model, src.phases[sp].config.model
  summary = {
      "source": os.fspath(source), "source_step": int(src_step), "step": int(step),
      "ops": [[op, a] for op, a in compiled.chain], "opt": opt, "seed": job.seed, "keep_step": keep_step,
      "source_parameters": model.count_params(src_program.abstract_state["params"]),
      "parameters": model.count_params(state["params"]),
      "source_total_flops": growth.total_flops(src.phases, src_step),
      # g_learn's fit: each of its steps a forward and backward pass of the grown model (as growth.total_flops counts)
      "growth_flops": compiled.learn_steps * flops.train_flops_per_step(out_model, target_config.data.seq_len,
                                                                        target_config.train.global_batch),
      "eval_loss_before": before, "eval_loss_after": after, "workdir": os.fspath(workdir), "checkpoints": None,
      "model": cfg_lib.describe(out_model), "source_model": cfg_lib.describe(src_model),
  }
  write(job, workdir, step, state, summary)
  return summary


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
  """The flags; `--config.` overrides (of the target) and `--flagfile` are split off first, as the CLI does."""
  p = cli.tool_parser("python -m jaxtrain.grow", USAGE, __doc__)
  p.add_argument("--from", dest="source", required=True, metavar="DIR", help="the trained run's workdir")
  p.add_argument("--to", required=True, metavar="CONFIG[:ARG]",
                 help="the target's config file (with --config.<field>=<value> overrides)")
  p.add_argument("--op", required=True, metavar="OP[,OP...]",
                 help=f"growth operators, applied left to right: {', '.join(growth.OPERATORS)}")
  p.add_argument("--workdir", required=True, help="the grown run's new workdir (must hold no checkpoints)")
  p.add_argument("--arg", action="append", default=[], metavar="[OP.]NAME=VALUE",
                 help="an operator argument, a Python literal (g=4, at=[0,3], layer_map=[0,0,1,1]); the ones "
                      "not given are inferred from the target's model")
  p.add_argument("--opt", default="reset", choices=growth.POLICIES,
                 help="the optimizer state: reset (a fresh one, default: G_stack's code), copy (MSG: moments "
                      "moved with the parameters, zero for new entries and copies, counts kept) or duplicate (as "
                      "copy, copies taking their source's moments: staged training)")
  p.add_argument("--keep_step", action="store_true",
                 help="keep the source's step (continue its data stream and the schedule there) instead of step 0")
  p.add_argument("--seed", type=int, help="the PRNG seed of fresh entries (default: the target's config.seed)")
  p.add_argument("--no_eval", action="store_true", help="skip the eval loss before and after growth")
  return cli.add_host_flags(p)


def print_summary(s: dict, to: str, overrides: list[str], workdir: str) -> None:
  """What was grown into what, the eval loss across it, the compute so far, and the command that trains on."""
  ops = ", ".join(f"{op}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for op, a in s["ops"])
  print(f"\ngrew {s['source']} (step {s['source_step']}: {s['source_model']}, {s['source_parameters'] / 1e6:.2f}M "
        f"parameters) by {ops}")
  print(f"into {s['workdir']} (step {s['step']}: {s['model']}, {s['parameters'] / 1e6:.2f}M parameters; "
        f"optimizer {s['opt']})")
  if s["eval_loss_before"] is not None:
    print(f"eval loss {s['eval_loss_before']:.4f} -> {s['eval_loss_after']:.4f}")
  fit = f" + {s['growth_flops']:.4g} for g_learn's fit" if s["growth_flops"] else ""
  print(f"compute so far: {s['source_total_flops']:.4g} FLOPs on the source{fit} (grow.json: add it to the grown "
        "run's total_flops at equal-compute comparisons)")
  over = " ".join(shlex.quote(f"--config.{o}") for o in overrides)
  print(f"train it on:  python -m jaxtrain --config={to} {over + ' ' if over else ''}--workdir={workdir}")


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 when the grown checkpoint is written, 2 for a command that cannot run (one line)."""
  cli.setup_logging()
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, overrides = cli.parse_tool_args(parser(), argv)
    target = cfg_lib.load(args.to, overrides)
    given = parse_args(args.arg)
    try:
      cli.start_jax(args)
    except cli.UsageError as e:
      raise ConfigError(str(e)) from None
    s = grow(args.source, target, args.op, args.workdir, given, opt=args.opt, keep_step=args.keep_step,
             seed=args.seed, evaluate=not args.no_eval)
  except (ConfigError, data.DataError, checkpoint.CheckpointError) as e:
    print(f"jaxtrain.grow: error: {e}", file=sys.stderr)
    return 2
  print_summary(s, args.to, overrides, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
