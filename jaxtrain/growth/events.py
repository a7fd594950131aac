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
                        layer's repeats, a split unit's copies), counts kept, new layers' counts 0 (AdamW with a
                        count per layer: optim.layer_counts): MSG's `transfer_states` and its new blocks' fresh
                        state (Yao et al., ICLR 2024, arXiv 2305.02869, github.com/cofe-ai/MSG)
    opt=duplicate       as copy, but a copy takes its source's moments too: staged training's depth growth (Shen
                        et al., ICML 2022, github.com/allenai/staged-training)
    lr=restart_warmup   warmup again to a new peak, then the schedule over what is left: G_stack's code, LiGO,
                        the multi-level framework (Zou et al., ICLR 2024)
    lr=continue         one schedule for the whole run: Apollo (Pan et al., AAAI 2024)
    lr=rewind           the base schedule rewound to its peak at the event: MSG

An event's `ramp_steps` T > 0 fades in what it adds, as MSG's masks do, with m = min(1, (t − s)/T) at train step t
after the event's step s: m = 0 (the small model's function) on the first step after it, 1 from step s + T on.
`Ramp` holds what the mask applies to, `ramp_at` gives the step's values, the train and eval steps apply them:

    new layers          output y·m + x·(1 − m), x the layer's input (prts' `msg.py` for G↑random): the layers the
                        operator's layer map gives no old layer of their own, fresh ones and repeats (core.repeats)
    expand_mlp's units  the new columns of W_in × m (SwiGLU's gate and up both): gelu(m·h) for GELU, as MSG's
                        BERT code masks the new FFN units' pre-activation (github.com/cofe-ai/MSG,
                        model_ex/bert_ex_v2.py, BertIntermediateEx.forward: `self.dense(x) * grow_mask_vec`, then
                        the activation), silu(m·g)·(m·u) for SwiGLU, as prts' MSG for LLaMA masks the output of
                        every linear into the new units, gate and up alike (prts_lit/scaling/msg.py, MsgLayer)
    add_heads' heads    the new heads' columns of W_Q and their new kv groups' of W_K, W_V × m: MSG's mask on the
                        new heads' q, k and v (bert_ex_v2.py, BertSelfAttentionEx.forward), so a new head adds
                        m·softmax(m²·s)·v through W_O; refused where new heads join old kv groups (their k, v are
                        the old heads') and with QK-norm (the norm undoes m·q, m·k)
    (both)              as parameter masks (`masked_params`), in the step: the same value and gradients as MSG's
                        masks on the projections' outputs, as those are linear in the columns. The new units' write
                        rows (W_down's, W_O's) are drawn from the init (`fresh_write`, the default under a ramp),
                        as every new entry of MSG's is (utils_ex_v2.py, expand_linear)
    split_mlp           refused: its copies already compute the small model's function
    expand_head_dim,    refused: MSG's masks on new hidden dims (LayerNorm's statistics over the new dims included)
    expand_d_model      are not implemented
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
# Width operators a ramp fades in: the weights that read the residual stream into their new units, each with its
# unit axis (core.param_axes' name), whose new columns the mask scales (MSG's masks on the units' pre-activations):
# W_in's (SwiGLU's gate and up) for MLP units; W_Q's for new heads, W_K's and W_V's for their new kv groups.
WIDTH_RAMPS = {"expand_mlp": ((("blocks", "mlp", "wi", "w"), "mlp"),),
               "add_heads": ((("blocks", "attn", "wq", "w"), "heads"), (("blocks", "attn", "wk", "w"), "kv_heads"),
                             (("blocks", "attn", "wv", "w"), "kv_heads"))}


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


def event_args(ev: dict) -> dict:
  """The operator's arguments from event `ev`: those it names; under a width mask ramp (ramp_steps on an op of
  WIDTH_RAMPS) `fresh_write` defaults to True: MSG draws every new entry, the new units' write rows included
  (github.com/cofe-ai/MSG, model_ex/utils_ex_v2.py, expand_linear), and its mask on their inputs makes that
  exact at m = 0."""
  args = {n: ev[n] for n in op_args(ev["op"]) if n in ev}
  if ev.get("ramp_steps") and ev["op"] in WIDTH_RAMPS:
    args.setdefault("fresh_write", True)
  return args


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
  """MSG's mask ramp after an event, m = min(1, (t − start)/steps): layer ℓ's gate is m where new[ℓ], else 1;
  each `masked` weight's new columns are × m (the inputs of new MLP units and of new heads' q, k, v)."""
  start: int                  # the event's step
  steps: int                  # T
  new: tuple                  # per layer of the grown model: whether it fades in
  masked: tuple = ()          # ((param path, axis, per index along it: whether it is new), ...): width's masks


