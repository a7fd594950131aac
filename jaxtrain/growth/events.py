"""Growth mid-run: a run's schedule of growth events, and the train-state transform at each one.

`config.growth.events` lists events: at the end of `step`, apply operator `op` with its arguments, under an
optimizer-state policy (`opt`) and a learning-rate policy (`lr`). `plan(config)` checks them and works out each
phase's model and schedule without touching an array; the trainer saves the small model at an event's step,
jits `grow_state` from the old state's shardings to the new one's, and trains on. `total_flops` counts each
phase's steps at its own model's cost, so runs compare at equal compute.

The policies are the papers':

    opt=reset           a fresh optimizer (zero moments, count 0): G_stack's code (Du et al., NeurIPS 2024, arXiv
                        2405.15319, github.com/tongxuluo/prts), LiGO (Wang et al., ICLR 2023, arXiv 2303.00980)
    opt=copy            old moments moved with the parameters, zeros for new entries and for copies (a stacked
                        layer's repeats, a split unit's copies), counts kept: MSG's `transfer_states` and its new
                        blocks' fresh state (Yao et al., ICLR 2024, arXiv 2305.02869, github.com/cofe-ai/MSG)
    opt=duplicate       as copy, but a copy takes its source's moments too: staged training's depth growth (Shen
                        et al., ICML 2022, github.com/allenai/staged-training)
    lr=restart_warmup   warmup again to a new peak, then the schedule over what is left: G_stack's code, LiGO,
                        the multi-level framework (Zou et al., ICLR 2024)
    lr=continue         one schedule for the whole run: Apollo (Pan et al., AAAI 2024)
    lr=rewind           the base schedule rewound to its peak at the event: MSG

An event's `ramp_steps` T > 0 fades its new layers in as MSG does (its mask; prts' `msg.py` for G↑random): a new
layer's output is y·m + x·(1 − m), x its input, m = min(1, (t − s)/T) at train step t after the event's step s, so
m = 0 (the small model's function) on the first step after it and 1 from step s + T on. New layers are those the
operator's layer map gives no old layer of their own: fresh ones and repeats (core.repeats).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import flops, model, optim
from jaxtrain.config import ConfigError
from jaxtrain.growth import core, depth, width

OPERATORS = {"stack": depth.stack, "g_zero": depth.g_zero, "g_learn": depth.g_learn, "g_random": depth.g_random,
             "insert_layers": depth.insert_layers, "expand_mlp": width.expand_mlp, "split_mlp": width.split_mlp,
             "add_heads": width.add_heads, "expand_head_dim": width.expand_head_dim,
             "expand_d_model": width.expand_d_model}
POLICIES = ("reset", "copy", "duplicate")  # growth.opt: the optimizer state
LR_POLICIES = ("restart_warmup", "continue", "rewind")  # growth.lr: the learning-rate schedule
# beside the operator's own arguments
EVENT_FIELDS = ("step", "op", "opt", "lr", "warmup_steps", "peak_lr", "ramp_steps")
GROWTH_KEY_SALT = 7  # event k draws its fresh entries from fold_in(fold_in(key(seed), 7), k): not init's, not rng's


# ---------------------------------------------------------------- operators by name


def op_args(op: str) -> list[str]:
  """The keyword arguments operator `op` takes from an event (its signature, less what the trainer passes)."""
  params = inspect.signature(OPERATORS[op]).parameters
  return [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "with_index_map"]


def apply(m, params, op: str, args: dict, key: jax.Array | None = None, batches=None, *,
          with_index_map: bool = False):
  """Operator `op` (a name in OPERATORS) on (model config, params) with `args`; `key` for the ones that draw,
  `batches` for the one that learns (g_learn: {"inputs", "targets"} of shape [steps, B, T])."""
  fn = OPERATORS[op]
  extra = {"key": (key,), "batches": (batches,)}.get(list(inspect.signature(fn).parameters)[2], ())
  return fn(m, params, *extra, **args, with_index_map=with_index_map)


def apply_chain(m, params, chain, keys, batches=None):
  """Operators [(op, args)] in turn, op i drawing from keys[i]: (new model config, new params, composed index map)."""
  index_map = None
  for (op, args), key in zip(chain, keys):
    m, params, imap = apply(m, params, op, args, key, batches, with_index_map=True)
    index_map = imap if index_map is None else core.compose_index_maps(index_map, imap)
  return m, params, index_map


def learn_steps(event: dict) -> int:
  """The batches an event's operator trains on before the grown model does (g_learn's `fit_steps`; else 0)."""
  if "batches" not in inspect.signature(OPERATORS[event["op"]]).parameters:
    return 0
  return event.get("fit_steps", inspect.signature(OPERATORS[event["op"]]).parameters["fit_steps"].default)


def event_key(seed: int, k: int) -> jax.Array:
  """The PRNG key of growth event k (1-based) of a run seeded `seed`: the same on every host and every resume."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), GROWTH_KEY_SALT), k)


