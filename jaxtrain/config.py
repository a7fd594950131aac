"""Configs: one schema of defaults, config files as variations of it, generic checks.

A config file is a Python file with `get_config(arg=None)` returning `base()` with
some fields changed (the big_vision convention). On the command line
`--config=configs/lm_small.py:medium` passes `arg="medium"` and
`--config.model.num_layers=12` overrides one field. Every config, however made,
must have exactly the schema's keys, so a typo is an error naming the nearest key.

Batch size has one meaning everywhere: `train.global_batch` is the number of
sequences (each `data.seq_len` tokens) that one optimizer step sees, summed over
all devices, hosts and microbatches.

`check` holds the schema's generic rules; each feature checks its own fields beside
its code, and `jaxtrain.preflight.validate` runs them all. This module imports none
of jaxtrain's others: it is the bottom layer.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import typing

import ml_collections
from ml_collections import config_dict

MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
  """A config that cannot run, with a message that says why and what to change."""


class Target(typing.NamedTuple):
  """The hardware a config is checked against (`preflight.validate`); None: not checked."""
  num_devices: int
  vocab_size: int | None = None          # the tokenizer's vocabulary
  platform: str | None = None            # 'cpu' | 'gpu' | 'tpu'
  process_count: int = 1
  local_devices: int | None = None       # this process's share of num_devices
  compute_capability: str | None = None  # a GPU's, e.g. '9.0'


def base() -> ml_collections.ConfigDict:
  """The schema: every field a config may set, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = dict(
      vocab_size=256,          # >= the tokenizer's vocabulary.
      d_model=256,
      num_layers=4,
      num_heads=4,
      num_kv_heads=config_dict.placeholder(int),  # None: = num_heads (MHA); fewer: GQA.
      head_dim=config_dict.placeholder(int),      # None: d_model // num_heads.
      mlp_dim=config_dict.placeholder(int),       # None: 8/3·d_model for SwiGLU, 4·d_model for GELU, rounded up to 64.
      mlp="swiglu",            # swiglu | gelu
      norm=dict(               # where the norm goes: see jaxtrain/placement.py
          kind="rmsnorm",      # rmsnorm | layernorm
          eps=1e-6,
          placement="pre",     # pre | post | mix | peri | lns | res_post
          mix_post_fraction=0.25,  # Mix-LN's α: the first ⌊α·L⌋ layers are Post-LN
          mix_post_layers=config_dict.placeholder(int),  # Mix-LN's count (the official POST_NUM); None: ⌊α·L⌋
          res_post_tau=0.5,    # res_post: x <- √(1-τ)·x + √τ·N(f(x))
          embed_norm=False,    # a norm on the embedding output (Peri-LN's optional one)
          out_norm_scale=True, # Peri-LN: the output norms have a learnable scale (else fixed at 1)
          final=True,          # the final norm before the LM head
      ),
      depth_scaled_init=True,  # residual branches' last matmul init_std/√(2L) (GPT-2); False: plain init
      qk_norm=False,
      tie_embeddings=True,
      max_seq_len=2048,
      rope_theta=10_000.0,
      init_std=0.02,
      param_dtype="float32",   # what parameters and optimizer state are stored in (bfloat16 is refused: no master copy)
      compute_dtype="float32", # what matmuls run in (bfloat16 for speed on GPU/TPU)
      scan_layers=True,        # lax.scan over layers: compile time independent of depth
      remat="none",            # none | full | dots (save matmul outputs, recompute the rest)
      attention="auto",        # auto (per platform) | blocked (CPU kernel) | xla | cudnn | splash (TPU): attention.py
      output="softmax",        # softmax | stablemax: the output activation of the loss (jaxtrain/stablemax.py)
      parametrization="sp",    # sp (standard) | mus (μnit Scaling: unit init, static 1/√fan_in multipliers)
      mus=dict(                # parametrization=mus only (d_base also for the optimizer's per-group rules)
          d_base=256,          # the base width that learning rates transfer from
          attn_scale="inv_sqrt",  # attention logits q·k/√K (inv_sqrt, the paper's) | q·k/K (inv, μP's)
          embed_mult=1.0,      # embedding output multiplier (the paper: 1)
          head_mult=1.0,       # LM head multiplier on top of 1/fan_in (the paper: 1)
      ),
      fp8="none",              # none | static (μS: saturating casts, no scales) | delayed (amax history); fp8.py
      fp8_grad_scale=0.0,      # static: output gradients ×S before the E5M2 cast (undone after); 0: auto (fp8.py)
      fp8_grad_rule="uniform",  # static: uniform (S at every linear) | per_linear (S·2^k, k per linear; fp8.py)
      fp8_history=1024,        # delayed: amax history length (Flax's default)
  )

  c.data = dict(
      name="pystdlib",         # pystdlib | text_files | files | shakespeare | any prepared TFDS name (lm1b, c4/en)
      data_dir="~/.cache/jaxtrain/tensorflow_datasets",
      text_glob="",            # for name=text_files
      files="",                # for name=files: comma-separated globs (local or gs://), or a saved HF dataset dir
      eval_files="",           # for name=files: the validation files; "": 2% of the documents held out by hash
      format="auto",           # for name=files: auto (by file name) | parquet | jsonl | arrow | hf_saved
      text_key="text",         # the field (TFDS feature, column, JSON key) holding the text
      tokenizer="byte",        # byte | path/to/sentencepiece.model | path/to/tokenizer.json (Hugging Face)
      eod_token="",            # tokenizer.json: the end-of-document token; "": <|endoftext|>, </s>, ... (tokenizer.py)
      train_split="train",
      eval_split="validation",
      seq_len=256,
      num_workers=0,
      packing="concat",        # concat (documents joined by eos, cut every seq_len: no padding) | pad (whole
                               # documents per row, padded); jaxtrain/data/packing.py
      document_mask=True,      # rows carry segment_ids and loss weights: attention, RoPE and the loss stay inside
                               # each document (false: causal rows, the batch is {inputs, targets})
      mixture={},              # weighted sources, {name: {any source field of data (name, text_glob, ...), weight}};
                               # weight: a number or ((step, w), ...) piecewise-linear; jaxtrain/data/mixture.py
      mixture_block_size=2048, # mixture rows per block of fixed per-source counts (Levanter's), in whole batches
  )

  c.train = dict(
      steps=1000,
      global_batch=32,         # sequences per optimizer step, over all devices and microbatches
      microbatches=1,          # gradient accumulation: global_batch is split into this many
      z_loss=0.0,              # coefficient of logsumexp² (1e-4 in PaLM); 0 disables
      loss_dtype="float32",    # float32 | float64: precision of the loss (float64 without x64 mode; not on TPU)
      on_nonfinite="stop",     # stop | skip (skip the update, keep going)
      log_every=10,
      diagnostics_every=0,     # per-layer diagnostics every N steps (0: off; they cost a second compiled step)
      collapse_metrics=False,  # Softmax Collapse metrics (sc_fraction, zero_loss_fraction, grad_weight_cos) every step
                               # (False: only on the diagnostics step, train.diagnostics_every)
      eval_every=200,
      eval_batches=8,
      downstream_tasks="",     # task files (JSONL) or directories, comma-separated, scored at each evaluation:
                               # downstream/<task>/acc, ... (jaxtrain/downstream.py; docs/evaluation.md)
      checkpoint_every=200,
      stop_check_every=10,     # multi-host: steps between the hosts' agreement on a signal (it waits for the step)
      keep_checkpoints=3,
      progress="auto",         # auto (bar on a terminal) | bar | log
      peak_flops=0.0,          # per-device peak FLOP/s for MFU; 0 = look up or measure
      trackers="jsonl,tensorboard",  # where metrics go, comma-separated: jsonl (always on) | tensorboard | wandb
                               # (jaxtrain/trackers.py; wandb: the `wandb` section below)
      profile_steps="",        # "A:B": a JAX profiler trace of the steps from state A to B into <workdir>/profile
                               # (jaxtrain/profiling.py); "": none
      memory_profile_step=0,   # a device-memory profile (pprof) after this step into <workdir>/profile; 0: none
  )

  c.optim = dict(
      name="adamw",            # adamw | lion | muon (jaxtrain/optim.py; muon: jaxtrain/muon.py)
      lr=3e-3,                 # peak learning rate η (of the groups with multiplier 1, see lr_rule)
      lr_rule="none",          # none (η for all) | mus (hidden η·√(fan_in at d_base/fan_in), others η) | sp (all η·d_base/d)
      schedule="cosine",       # cosine | wsd | constant (each after linear warmup)
      schedule_steps=0,        # steps the schedule is laid over; 0: train.steps (set it to continue on the old curve)
      warmup_steps=100,
      decay_fraction=0.2,      # wsd: share of steps spent decaying at the end
      min_lr_ratio=0.1,        # final lr = min_lr_ratio · lr
      b1=config_dict.placeholder(float),   # None: 0.9 (adamw and lion)
      b2=config_dict.placeholder(float),   # None: 0.95 (adamw), 0.99 (lion: its momentum's decay)
      eps=config_dict.placeholder(float),  # None: 1e-8 (adamw); lion has none
      weight_decay=0.1,        # λ, on embedding, hidden and head matrices (never norms)
      weight_decay_mode="coupled",  # coupled (p -= η_t·λ·p, AdamW) | independent (p *= 1 - λ·s(t), μS: fully decoupled)
      clip_norm=1.0,           # global-norm clipping; 0 disables
      orthograd=False,         # ⊥Grad: drop each gradient's component along its weights (jaxtrain/orthograd.py)
      muon=dict(               # optim.name=muon: hidden matrices (b1, b2, eps above: its AdamW group's)
          scale="moonlight",   # moonlight (0.2·√max(fan_in, fan_out): AdamW's RMS) | keller (√max(1, out/in)) | none
          lr_scale=1.0,        # the hidden matrices' rate (and decay) is optim.lr·lr_scale (times lr_rule's factor)
          beta=0.95,           # Nesterov momentum
          ns_steps=5,          # Newton–Schulz iterations
          nesterov=True,
      ),
  )

  c.wandb = dict(              # train.trackers=...,wandb: Weights & Biases (jaxtrain/trackers.py)
      project="jaxtrain",
      entity="",               # "": your default entity
      name="",                 # "": the workdir's name
      tags="",                 # comma-separated
      mode="",                 # online | offline | disabled | shared; "": WANDB_MODE, else online
  )

  # Sizes of the named mesh axes; one of them may be -1 (the remaining devices).
  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  c.growth = dict(             # growing the model mid-run (jaxtrain/growth/); model is the model before any event
      events=(),               # ({"step": 1500, "op": "stack", "g": 4}, ...): at the end of `step`, apply `op` with
                               # its arguments; an event may also set opt, lr, warmup_steps, peak_lr for itself,
                               # and ramp_steps (T > 0: its new layers, or expand_mlp's units and add_heads'
                               # heads in new kv groups, fade in over T steps: MSG's masks; docs/growth.md)
      opt="reset",             # reset (fresh moments, count 0: G_stack's code) | copy (old moments in place, zeros for
                               # new entries and copies, new layers' count 0: MSG) | duplicate (copies take their
                               # source's: staged training)
      lr="restart_warmup",     # restart_warmup (warmup to peak_lr, then optim.schedule to the end: G_stack's code)
                               # | continue (the schedule as it was) | rewind (the base schedule from its peak)
      warmup_steps=-1,         # restart_warmup's warmup; -1: optim.warmup_steps
      peak_lr=0.0,             # restart_warmup's peak; 0: optim.lr
  )
  return c