def ramp_mask(ramp: Ramp, step) -> jax.Array:
  """float32 m at train step `step` (the state's step, before the update): 0 on the first step after the event, as
  MSG's mask (its `curr_step` counts the optimizer steps since growth), 1 from step start + steps on."""
  return jnp.clip(jnp.asarray(step - ramp.start, jnp.float32) / ramp.steps, 0.0, 1.0)


def layer_gate(ramp: Ramp, step) -> jax.Array:
  """float32[L]: each layer's gate at train step `step`: m where the layer is new, else 1."""
  return jnp.where(np.asarray(ramp.new, bool), ramp_mask(ramp, step), 1.0).astype(jnp.float32)


def ramp_at(ramp: Ramp | None, step) -> tuple[jax.Array | None, jax.Array | None]:
  """(layer gate or None, width mask m or None) at train step `step`: what the train and eval steps hand to the
  model (`Transformer(gate=)`) and to `masked_params`; (None, None) without a ramp, so the step is as without one."""
  if ramp is None:
    return None, None
  return (layer_gate(ramp, step) if any(ramp.new) else None), (ramp_mask(ramp, step) if ramp.masked else None)


def masked_params(ramp: Ramp | None, params, m):
  """`params` with each of the ramp's masked weights' new columns × m (MSG's width masks), others as they are.

  MSG multiplies the new units' projections by m: the FFN's pre-activation, gelu(m·h), and the new heads' q, k
  and v (github.com/cofe-ai/MSG, model_ex/bert_ex_v2.py, BertIntermediateEx and BertSelfAttentionEx.forward).
  jaxtrain's projections have no bias, and their μS multiplier, RoPE and the query multiplier are linear, so
  scaling the new columns of W_in, W_Q, W_K, W_V by m gives those masks, in value and in every gradient
  (∂L/∂W_col = m·xᵀ·∂L/∂h, as under MSG's mask). Old columns are × 1, bit for bit; so is everything at m = 1.
  """
  if ramp is None or not ramp.masked:
    return params
  out = params
  for path, axis, new in ramp.masked:
    w = _at(out, path)
    shape = [1] * w.ndim
    shape[axis] = len(new)
    scale = jnp.where(np.asarray(new, bool).reshape(shape), m, 1.0).astype(w.dtype)
    out = _replace(out, path, w * scale)
  return out


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _replace(tree, path, value):
  """A copy of the dict tree with the leaf at `path` replaced (the other leaves shared)."""
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


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
  """(The model config event `ev` grows `m` into, which of its layers are new (core.repeats), the Ramp's `masked`
  entries for a width operator of WIDTH_RAMPS), worked out on shapes alone (jax.eval_shape): nothing allocated."""
  args = event_args(ev)
  grown, key = {}, jax.random.key(0)  # concrete, outside the trace: split_mlp draws its unit map from it

  def shape_only(params, batches):
    grown["m"], new_params, grown["map"] = apply(m, params, ev["op"], args, key, batches, with_index_map=True)
    return new_params

  B, T = config.train.global_batch, config.data.seq_len
  batches = {k: jax.ShapeDtypeStruct((learn_steps(ev), B, T), jnp.int32) for k in ("inputs", "targets")}
  jax.eval_shape(shape_only, jax.eval_shape(lambda: model.init(m, jax.random.key(0))), batches)
  masked = []
  for path, name in WIDTH_RAMPS.get(ev["op"], ()):
    axis = _at(core.param_axes(grown["m"]), path).index(name)
    masked.append((path, axis, tuple(bool(i < 0) for i in _at(grown["map"], path).idx[axis])))
  return grown["m"], tuple(bool(x) for x in core.layer_sources(grown["map"])[1]), tuple(masked)