# ---------------------------------------------------------------- the schedule


class Ramp(NamedTuple):
  """MSG's mask ramp after an event: layer ℓ's gate is m = min(1, (t − start)/steps) where new[ℓ], else 1."""
  start: int                  # the event's step
  steps: int                  # T
  new: tuple                  # per layer of the grown model: whether it fades in


def layer_gate(ramp: Ramp, step) -> jax.Array:
  """float32[L]: each layer's gate at train step `step` (the state's step, before the update): 0 on the first step
  after the event, as MSG's mask (its `curr_step` counts the optimizer steps since growth)."""
  m = jnp.clip(jnp.asarray(step - ramp.start, jnp.float32) / ramp.steps, 0.0, 1.0)
  return jnp.where(np.asarray(ramp.new, bool), m, 1.0).astype(jnp.float32)


class Phase(NamedTuple):
  """A stretch of a run between growth events: steps start+1 .. the next phase's start train `config.model`."""
  start: int                  # the step whose end began it (0 for the first phase)
  config: ml_collections.ConfigDict  # the run's config with this phase's model (what its checkpoints hold)
  event: dict | None          # the event that began it, defaults filled in (None for the first phase)
  lr_schedule: Callable       # step -> peak learning rate, over the run's global steps
  peak_lr: float
  ramp: Ramp | None = None    # the event's mask ramp (ramp_steps > 0), else None: the step has no gate


def check(config, target=None) -> None:
  """The growth section's rules, from the config alone (`target`, the hardware, is not needed): one-line ConfigError.

  The section's policies, then each event's fields (`plan` goes on to apply the operators abstractly).
  """
  del target
  for key, choices in (("opt", POLICIES), ("lr", LR_POLICIES)):
    if config.growth[key] not in choices:
      raise ConfigError(f"growth.{key}={config.growth[key]!r} is not one of {choices}")
  for k, ev in enumerate(config.growth.events or (), 1):
    _event(config, k, ev)


def _event(config, k: int, ev) -> dict:
  """Event k (1-based) of config.growth.events, checked, with the growth section's defaults filled in."""
  g, where = config.growth, f"growth.events[{k - 1}]"
  if not isinstance(ev, dict) or "step" not in ev or "op" not in ev:
    raise ConfigError(f"{where}={ev!r} must be a dict with at least 'step' and 'op', e.g. "
                      "{'step': 1500, 'op': 'stack', 'g': 4}")
  if ev["op"] not in OPERATORS:
    raise ConfigError(f"{where}: unknown op {ev['op']!r}; choose one of {sorted(OPERATORS)}")
  known = set(EVENT_FIELDS) | set(op_args(ev["op"]))
  unknown = sorted(set(ev) - known)
  if unknown:
    raise ConfigError(f"{where}: {ev['op']} takes {op_args(ev['op'])} (and {list(EVENT_FIELDS)}), not {unknown}")
  out = {"opt": g.opt, "lr": g.lr, "warmup_steps": g.warmup_steps, "peak_lr": g.peak_lr, "ramp_steps": 0, **ev}
  if out["opt"] not in POLICIES:
    raise ConfigError(f"{where}: opt={out['opt']!r} is not one of {POLICIES}")
  if out["lr"] not in LR_POLICIES:
    raise ConfigError(f"{where}: lr={out['lr']!r} is not one of {LR_POLICIES}")
  if not isinstance(out["ramp_steps"], int) or out["ramp_steps"] < 0:
    raise ConfigError(f"{where}: ramp_steps={out['ramp_steps']!r} must be an integer >= 0 (0: no mask ramp)")
  if out["warmup_steps"] < 0:
    out["warmup_steps"] = config.optim.warmup_steps
  if not out["peak_lr"] > 0:
    out["peak_lr"] = config.optim.lr
  if not isinstance(out["step"], int) or not 0 < out["step"] < config.train.steps:
    raise ConfigError(f"{where}: step={out['step']!r} must be an integer in [1, train.steps={config.train.steps}): "
                      "growth happens at the end of a step, with steps left to train the grown model")
  return out


