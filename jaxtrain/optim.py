"""The optimizer: AdamW or Lion, per-parameter-group learning rates, weight decay, clipping and a schedule.

Every optimizer the trainer uses is built here, so the per-parameter-group rules
(learning rates, decay masks, ⊥Grad's projection units) have one home. The
groups come from what the model declares for each parameter (`model.ParamInfo`:
role and fan-in), never from names or shapes, so they hold at any width and on
any mesh. For parameter p with role r and fan-in n, peak learning rate η, the
rate at step t is η·s(t)·c(p) with s the schedule's shape (warmup, then cosine,
WSD or constant; s ≤ 1) and c the rule's multiplier (`optim.lr_rule`):

    none   c = 1                                   one η for everything
    mus    c = √(n_base/n) for hidden matrices,    μnit Scaling (Narayan et al. 2025, arXiv 2502.05967,
           1 for embedding, head and norms           Table 2: hidden-layer LR ∝ 1/√fan_in); n_base is the same
                                                     matrix's fan-in in the model at width d_base (`base_model`)
    sp     c = d_base/d_model for all              the standard-parametrization baseline the paper transfers with

Weight decay (`optim.weight_decay` λ; embedding, hidden and head matrices, never
norm gains or biases; `optim.weight_decay_mode`):

    coupled      p ← p − η·s(t)·c(p)·λ·p      optax/PyTorch AdamW, Lion's paper: decay scales with the learning rate
    independent  p ← p·(1 − λ·s(t))           "fully decoupled" (Wortsman et al. 2024, arXiv 2309.14322; μS A.1.2):
                                              the same λ means the same thing at every width and learning rate

The update (`optim.name`): AdamW's m̂/(√v̂ + ε) or Lion's sign((1−β1)·g + β1·m),
m ← β2·m + (1−β2)·g (Chen et al. 2023, arXiv 2302.06675), or Muon (jaxtrain/muon.py): the hidden matrices
(role `hidden`) take Newton–Schulz orthogonalized Nesterov momentum, one matrix per layer and per fused
projection, times the shape factor of `optim.muon.scale`; embedding, head and norms take AdamW with optim.b1,
b2, eps. A hidden matrix's c(p) is the rule's multiplier times `optim.muon.lr_scale`; the decay follows the
same rules as for every optimizer (with η·c, not the shape factor: Keller's and Moonlight's p ← p·(1 − η·λ)).

The learning rate is a function of the train step, passed to each update
(`tx.update(grads, opt_state, params, step=state["step"])`), not of a count kept
in the optimizer state: a skipped update (`train.on_nonfinite=skip`) keeps the
optimizer state, yet the applied learning rate stays the one logged for the step.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtrain import config as cfg_lib
from jaxtrain import model, muon, sharding
from jaxtrain.orthograd import orthograd

log = logging.getLogger(__name__)

NAMES = ("adamw", "lion", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
LR_RULES = ("none", "mus", "sp")
DECAY_MODES = ("coupled", "independent")
DECAYED_ROLES = ("embedding", "hidden", "head")  # norm gains and biases are never decayed
ROLES = DECAYED_ROLES + ("norm",)
# Defaults where optim.b1, b2, eps are None: the optimizers' own (AdamW as jaxtrain always had; Lion's paper).
# Muon's: those of its AdamW group (embedding, head, norms); its own momentum is optim.muon.beta.
DEFAULTS = {"adamw": dict(b1=0.9, b2=0.95, eps=1e-8), "lion": dict(b1=0.9, b2=0.99),
            "muon": dict(b1=0.9, b2=0.95, eps=1e-8)}
# Tensors that hold several parameters: params path -> the axis (of the per-layer shape) that indexes them.
# SwiGLU's wi is [gate, up] (model.Mlp); ⊥Grad projects each on its own (jaxtrain/orthograd.py).
FUSED = {("blocks", "mlp", "wi", "w"): 1}


def schedule_length(config) -> int:
  """The number of steps the schedule is laid over: optim.schedule_steps, or train.steps if 0."""
  return config.optim.schedule_steps or config.train.steps


def schedule(o, steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine, WSD (stable then linear decay) or constant; past `steps`, the end value."""
  peak, floor, warm = o.lr, o.lr * o.min_lr_ratio, o.warmup_steps
  warmup = optax.linear_schedule(0.0, peak, max(warm, 1))
  if o.schedule == "cosine":
    rest = optax.cosine_decay_schedule(peak, max(steps - warm, 1), alpha=o.min_lr_ratio)
  elif o.schedule == "wsd":
    decay = int(round(o.decay_fraction * steps))
    stable = max(steps - warm - decay, 0)
    rest = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, max(decay, 1))], [stable])
  elif o.schedule == "constant":
    rest = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {o.schedule!r}")
  return optax.join_schedules([warmup, rest], [warm])