def _head_mask_errors(m_old, masked) -> str | None:
  """Why MSG's head mask (m on a new head's q, k and v) cannot apply to add_heads on `m_old` (`masked`: the Ramp's
  entries for W_Q, W_K, W_V), or None: each new query head needs a new kv group of its own heads."""
  if m_old.qk_norm:
    return ("QK-norm undoes MSG's mask on the new heads' q and k (norm(m·q) = q): drop ramp_steps or "
            "model.qk_norm")
  (_, _, new_q), (_, _, new_kv), _ = masked
  R = len(new_q) // len(new_kv)  # the grown model's heads per kv group
  if any(new_q[h] != new_kv[h // R] for h in range(len(new_q))):
    R_old = m_old.num_heads // (m_old.num_kv_heads or m_old.num_heads)
    return (f"new heads join old kv groups, whose k and v the old heads share, so MSG's mask on the new heads' k "
            f"and v cannot apply: add whole kv groups (num_heads = {R_old}·num_kv_heads) or drop ramp_steps")
  return None


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
      grown, new_layers, masked = _grown_model(config, phases[-1].config.model, ev)
    except (ConfigError, TypeError) as e:
      raise ConfigError(f"growth.events[{k - 1}] ({ev['op']} at step {ev['step']}): {e}") from None
    ramp = None
    if ev["ramp_steps"]:
      where = f"growth.events[{k - 1}] ({ev['op']} at step {ev['step']})"
      if ev["op"] == "split_mlp":
        raise ConfigError(f"{where}: split_mlp's new units are copies that already compute the small model's "
                          "function (nothing to fade in; MSG masks fresh units): drop ramp_steps")
      if not any(new_layers) and not masked:
        raise ConfigError(f"{where}: ramp_steps fades in new layers (the depth operators), new MLP units "
                          f"(expand_mlp) and new heads (add_heads); {ev['op']}'s new hidden dims have no mask "
                          "(not implemented): drop ramp_steps")
      if ev["op"] == "add_heads" and (why := _head_mask_errors(phases[-1].config.model, masked)):
        raise ConfigError(f"{where}: {why}")
      ramp = Ramp(ev["step"], ev["ramp_steps"], new_layers, masked)
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
             counts kept. MSG's PyTorch AdamW keeps a count per parameter, so its new blocks restart their bias
             correction at 0 and its old blocks go on: a run with a depth event under copy uses AdamW with a count
             per layer (optim.layer_counts, optim.ScaleByAdamLayersState), whose new layers (core.layer_sources)
             get count 0 here and old layers keep theirs, so every update is MSG's. Width growth keeps each
             tensor's count, as MSG does (it expands its tensors and their state in place, `transfer_states`).
  duplicate: as copy, but a copy takes its source's moments too (staged training's depth growth, Shen et al. 2022):
             the moments follow the values' index map exactly, and a copied layer its source's count.
  Moments are moved, not rescaled with the parameters. Every subtree of the state shaped like the parameters is a
  moment; other leaves are counts (a per-layer count follows the layers).
  """
  if policy not in POLICIES:
    raise ConfigError(f"optimizer growth policy {policy!r} is not one of {POLICIES}")
  index_map_in = index_map
  if policy == "copy":
    index_map = core.without_copies(index_map)
  is_map = lambda x: isinstance(x, core.AxisMap)
  structure = jax.tree.structure(index_map, is_leaf=is_map)
  is_moment = lambda x: isinstance(x, dict) and jax.tree.structure(x) == structure

  def layer_count(count_L):  # ScaleByAdamLayersState's: new layers 0 (copy), copies their source's (duplicate)
    src, new = core.layer_sources(index_map_in)
    if policy == "reset":
      return jnp.zeros(src.shape, count_L.dtype)
    keep = src >= 0 if policy == "duplicate" else ~new
    return jnp.where(keep, count_L[np.maximum(src, 0)], 0).astype(count_L.dtype)

  def one(x):
    if isinstance(x, optim.ScaleByAdamLayersState):
      return optim.ScaleByAdamLayersState(one(x.count), layer_count(x.layer_count), one(x.mu), one(x.nu))
    if is_moment(x):
      if policy == "reset":
        return jax.tree.map(lambda a, n: jnp.zeros(n.shape, a.dtype), x, new_params_abstract)
      return jax.tree.map(lambda a, am, n: core.regrid(a, am, jnp.zeros(n.shape, a.dtype)), x, index_map,
                          new_params_abstract, is_leaf=is_map)
    return jnp.zeros_like(x) if policy == "reset" else x

  is_layers = lambda x: isinstance(x, optim.ScaleByAdamLayersState)
  return jax.tree.map(one, old_opt_state, is_leaf=lambda x: is_moment(x) or is_layers(x))


def grow_state(phases: list[Phase], k: int, state: dict, batches=None) -> dict:
  """The train state of phase k from phase k-1's, at k's event: a pure function, jitted on the mesh by the trainer.

  `batches`: for an operator that learns (g_learn), the `learn_steps` batches after the event, stacked.
  Parameters by the event's operator; the optimizer state by its `opt` policy (`grow_opt_state`); step and rng
  kept; FP8 delayed scaling's scales and histories start afresh for the new shapes.
  """
  ev, m_old, m_new = phases[k].event, phases[k - 1].config.model, phases[k].config.model
  args = event_args(ev)
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