def _lr_schedules(config, events) -> list[tuple[Callable, float]]:
  """(schedule over global steps, its peak) per phase, under each event's lr policy."""
  o, total = config.optim, optim.schedule_length(config)
  base = optim.schedule(o, total)
  out = [(base, o.lr)]
  for ev in events:
    s = ev["step"]
    if ev["lr"] == "continue":  # Apollo: one schedule for the whole run
      out.append(out[-1])
    elif ev["lr"] == "rewind":  # MSG: the base schedule rewound to its peak (the end of warmup) at the event
      out.append((lambda t, s=s: base(o.warmup_steps + t - s), o.lr))
    else:  # G_stack's code, LiGO, multi-level: warmup again from 0 to a new peak, then decay over what is left
      fresh = ml_collections.ConfigDict(o.to_dict())
      fresh.lr, fresh.warmup_steps = ev["peak_lr"], ev["warmup_steps"]
      after = optim.schedule(fresh, max(total - s, 1))
      out.append((lambda t, s=s, after=after: after(t - s), ev["peak_lr"]))
  return out


def _grown_model(config, m, ev: dict):
  """(The model config event `ev` grows `m` into, which of its layers are new (core.repeats)), worked out on shapes
  alone (jax.eval_shape): nothing allocated."""
  args = {n: ev[n] for n in op_args(ev["op"]) if n in ev}
  grown, key = {}, jax.random.key(0)  # concrete, outside the trace: split_mlp draws its unit map from it

  def shape_only(params, batches):
    grown["m"], new_params, grown["map"] = apply(m, params, ev["op"], args, key, batches, with_index_map=True)
    return new_params

  B, T = config.train.global_batch, config.data.seq_len
  batches = {k: jax.ShapeDtypeStruct((learn_steps(ev), B, T), jnp.int32) for k in ("inputs", "targets")}
  jax.eval_shape(shape_only, jax.eval_shape(lambda: model.init(m, jax.random.key(0))), batches)
  is_map = lambda x: isinstance(x, core.AxisMap)
  layer_maps = [a.idx[0] for a in jax.tree.leaves(grown["map"]["blocks"], is_leaf=is_map)]  # axis 0: layers
  return grown["m"], tuple(bool(x) for x in np.any([core.repeats(i) for i in layer_maps], axis=0))


def plan(config) -> list[Phase]:
  """The phases of a run under config.growth.events: each event checked and its model worked out, abstractly.

  Raises ConfigError (one line: the event, the problem, the fix) for an operator that cannot apply, before
  anything compiles; an event whose step is not after the previous one's, or not before train.steps, too.
  """
  check(config)
  events = [_event(config, k, ev) for k, ev in enumerate(config.growth.events or (), 1)]
  for a, b in zip(events, events[1:]):
    if b["step"] <= a["step"]:
      raise ConfigError(f"growth.events: step {b['step']} follows step {a['step']}: list events in increasing steps")
  for k, (a, b) in enumerate(zip(events, events[1:]), 1):
    if a["ramp_steps"] and b["step"] < a["step"] + a["ramp_steps"]:
      raise ConfigError(f"growth.events[{k}] at step {b['step']} falls inside event {k - 1}'s mask ramp (steps "
                        f"{a['step']}-{a['step'] + a['ramp_steps']}): grow after the ramp ends or shorten ramp_steps")
  schedules = _lr_schedules(config, events)
  phases = [Phase(0, config, None, *schedules[0])]
  for k, ev in enumerate(events, 1):
    try:
      grown, new_layers = _grown_model(config, phases[-1].config.model, ev)
    except (ConfigError, TypeError) as e:
      raise ConfigError(f"growth.events[{k - 1}] ({ev['op']} at step {ev['step']}): {e}") from None
    ramp = None
    if ev["ramp_steps"]:
      if not any(new_layers):
        raise ConfigError(f"growth.events[{k - 1}] ({ev['op']} at step {ev['step']}): ramp_steps fades in new "
                          f"layers and {ev['op']} adds none (width masks are not implemented): drop ramp_steps")
      ramp = Ramp(ev["step"], ev["ramp_steps"], new_layers)
    c = ml_collections.ConfigDict(config.to_dict())
    c.model = grown
    phases.append(Phase(ev["step"], c, ev, *schedules[k], ramp))
  return phases


