"""Configs: one schema of defaults, config files as variations of it, checks before compiling.

A config file is a Python file with `get_config(arg=None)` returning `base()` with
some fields changed (the big_vision convention). On the command line
`--config=configs/lm_small.py:medium` passes `arg="medium"` and
`--config.model.num_layers=12` overrides one field. Every config, however made,
must have exactly the schema's keys, so a typo is an error naming the nearest key.

Batch size has one meaning everywhere: `train.global_batch` is the number of
sequences (each `data.seq_len` tokens) that one optimizer step sees, summed over
all devices, hosts and microbatches.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os

import ml_collections
from ml_collections import config_dict

MESH_AXES = ("data", "fsdp", "tensor")
PLACEMENTS = ("pre", "post", "mix", "peri", "lns", "res_post")  # jaxtrain/placement.py
OUTPUTS = ("softmax", "stablemax")                             # jaxtrain/losses.py


class ConfigError(ValueError):
  """A config that cannot run, with a message that says why and what to change."""


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
      param_dtype="float32",   # what parameters and optimizer state are stored in
      compute_dtype="float32", # what matmuls run in (bfloat16 for speed on GPU/TPU)
      scan_layers=True,        # lax.scan over layers: compile time independent of depth
      remat="none",            # none | full | dots (save matmul outputs, recompute the rest)
      attention="xla",         # xla (einsum; all platforms) | cudnn (jax.nn.dot_product_attention)
      output="softmax",        # softmax | stablemax: the output activation of the loss (jaxtrain/stablemax.py)
  )

  c.data = dict(
      name="pystdlib",         # pystdlib | text_files | any prepared TFDS name (lm1b, c4/en)
      data_dir="~/.cache/jaxtrain/tensorflow_datasets",
      text_glob="",            # for name=text_files
      text_key="text",
      tokenizer="byte",        # byte | path/to/sentencepiece.model
      train_split="train",
      eval_split="validation",
      seq_len=256,
      num_workers=0,
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
      eval_every=200,
      eval_batches=8,
      checkpoint_every=200,
      keep_checkpoints=3,
      progress="auto",         # auto (bar on a terminal) | bar | log
      peak_flops=0.0,          # per-device peak FLOP/s for MFU; 0 = look up or measure
  )

  c.optim = dict(
      lr=3e-3,
      schedule="cosine",       # cosine | wsd | constant (each after linear warmup)
      warmup_steps=100,
      decay_fraction=0.2,      # wsd: share of steps spent decaying at the end
      min_lr_ratio=0.1,        # final lr = min_lr_ratio · lr
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,        # decoupled (AdamW), on matrices only
      clip_norm=1.0,           # global-norm clipping; 0 disables
      orthograd=False,         # ⊥Grad: drop each gradient's component along its weights (jaxtrain/orthograd.py)
  )

  # Sizes of the named mesh axes; one of them may be -1 (the remaining devices).
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
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
    if not eq:
      raise ConfigError(f"override {item!r} has no '=': write --config.{key}=VALUE")
    set_field(config, key, value)
  config.lock()
  return config


def _flat_keys(c, prefix=""):
  keys = []
  for k, v in c.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      keys += _flat_keys(v, f"{prefix}{k}.")
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
  valid, have = _flat_keys(base()), _flat_keys(config)
  for key in have:
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
  valid = _flat_keys(config)
  if key not in valid:
    raise unknown_key(key, valid)
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = _parse(raw, node._fields[leaf], key)


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


# ---------------------------------------------------------------- validation

_CHOICES = {
    "model.mlp": ("swiglu", "gelu"),
    "model.norm.kind": ("rmsnorm", "layernorm"),
    "model.norm.placement": PLACEMENTS,
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("xla", "cudnn"),
    "model.output": OUTPUTS,
    "train.loss_dtype": ("float32", "float64"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.compute_dtype": ("float32", "bfloat16", "float16"),
    "optim.schedule": ("cosine", "wsd", "constant"),
    "train.on_nonfinite": ("stop", "skip"),
    "train.progress": ("auto", "bar", "log"),
}


def validate(config, num_devices: int, vocab_size: int | None = None, platform: str | None = None) -> dict[str, int]:
  """Checks everything that can be checked before compiling; returns the mesh shape.

  `platform` ('cpu', 'gpu', 'tpu'; None: not checked) rules out what the hardware cannot do.

  Raises ConfigError with a one-line message naming the problem and the fix.
  """
  for key, choices in _CHOICES.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value not in choices:
      raise ConfigError(f"{key}={value!r} is not one of {choices}")

  m, t, d = config.model, config.train, config.data
  mesh = mesh_shape(config.mesh, num_devices)
  batch_shards = mesh["data"] * mesh["fsdp"]
  o = config.optim
  positive = {"model.vocab_size": m.vocab_size, "model.d_model": m.d_model, "model.num_layers": m.num_layers,
              "model.num_heads": m.num_heads, "model.norm.eps": m.norm.eps, "model.rope_theta": m.rope_theta,
              "model.max_seq_len": m.max_seq_len, "train.steps": t.steps, "train.global_batch": t.global_batch,
              "data.seq_len": d.seq_len, "train.microbatches": t.microbatches, "train.log_every": t.log_every,
              "train.eval_every": t.eval_every, "train.eval_batches": t.eval_batches,
              "train.checkpoint_every": t.checkpoint_every, "train.keep_checkpoints": t.keep_checkpoints,
              "optim.lr": o.lr, "optim.eps": o.eps}
  # Optional sizes (None: derived) are checked as set, after the sizes they are derived from.
  positive |= {f"model.{k}": m[k] for k in ("num_kv_heads", "head_dim", "mlp_dim") if m[k] is not None}
  for key, v in positive.items():
    if not v > 0:
      raise ConfigError(f"{key}={v} must be positive")
  non_negative = {"optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
                  "optim.clip_norm": o.clip_norm, "train.z_loss": t.z_loss, "model.init_std": m.init_std,
                  "train.diagnostics_every": t.diagnostics_every, "train.peak_flops": t.peak_flops,
                  "data.num_workers": d.num_workers}
  for key, v in non_negative.items():
    if not v >= 0:
      raise ConfigError(f"{key}={v} must be >= 0 (0 turns it off where that applies)")
  for key, v in {"optim.b1": o.b1, "optim.b2": o.b2}.items():
    if not 0 <= v < 1:
      raise ConfigError(f"{key}={v} must be in [0, 1)")
  for key, v in {"optim.decay_fraction": o.decay_fraction, "optim.min_lr_ratio": o.min_lr_ratio,
                 "model.norm.mix_post_fraction": m.norm.mix_post_fraction}.items():
    if not 0 <= v <= 1:
      raise ConfigError(f"{key}={v} must be in [0, 1]")
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
  if vocab_size is not None and vocab_size > m.vocab_size:
    raise ConfigError(f"the tokenizer has {vocab_size} tokens but model.vocab_size={m.vocab_size}; raise model.vocab_size")
  if o.warmup_steps > t.steps:
    raise ConfigError(f"optim.warmup_steps={o.warmup_steps} exceeds train.steps={t.steps}")
  if o.schedule == "wsd" and o.warmup_steps + round(o.decay_fraction * t.steps) > t.steps:
    raise ConfigError(f"optim.schedule=wsd: warmup_steps={o.warmup_steps} plus the decay "
                      f"(decay_fraction·steps={round(o.decay_fraction * t.steps)}) exceed train.steps={t.steps}")
  if not 0 < m.norm.res_post_tau < 1:
    raise ConfigError(f"model.norm.res_post_tau={m.norm.res_post_tau} must be in (0, 1)")
  if m.attention == "cudnn" and m.compute_dtype == "float32":
    raise ConfigError("model.attention=cudnn needs model.compute_dtype=bfloat16 or float16")
  if m.attention == "cudnn" and platform not in (None, "gpu"):
    raise ConfigError(f"model.attention=cudnn runs on NVIDIA GPUs only, not on {platform}; use model.attention=xla")
  if t.loss_dtype == "float64" and platform == "tpu":
    raise ConfigError("train.loss_dtype=float64: TPUs have no float64 arithmetic; use float32 on TPU")
  return mesh