def check(config, target: cfg_lib.Target) -> None:  # pylint: disable=unused-argument
  """What the optimizer cannot run with (one line each); a run shorter than its schedule is only warned of."""
  o, train_steps = config.optim, config.train.steps
  cfg_lib.check_choices(config, {"optim.schedule": SCHEDULES, "optim.name": NAMES, "optim.lr_rule": LR_RULES,
                                 "optim.weight_decay_mode": DECAY_MODES})
  cfg_lib.check_positive({"optim.lr": o.lr} | ({"optim.eps": o.eps} if o.eps is not None else {}))
  cfg_lib.check_non_negative({"optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
                              "optim.schedule_steps": o.schedule_steps, "optim.clip_norm": o.clip_norm})
  for key, v in {"optim.b1": o.b1, "optim.b2": o.b2}.items():
    if v is not None and not 0 <= v < 1:
      raise cfg_lib.ConfigError(f"{key}={v} must be in [0, 1)")
  cfg_lib.check_unit_interval({"optim.decay_fraction": o.decay_fraction, "optim.min_lr_ratio": o.min_lr_ratio})
  steps, name = o.schedule_steps or train_steps, ("optim.schedule_steps" if o.schedule_steps else "train.steps")
  if o.schedule_steps:  # a schedule length set on purpose must hold its warmup and decay
    if o.warmup_steps > steps:
      raise cfg_lib.ConfigError(f"optim.warmup_steps={o.warmup_steps} exceeds {name}={steps}")
    if o.schedule == "wsd" and o.warmup_steps + round(o.decay_fraction * steps) > steps:
      raise cfg_lib.ConfigError(f"optim.schedule=wsd: warmup_steps={o.warmup_steps} plus the decay "
                                f"(decay_fraction·steps={round(o.decay_fraction * steps)}) exceed {name}={steps}")
  for message in schedule_caveats(o, train_steps):
    log.warning(message)
  if o.name == "lion" and o.eps is not None:
    raise cfg_lib.ConfigError(
        f"optim.eps={o.eps}: Lion has no ε (its update is a sign); leave optim.eps unset for lion")
  if o.name == "muon":
    check_muon(config)
  if o.weight_decay_mode == "independent" and not o.weight_decay < 1:
    raise cfg_lib.ConfigError(
        f"optim.weight_decay={o.weight_decay} with weight_decay_mode=independent multiplies weights by 1 - λ each "
        "step: λ must be < 1 (coupled λ = 0.1 at η = 1e-3 is 1e-4 here)")


def check_muon(config) -> None:
  """optim.muon's fields, and every parameter of the model readable by Muon (a role; hidden ones as matrices)."""
  mu = config.optim.muon
  cfg_lib.check_choices(config, {"optim.muon.scale": muon.SCALES})
  cfg_lib.check_positive({"optim.muon.lr_scale": mu.lr_scale, "optim.muon.ns_steps": mu.ns_steps})
  if not 0 <= mu.beta < 1:
    raise cfg_lib.ConfigError(f"optim.muon.beta={mu.beta} must be in [0, 1)")
  if config.growth.events:  # growth.grow_opt_state moves moments shaped like the params; Muon's are masked
    raise cfg_lib.ConfigError("optim.name=muon cannot grow the model mid-run yet (growth.events): grow with "
                              "optim.name=adamw or lion, or grow offline (python -m jaxtrain.grow --opt reset)")
  _, abstract, axes = model.abstract(config.model)
  try:
    muon_matrices(model.param_info(config.model), abstract, axes)
  except ValueError as e:
    raise cfg_lib.ConfigError(str(e)) from None