@contextlib.contextmanager
def event_errors(phase: Phase):
  """A ConfigError raised inside names the growth event that made `phase`'s model (none for the first phase)."""
  try:
    yield
  except ConfigError as e:
    if phase.event is None:
      raise
    raise ConfigError(f"after growth event {phase.event['op']} at step {phase.event['step']}: {e}") from None


def phase_at(phases: list[Phase], step: int) -> int:
  """The index of the phase whose model the state at the end of `step` has: an event's own step is before it."""
  return sum(p.start < step for p in phases[1:])


# ---------------------------------------------------------------- the train state at an event


def grow_opt_state(policy: str, old_opt_state, new_params_abstract, index_map):
  """The optimizer state for the grown parameters, the optax tree kept (adamw's mu and nu, lion's mu, ...).

  reset:     a fresh state (zero moments, count 0), as G_stack's code, LiGO and the multi-level framework do;
             equal to `tx.init(new_params)` for jaxtrain's optimizers.
  copy:      MSG (`transfer_states`, new blocks in new param groups): every old entry's moments moved with it,
             0 for new entries and for copies (a stacked layer's repeats, a split unit's copies: core.repeats),
             counts kept. MSG's PyTorch AdamW keeps a count per parameter, so its new blocks also restart their
             bias correction at 0; optax's one shared count cannot, so (with the count past ~100 steps) their k-th
             update is (1 − β1^k)/√(1 − β2^k) times MSG's: 0.447 at k = 1, 1.10 at k = 20, ≈ 1 from k ≈ 100 (β =
             (0.9, 0.95)).
  duplicate: as copy, but a copy takes its source's moments too (staged training's depth growth, Shen et al. 2022):
             the moments follow the values' index map exactly.
  Moments are moved, not rescaled with the parameters. Every subtree of the state shaped like the parameters is a
  moment; other leaves are counts.
  """
  if policy not in POLICIES:
    raise ConfigError(f"optimizer growth policy {policy!r} is not one of {POLICIES}")
  if policy == "copy":
    index_map = core.without_copies(index_map)
  is_map = lambda x: isinstance(x, core.AxisMap)
  structure = jax.tree.structure(index_map, is_leaf=is_map)
  is_moment = lambda x: isinstance(x, dict) and jax.tree.structure(x) == structure

  def one(x):
    if is_moment(x):
      if policy == "reset":
        return jax.tree.map(lambda a, n: jnp.zeros(n.shape, a.dtype), x, new_params_abstract)
      return jax.tree.map(lambda a, am, n: core.regrid(a, am, jnp.zeros(n.shape, a.dtype)), x, index_map,
                          new_params_abstract, is_leaf=is_map)
    return jnp.zeros_like(x) if policy == "reset" else x

  return jax.tree.map(one, old_opt_state, is_leaf=is_moment)


def grow_state(phases: list[Phase], k: int, state: dict, batches=None) -> dict:
  """The train state of phase k from phase k-1's, at k's event: a pure function, jitted on the mesh by the trainer.

  `batches`: for an operator that learns (g_learn), the `learn_steps` batches after the event, stacked.
  Parameters by the event's operator; the optimizer state by its `opt` policy (`grow_opt_state`); step and rng
  kept; FP8 delayed scaling's scales and histories start afresh for the new shapes.
  """
  ev, m_old, m_new = phases[k].event, phases[k - 1].config.model, phases[k].config.model
  args = {n: ev[n] for n in op_args(ev["op"]) if n in ev}
  with jax.ensure_compile_time_eval():  # a concrete key inside the trainer's jit: split_mlp draws its map from it
    key = event_key(phases[0].config.seed, k)
  _, params, index_map = apply(m_old, state["params"], ev["op"], args, key, batches, with_index_map=True)
  opt_state = grow_opt_state(ev["opt"], state["opt_state"], params, index_map)
  new = {"step": state["step"], "params": params, "opt_state": opt_state, "rng": state["rng"]}
  if "fp8" in state:
    new["fp8"] = model.fp8_state(m_new)
  return new


def total_flops(phases: list[Phase], step: int) -> float:
  """Model FLOPs of the run's first `step` steps, each phase's steps at its model's cost (flops.py), and of the
  operators that learn (g_learn: each of its steps a forward and backward pass of the grown model)."""
  ends = [p.start for p in phases[1:]] + [step]
  out = 0.0
  for p, end in zip(phases, ends):
    c = p.config
    per_step = flops.train_flops_per_step(c.model, c.data.seq_len, c.train.global_batch)
    learning = learn_steps(p.event) if p.event and step > p.start else 0
    out += (max(min(end, step) - p.start, 0) + learning) * per_step
  return out