# ---------------------------------------------------------------- loading


def load(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]`, checks its keys against the schema, applies `a.b=value` overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist: pass --config=configs/<name>.py")
  module_spec = importlib.util.spec_from_file_location("_jaxtrain_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg=None) function")
  try:
    config = module.get_config(arg or None) if arg else module.get_config()
  except ValueError as e:  # a config file's own argument check
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{spec}: {e}") from None
  check_keys(config)
  config = ml_collections.ConfigDict(config)  # a copy; the file's object stays untouched
  for item in overrides:
    key, eq, value = item.partition("=")
    if not eq:  # a bare `--config.a.b` (absl's boolean flag form): true for a boolean field
      if key in flat_keys(config) and field_type(config, key) is not bool:
        raise ConfigError(f"--config.{key} has no value: write --config.{key}=VALUE or --config.{key} VALUE")
      value = "true"
    set_field(config, key, value)
  config.lock()
  return config



def from_json(saved: dict) -> ml_collections.ConfigDict:
  """A config as a run stores it (config.json, a checkpoint's config item) -> a ConfigDict; fields a newer
  jaxtrain added come from base()."""
  def fill(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for k, v in given.items():
      out[k] = fill(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
    return out
  return ml_collections.ConfigDict(fill(base().to_dict(), saved))


def flat_keys(c, prefix="") -> list[str]:
  """The dotted keys of every leaf field of `c`, in order."""
  keys = []
  for k, v in c.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      keys += flat_keys(v, f"{prefix}{k}.")
    else:
      keys.append(f"{prefix}{k}")
  return keys


def unknown_key(key: str, valid: list[str], schema: str = "jaxtrain/config.py:base()") -> ConfigError:
  """The error for a key not in `valid`, naming the nearest valid one."""
  near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
  hint = f"; did you mean {near[0]!r}?" if near else f"; see {schema} for the fields"
  return ConfigError(f"unknown config key {key!r}{hint}")


def check_keys(config) -> None:
  """Every key of `config` must be a schema key and vice versa."""
  valid, have = flat_keys(base()), flat_keys(config)
  for key in have:
    if key.startswith("data.mixture."):  # named sources: a field of data, or weight (the rest: data.mixture.check)
      field = key.split(".")[3:]
      if len(field) == 1 and (field[0] == "weight" or f"data.{field[0]}" in valid):
        continue
      raise ConfigError(f"config key {key!r} is not a mixture source field: a source is "
                        "{'weight': w, <fields of data>...}, e.g. data.mixture.web.weight")
    if key not in valid:
      raise unknown_key(key, valid)
  missing = [k for k in valid if k not in have]
  if missing:
    raise ConfigError(f"config lacks {missing[:3]}: start config files from jaxtrain.config.base()")


def _parse(raw: str, like, key: str):
  """Parses a command-line string as the type of the field it overrides."""
  kind = type(like)
  if isinstance(like, config_dict.FieldReference):
    kind = like.get_type()
  if kind is str:
    return raw
  if kind is bool:
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={raw}: expected true or false")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={raw}: expected a value of type {kind.__name__}") from None
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if kind is tuple and isinstance(value, list):
    value = tuple(value)
  if value is not None and not isinstance(value, kind):
    raise ConfigError(f"--config.{key}={raw}: expected a value of type {kind.__name__}, got {type(value).__name__}")
  return value


def set_field(config, key: str, raw: str) -> None:
  """Sets `config.<key>` from a command-line string; unknown keys name the nearest valid one."""
  valid = flat_keys(config)
  if key not in valid:
    raise unknown_key(key, valid)
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = _parse(raw, node._fields[leaf], key)


def get_field(config, key: str):
  """The value of `config.<key>` (`key` dotted, as on the command line)."""
  for part in key.split("."):
    config = config[part]
  return config


def field_type(config, key: str) -> type:
  """The type a command-line value for `config.<key>` is parsed as (a placeholder's declared type)."""
  *parents, leaf = key.split(".")
  like = get_field(config, ".".join(parents))._fields[leaf] if parents else config._fields[leaf]
  return like.get_type() if isinstance(like, config_dict.FieldReference) else type(like)


# ---------------------------------------------------------------- derived values


def mlp_dim(m) -> int:
  if m.mlp_dim is not None:
    return m.mlp_dim
  f = 8 * m.d_model // 3 if m.mlp == "swiglu" else 4 * m.d_model
  return 64 * math.ceil(f / 64)


def head_dim(m) -> int:
  return m.d_model // m.num_heads if m.head_dim is None else m.head_dim


def num_kv_heads(m) -> int:
  return m.num_heads if m.num_kv_heads is None else m.num_kv_heads


def describe(m) -> str:
  """The model's shape in one line, for logs."""
  return (f"{m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads of {head_dim(m)}, "
          f"mlp {mlp_dim(m)}")


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
  """Resolves the config's axis sizes (one may be -1) against the device count."""
  sizes = {a: mesh_cfg[a] for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh axes {free} are all -1: at most one axis may take the remaining devices")
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ConfigError(f"mesh sizes {sizes} must be positive or -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"mesh {sizes}: {num_devices} devices are not divisible by {fixed}; change mesh sizes")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(
        f"mesh {sizes} has {math.prod(sizes.values())} devices but {num_devices} are present; "
        "make the product of mesh.data·mesh.fsdp·mesh.tensor match, or set one axis to -1")
  return sizes


# ---------------------------------------------------------------- checks
# The rules of the schema itself; each feature checks its own fields (`check(config, target)` in attention, fp8,
# hosts, munit, optim, placement, stablemax, growth) and `jaxtrain.preflight.validate` runs them all.

MLPS = ("swiglu", "gelu")
NORMS = ("rmsnorm", "layernorm")
REMATS = ("none", "full", "dots")
PARAM_DTYPES = ("float32", "bfloat16")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ON_NONFINITE = ("stop", "skip")
PROGRESS = ("auto", "bar", "log")


def check_choices(config, choices: dict[str, tuple]) -> None:
  """Each dotted key's value must be one of its choices."""
  for key, allowed in choices.items():
    value = get_field(config, key)
    if value not in allowed:
      raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def check_positive(values: dict) -> None:
  for key, v in values.items():
    if not v > 0:
      raise ConfigError(f"{key}={v} must be positive")


def check_non_negative(values: dict) -> None:
  for key, v in values.items():
    if not v >= 0:
      raise ConfigError(f"{key}={v} must be >= 0 (0 turns it off where that applies)")


def check_unit_interval(values: dict) -> None:
  for key, v in values.items():
    if not 0 <= v <= 1:
      raise ConfigError(f"{key}={v} must be in [0, 1]")


def check(config, target: Target) -> dict[str, int]:
  """The schema's generic rules (choices, sizes, divisibility, lengths, vocabulary); returns the mesh shape.

  Raises ConfigError with a one-line message naming the problem and the fix.
  """
  check_choices(config, {"model.mlp": MLPS, "model.norm.kind": NORMS, "model.remat": REMATS,
                         "model.param_dtype": PARAM_DTYPES, "model.compute_dtype": COMPUTE_DTYPES,
                         "train.on_nonfinite": ON_NONFINITE, "train.progress": PROGRESS})
  m, t, d = config.model, config.train, config.data
  mesh = mesh_shape(config.mesh, target.num_devices)
  batch_shards = mesh["data"] * mesh["fsdp"]
  positive = {"model.vocab_size": m.vocab_size, "model.d_model": m.d_model, "model.num_layers": m.num_layers,
              "model.num_heads": m.num_heads, "model.norm.eps": m.norm.eps, "model.rope_theta": m.rope_theta,
              "model.max_seq_len": m.max_seq_len, "train.steps": t.steps, "train.global_batch": t.global_batch,
              "data.seq_len": d.seq_len, "train.microbatches": t.microbatches, "train.log_every": t.log_every,
              "train.eval_every": t.eval_every, "train.eval_batches": t.eval_batches,
              "train.checkpoint_every": t.checkpoint_every, "train.keep_checkpoints": t.keep_checkpoints,
              "train.stop_check_every": t.stop_check_every}
  # Optional sizes (None: derived) are checked as set, after the sizes they are derived from.
  positive |= {f"model.{k}": m[k] for k in ("num_kv_heads", "head_dim", "mlp_dim") if m[k] is not None}
  check_positive(positive)
  check_non_negative({"train.z_loss": t.z_loss, "model.init_std": m.init_std,
                      "train.diagnostics_every": t.diagnostics_every, "train.peak_flops": t.peak_flops,
                      "data.num_workers": d.num_workers})
  if t.global_batch % t.microbatches:
    raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by train.microbatches={t.microbatches}")
  micro = t.global_batch // t.microbatches
  if micro % batch_shards:
    raise ConfigError(
        f"the microbatch of {micro} sequences (train.global_batch / train.microbatches) is not divisible by "
        f"the data-parallel size {batch_shards} (mesh.data·mesh.fsdp); change train.global_batch or the mesh")
  kv = num_kv_heads(m)
  if m.num_heads % kv:
    raise ConfigError(f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads={kv}")
  if m.head_dim is None and m.d_model % m.num_heads:
    raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; set model.head_dim")
  if head_dim(m) % 2:
    raise ConfigError(f"head_dim={head_dim(m)} must be even for RoPE")
  for name, n in (("model.num_heads", m.num_heads), ("model.num_kv_heads", kv)):
    if n % mesh["tensor"]:
      raise ConfigError(f"{name}={n} is not divisible by the tensor axis (mesh.tensor={mesh['tensor']})")
  if d.seq_len > m.max_seq_len:
    raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}")
  if target.vocab_size is not None and target.vocab_size > m.vocab_size:
    raise ConfigError(f"the tokenizer has {target.vocab_size} tokens (data.tokenizer={d.tokenizer}) but "
                      f"model.vocab_size={m.vocab_size}; raise model.vocab_size")
  if m.param_dtype == "bfloat16":
    raise ConfigError("model.param_dtype=bfloat16 would store the weights and AdamW's moments in bfloat16, where late "
                      "small updates round away: keep model.param_dtype=float32 (the master weights) and set "
                      "model.compute_dtype=bfloat16 for bfloat16 matmuls")
  return mesh


def microbatch_tokens(config) -> int:
  """Tokens in one microbatch over all devices: global_batch / microbatches sequences of data.seq_len."""
  return config.train.global_batch // config.train.microbatches * config.data.seq_len