def schedule_caveats(o, train_steps: int) -> list[str]:
  """Warnings (not errors) for a run shorter than its own warmup or WSD decay, as a quick smoke test is.

  The schedule (optim.schedule) is laid over train.steps as usual and simply cut off:
  the messages give the learning rate of the last step, that of `schedule(o, steps)(steps - 1)`.
  """
  steps, warm, out = train_steps, o.warmup_steps, []
  if o.schedule_steps:
    return out
  end = float(schedule(o, steps)(steps - 1))  # the last update's learning rate, from the schedule itself
  if warm > steps:
    out.append(f"optim.warmup_steps={warm} exceeds train.steps={steps}: running anyway, inside the warmup: the "
               f"learning rate rises as for {warm} steps and ends at {end:.3g} "
               f"({steps - 1}/{warm} of optim.lr={o.lr:g}), never decaying; lower optim.warmup_steps for the full "
               "curve")
  decay = round(o.decay_fraction * steps)
  if o.schedule == "wsd" and warm <= steps and warm + decay > steps:
    out.append(f"optim.schedule=wsd: warmup_steps={warm} plus the decay (decay_fraction·steps={decay}) exceed "
               f"train.steps={steps}: running anyway; the decay starts right after warmup and is cut off, ending at "
               f"{end:.3g} rather than min_lr_ratio·lr={o.lr * o.min_lr_ratio:.3g}")
  return out


def hyper(o) -> dict:
  """b1, b2 and (AdamW) eps of `o`, with the optimizer's defaults where they are None."""
  return {k: (o[k] if o[k] is not None else v) for k, v in DEFAULTS[o.name].items()}


def _check_roles(info_tree):
  for i in jax.tree.leaves(info_tree, is_leaf=model.is_info):
    if i.role not in ROLES:
      raise ValueError(f"parameter role {i.role!r} has no optimizer rule; add it to jaxtrain/optim.py ({ROLES})")


def base_model(m, d_base: int):
  """The model config `m` at width d_base: d_model, and head_dim and mlp_dim where set, scaled by d_base/d_model.

  μS transfers a learning rate tuned at d_base; each hidden matrix's rate is scaled by √(its fan-in there / its
  fan-in here), so at d_base every multiplier is 1 and, when all widths grow together, it is √(d_base/d_model).
  """
  b = ml_collections.ConfigDict(m.to_dict())
  r = d_base / m.d_model
  b.d_model = d_base
  for k in ("head_dim", "mlp_dim"):
    if m[k] is not None:
      b[k] = max(1, round(m[k] * r))
  return b


def lr_multipliers(rule: str, info_tree, d_model: int, d_base: int, base_info_tree=None):
  """c(p) of each parameter (Python floats, a tree like the params) under learning-rate rule `rule`.

  `base_info_tree` (rule `mus`): the ParamInfo of the same model at width d_base (`base_model`).
  """
  _check_roles(info_tree)

  def one(i, b):
    if rule == "none":
      return 1.0
    if rule == "sp":
      return d_base / d_model
    if rule == "mus":
      return math.sqrt(b.fan_in / i.fan_in) if i.role == "hidden" else 1.0
    raise ValueError(f"unknown optim.lr_rule {rule!r}; choose one of {LR_RULES}")

  base = base_info_tree if base_info_tree is not None else info_tree
  return jax.tree.map(one, info_tree, base, is_leaf=model.is_info)


def decay_mask(info_tree):
  """True for the parameters weight decay applies to: embedding, hidden and head matrices, not norms."""
  _check_roles(info_tree)
  return jax.tree.map(lambda i: i.role in DECAYED_ROLES, info_tree, is_leaf=model.is_info)


def projection_units(axes_tree):
  """⊥Grad's units per tensor (orthograd.project): the `layers` axis of stacked blocks and FUSED tensors' axes."""
  units = jax.tree.map(lambda a: tuple(i for i, n in enumerate(a) if n == "layers"), axes_tree,
                       is_leaf=sharding.is_axes)
  for path, axis in FUSED.items():
    node = units
    try:
      for k in path[:-1]:
        node = node[k]
      layer_axes = node[path[-1]]
    except (KeyError, TypeError):
      raise ValueError(f"optim.FUSED names {'/'.join(path)}, which the model no longer has: update it") from None
    node[path[-1]] = tuple(sorted({*layer_axes, axis + len(layer_axes)}))
  return units


def muon_matrices(info_tree, abstract_params, axes_tree):
  """A tree like the params: muon.Matrix for each hidden tensor (per layer, FUSED tensors split), None elsewhere.

  Muon or AdamW is chosen by each parameter's declared role; a parameter with none is an error.
  """
  batch_axes = projection_units(axes_tree)  # the stacked layers axis and FUSED axes: one matrix per index
  is_leaf = lambda x: x is None or model.is_info(x)
  paths, treedef = jax.tree_util.tree_flatten_with_path(info_tree, is_leaf=is_leaf)
  shapes, units = treedef.flatten_up_to(abstract_params), treedef.flatten_up_to(batch_axes)
  out = []
  for (path, info), shape, unit in zip(paths, shapes, units):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    role = getattr(info, "role", None)
    if role not in ROLES:
      raise ValueError(f"optim.name=muon: parameter {name} has no optimizer role ({role!r}); declare "
                       f"info=model.ParamInfo(role, fan_in) with role in {ROLES} where jaxtrain/model.py makes it")
    out.append(muon.matrix_dims(shape.shape, info.fan_in, unit, name) if role == "hidden" else None)
  return jax.tree_util.tree_unflatten(treedef, out)


# The growth operators that add layers (jaxtrain/growth/depth.py; tests/test_growth.py checks the list).
LAYER_OPS = ("stack", "g_zero", "g_learn", "g_random", "insert_layers")


def layer_counts(config) -> bool:
  """Whether AdamW keeps a step count per layer of the stacked blocks (`scale_by_adam_layers`): only where the
  run's growth events need it, a depth event under opt=copy (MSG's new blocks restart their bias correction).

  Lion has no bias correction (its count is unused) and Muon refuses growth, so only AdamW. Every other run keeps
  optax's `scale_by_adam`, its state, checkpoints and compiled step unchanged.
  """
  g = config.growth
  return config.optim.name == "adamw" and any(
      isinstance(ev, dict) and ev.get("op") in LAYER_OPS and ev.get("opt", g.opt) == "copy" for ev in g.events or ())


class ScaleByAdamLayersState(NamedTuple):
  """optax.ScaleByAdamState with a count per layer for the stacked blocks (`scale_by_adam_layers`)."""
  count: jax.Array        # int32[]: the updates of the parameters outside the stacked blocks (embedding, head, norms)
  layer_count: jax.Array  # int32[L]: the updates of each layer of the stacked blocks (leading `layers` axis)
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam_layers(b1: float, b2: float, eps: float, stacked, num_layers: int) -> optax.GradientTransformation:
  """optax.scale_by_adam, with each layer of the stacked blocks bias-corrected by its own count.

  PyTorch's AdamW keeps a step count per parameter: MSG (Yao et al., ICLR 2024, github.com/cofe-ai/MSG) adds new
  blocks as new parameters, so their bias correction restarts at count 0 while the old blocks' goes on;
  `growth.grow_opt_state` gives new layers count 0. With equal counts it is optax's update (its moments bit for
  bit, the update to float rounding: XLA compiles the shared scalar division differently, a few ulps):
  m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t), u = m̂/(√v̂ + ε), t the leaf's (layer's) count after the increment.
  `stacked`: a tree like the params, True where a leaf's leading axis is the layers (`model.stacked`).
  """

  def init_fn(params):
    return ScaleByAdamLayersState(jnp.zeros([], jnp.int32), jnp.zeros([num_layers], jnp.int32),
                                  optax.tree.zeros_like(params), optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count, layer_count = optax.safe_increment(state.count), optax.safe_increment(state.layer_count)

    def one(m, v, per_layer):
      t = layer_count.reshape((-1,) + (1,) * (m.ndim - 1)) if per_layer else count  # [L, 1, ...]: per layer
      m_hat, v_hat = m / (1 - b1**t).astype(m.dtype), v / (1 - b2**t).astype(v.dtype)
      return m_hat / (jnp.sqrt(v_hat) + eps)

    out = jax.tree.map(one, mu, nu, stacked)
    return out, ScaleByAdamLayersState(count, layer_count, mu, optax.tree.cast_like(nu, state.nu))

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_schedule_at_step(lr: optax.Schedule, peak: float, lr_mult, mask, weight_decay: float,
                              mode: str) -> optax.GradientTransformationExtraArgs:
  """The last link: u ← −η_t·c·u and the weight decay of `mode`, with η_t = lr(step) for `update(..., step=)`.

  Stateless: the step comes from the caller (the train state), so an update
  that is skipped cannot make the schedule lag.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, step=None, **extra_args):
    del extra_args
    if step is None:
      raise ValueError("the optimizer needs the train step: tx.update(grads, opt_state, params, step=state['step'])")
    if weight_decay and params is None:
      raise ValueError("weight decay needs the parameters: tx.update(grads, opt_state, params, step=...)")
    eta = lr(step)

    def one(u, p, c, decayed):
      neg_lr = jnp.asarray(-eta * c if c != 1.0 else -eta, u.dtype)
      if not (weight_decay and decayed):
        return neg_lr * u
      if mode == "coupled":  # as optax.adamw: −η_t·(u + λ·p)
        return neg_lr * (u + weight_decay * p)
      return neg_lr * u - jnp.asarray(weight_decay * eta / peak, u.dtype) * p  # λ·s(t)·p

    params_ = params if params is not None else updates
    return jax.tree.map(one, updates, params_, lr_mult, mask), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make(config, axes_tree, lr_schedule: optax.Schedule | None = None,
         peak_lr: float | None = None) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
  """(the optimizer, its peak-η schedule) for `config`; update it with `tx.update(g, s, params, step=step)`.

  `lr_schedule` and its `peak_lr` replace the config's schedule (a run's phase after a growth event,
  jaxtrain/growth/events.py); by default it is `schedule(config.optim, schedule_length(config))`, peaking at optim.lr.

  The chain: global-norm clipping, ⊥Grad if `optim.orthograd` (per parameter:
  each layer's slice of a stacked tensor and each of SwiGLU's gate and up on its
  own), AdamW's (a count per layer where a growth event needs one: `layer_counts`), Lion's or Muon's scaling,
  then the learning rate of each group and the weight decay. The schedule is what the logs report; a group's
  rate is it times its multiplier (`lr_multipliers`).
  """
  o, m = config.optim, config.model
  lr = lr_schedule or schedule(o, schedule_length(config))
  peak = o.lr if peak_lr is None else peak_lr
  info = model.param_info(m)
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  if o.orthograd:
    parts.append(orthograd(units=projection_units(axes_tree)))
  h = hyper(o)
  if o.name == "adamw" and layer_counts(config):  # MSG's per-parameter counts: a depth event under opt=copy
    parts.append(scale_by_adam_layers(h["b1"], h["b2"], h["eps"], model.stacked(axes_tree), m.num_layers))
  elif o.name == "adamw":
    parts.append(optax.scale_by_adam(b1=h["b1"], b2=h["b2"], eps=h["eps"]))
  elif o.name == "lion":
    parts.append(optax.scale_by_lion(b1=h["b1"], b2=h["b2"]))
  elif o.name == "muon":  # Muon on the hidden matrices, AdamW on the rest, by declared role
    matrices = muon_matrices(info, model.abstract(m)[1], axes_tree)
    labels = jax.tree.map(lambda x: "adamw" if x is None else "muon", matrices,
                          is_leaf=lambda x: x is None or isinstance(x, muon.Matrix))
    parts.append(optax.partition(
        {"muon": optax.chain(
            muon.scale_by_muon(matrices, beta=o.muon.beta, ns_steps=o.muon.ns_steps, nesterov=o.muon.nesterov),
            muon.scale_by_shape(matrices, o.muon.scale)),
         "adamw": optax.scale_by_adam(b1=h["b1"], b2=h["b2"], eps=h["eps"])}, labels))
  else:
    raise ValueError(f"unknown optim.name {o.name!r}; choose one of {NAMES}")
  if o.weight_decay_mode not in DECAY_MODES:
    raise ValueError(f"unknown optim.weight_decay_mode {o.weight_decay_mode!r}; choose one of {DECAY_MODES}")
  base_info = model.param_info(base_model(m, m.mus.d_base)) if o.lr_rule == "mus" else None
  mult = lr_multipliers(o.lr_rule, info, m.d_model, m.mus.d_base, base_info)
  if o.name == "muon":  # the Muon group's rate (its decay too, as in Keller's and Moonlight's code)
    mult = jax.tree.map(lambda c, x: c if x is None else c * o.muon.lr_scale, mult, matrices,
                        is_leaf=lambda x: x is None or isinstance(x, muon.Matrix))
  parts.append(scale_by_schedule_at_step(lr, peak, mult, decay_mask(info), o.weight_decay, o.weight_decay_mode))
  return optax.chain(*parts), lr
