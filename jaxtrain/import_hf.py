r"""Start a run from a Hugging Face checkpoint: a local model directory -> a workdir whose first checkpoint holds it.

    python -m jaxtrain.import_hf --from=path/to/hf_llama --config=configs/lm_small.py --workdir=runs/ft
    python -m jaxtrain --config=configs/lm_small.py --flagfile=runs/ft/import.flags --workdir=runs/ft   # fine-tunes

- The model: `--from`'s config.json and safetensors weights (model.safetensors, or the shards an index names),
  read with numpy (no torch, no network). Llama, Mistral without a sliding window, Qwen3, StableLM and Starcoder2
  map exactly onto a jaxtrain `pre` model (jaxtrain/hf.py; anything else is refused in one line). Every model field
  those configs fix comes from config.json (sizes, norm kind and eps, RoPE θ, QK-norm, tied head, max length);
  the rest (dtypes, scan, remat, attention kernel, init) and all training settings come from `--config` and its
  `--config.<field>=<value>` overrides.
- The tokenizer: the config's `data.tokenizer` must have at most the model's vocabulary, and where `--from` carries
  a tokenizer it must be the config's (the byte tokenizer's tokenizer.json, or the same SentencePiece
  tokenizer.model); otherwise one line says which tokenizer to set.
- Written into `--workdir`: checkpoints/0, the train state the trainer builds at step 0 (train.build's init on
  the config's mesh, so a fresh optimizer state) with the imported parameters, the config's data fingerprint and
  the resolved config (as train.py saves them); config.json; `import.flags`, the model fields as
  `--config.model.*` flags (and the given overrides), which the trainer's command needs so that its config is the
  checkpoint's; and import.json (source, model, parameter count).

Refused before anything is written: a workdir that holds checkpoints, a source without config.json or safetensors
weights, an architecture that does not map exactly, a mismatched tokenizer or vocabulary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

import numpy as np

from jaxtrain import hf, paths
from jaxtrain.config import ConfigError

USAGE = ("python -m jaxtrain.import_hf --from=HF_DIR --config=CONFIG[:ARG] --workdir=DIR [--config.<field>=<value> ...]"
         "\n       [--distributed ...] [--cpu_devices=N] [--flagfile=FILE]")
log = logging.getLogger("jaxtrain")


def read_pretrained(source: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, {tensor name: numpy array}) of a local HF model directory with safetensors weights."""
  if not os.path.isdir(source):
    raise ConfigError(f"--from={source} is not a directory; name a local Hugging Face model directory")
  try:
    with open(os.path.join(source, "config.json")) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"--from={source} has no config.json; name a Hugging Face model directory") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"--from={source}: config.json is unreadable ({e})") from None
  index = os.path.join(source, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(source, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise ConfigError(f"--from={source} has no model.safetensors (nor an index of shards); convert .bin weights "
                      "to safetensors first")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = {}
  for name in files:
    tensors |= load_file(os.path.join(source, name))
  return config, tensors


def check_tokenizer(source: str, data_cfg, vocab_size: int) -> None:
  """ConfigError if the config's tokenizer does not fit the model's vocabulary or differs from `source`'s: a
  SentencePiece tokenizer.model byte for byte, a tokenizer.json by its model (type, vocabulary and merges) and
  added tokens, the config's converted as export would write it."""
  from jaxtrain import data  # pylint: disable=g-import-not-at-top
  tok = data.make_tokenizer(data_cfg)
  spec = data_cfg.tokenizer
  if tok.vocab_size > vocab_size:
    raise ConfigError(f"the config's tokenizer ({spec}) has {tok.vocab_size} tokens, the model in {source} "
                      f"{vocab_size}: set --config.data.tokenizer to the model's own tokenizer")
  tok_json, tok_model = os.path.join(source, "tokenizer.json"), os.path.join(source, "tokenizer.model")
  own = tok_model if os.path.isfile(tok_model) else tok_json if os.path.isfile(tok_json) else None
  fix = f"set --config.data.tokenizer={own}"
  if spec == "byte":
    if own is None:
      log.warning("%s has no tokenizer: the byte tokenizer is assumed to be the model's", source)
    elif own == tok_model or not hf.is_byte_tokenizer_json(paths.resolve(tok_json).read_text(encoding="utf-8")):
      raise ConfigError(f"the model in {source} has a tokenizer of its own, not jaxtrain's byte tokenizer: {fix} "
                        "(and model.vocab_size follows the model)")
  elif own == tok_model:
    with open(tok_model, "rb") as f, open(os.path.expanduser(spec), "rb") as g:
      if f.read() != g.read():
        raise ConfigError(f"{tok_model} differs from the config's data.tokenizer={spec}: {fix}")
  elif own == tok_json:
    key = lambda t: (t.get("model", {}), [a.get("content") for a in t.get("added_tokens") or []])
    with open(tok_json, encoding="utf-8") as f:
      theirs = key(json.load(f))
    if theirs != key(json.loads(hf.tokenizer_files(spec, 0)["tokenizer.json"])):
      raise ConfigError(f"the vocabulary of {tok_json} is not that of the config's data.tokenizer={spec}: {fix}")
  else:
    log.warning("%s has no tokenizer to compare with data.tokenizer=%s: assumed the same", source, spec)


def derive_config(config, fields: dict):
  """A copy of training config `config` with the model fields `fields` (hf.model_fields) set; locked."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in _flat(fields):
    node = c.model
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.lock()
  return c


def _flat(tree: dict, prefix: str = ""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def model_flags(fields: dict) -> list[str]:
  """`--config.model.<field>=<value>` for each imported field, as the command line parses them back."""
  def text(v):
    return str(v).lower() if isinstance(v, bool) else (v if isinstance(v, str) else repr(v))
  return [f"--config.model.{k}={text(v)}" for k, v in _flat(fields)]


def import_hf(source: str, config, workdir: str, overrides: list[str] | tuple[str, ...] = (), devices=None) -> dict:
  """Writes `source`'s weights as `workdir`'s step-0 checkpoint of `config` with the model from `source`.

  `overrides`: the `a.b=value` overrides `config` was loaded with (written into import.flags). Returns a summary.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import checkpoint, data, model, paths, sharding, train  # pylint: disable=g-import-not-at-top
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top

  ##################################################################### Check everything cheap first
  source = os.path.abspath(os.path.expanduser(source))
  workdir = paths.resolve(workdir)  # local or gs://
  out_ckpts = workdir / "checkpoints"
  if steps := checkpoint.checkpoint_steps(out_ckpts):
    raise ConfigError(f"--workdir={workdir} already holds checkpoints (steps {steps}); "
                      "import never overwrites a run: use a new --workdir")
  hf_config, tensors = read_pretrained(source)
  fields = hf.model_fields(hf_config)
  check_tokenizer(source, config.data, fields["vocab_size"])
  config = derive_config(config, fields)
  _, params = hf.from_hf(hf_config, tensors)
  devices = list(devices or jax.devices())
  mesh_shape, phases = train.check(config, devices)
  config = phases[0].config

  ##################################################################### The trainer's state at step 0
  mesh = sharding.make_mesh(mesh_shape, devices)
  prog = train.build(config, mesh)
  abstract = prog.abstract_state["params"]
  got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  if got != want:  # a model field the config sets that changes the parameters (e.g. embed_norm)
    diff = sorted(set(got.items()) ^ set(want.items()))[:2]
    raise ConfigError(f"the imported parameters do not fit the config's model (first differences: {diff}); set the "
                      "config's model fields back to their defaults")
  loader = data.TrainData(config.data, seq_len=config.data.seq_len, global_batch=config.train.global_batch,
                          seed=config.seed)
  state = prog.init(jax.random.key(config.seed))  # a fresh optimizer state, placed as the trainer places it
  state["params"] = jax.tree.map(
      lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), params, abstract)

  ##################################################################### Write
  is_main = jax.process_index() == 0
  if is_main:
    paths.makedirs(workdir)
  config_json = json.loads(config.to_json_best_effort())
  ckpt = checkpoint.Checkpointer(os.fspath(out_ckpts), keep=config.train.keep_checkpoints)
  try:
    ckpt.save(0, state, loader.fingerprint(), config_json)
    ckpt.wait()
  finally:
    ckpt.close()
  flags = model_flags(fields) + [f"--config.{o}" for o in overrides]
  summary = {"source": source, "architecture": (hf_config.get("architectures") or [hf_config["model_type"]])[0],
             "workdir": os.fspath(workdir), "checkpoints": os.fspath(out_ckpts),
             "parameters": model.count_params(state["params"]),
             "model": cfg_lib.describe(config.model),
             "flagfile": os.fspath(workdir / "import.flags")}
  if is_main:
    (workdir / "config.json").write_text(json.dumps(config_json, indent=2))
    (workdir / "import.flags").write_text(f"# the model imported from {source} (written by jaxtrain.import_hf)\n"
                                          + "\n".join(flags) + "\n")
    (workdir / "import.json").write_text(json.dumps(summary, indent=2))
  return summary


def parser() -> argparse.ArgumentParser:
  from jaxtrain import __main__ as cli  # pylint: disable=g-import-not-at-top
  p = cli.tool_parser("python -m jaxtrain.import_hf", USAGE, __doc__)
  p.add_argument("--from", dest="source", required=True, metavar="HF_DIR", help="a local HF model directory")
  p.add_argument("--config", required=True, metavar="CONFIG[:ARG]",
                 help="the training config (its model fields are replaced by the HF model's)")
  p.add_argument("--workdir", required=True, help="the new run's workdir (must hold no checkpoints)")
  return cli.add_host_flags(p)


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 when the checkpoint is written, 2 for a command that cannot run (one line)."""
  from jaxtrain import __main__ as cli, checkpoint, data  # pylint: disable=g-import-not-at-top
  cli.setup_logging()
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  try:
    args, overrides = cli.parse_tool_args(parser(), sys.argv[1:] if argv is None else list(argv))
    config = cfg_lib.load(args.config, overrides)
    try:
      cli.start_jax(args)
    except cli.UsageError as e:
      raise ConfigError(str(e)) from None
    s = import_hf(args.source, config, args.workdir, overrides)
  except (ConfigError, data.DataError, checkpoint.CheckpointError) as e:
    print(f"jaxtrain.import_hf: error: {e}", file=sys.stderr)
    return 2
  print(f"imported {s['source']} ({s['architecture']}: {s['model']}, {s['parameters'] / 1e6:.2f}M parameters) "
        f"into {s['workdir']} at step 0")
  print(f"train it on:  python -m jaxtrain --config={shlex.quote(args.config)} "
        f"--flagfile={shlex.quote(s['flagfile'])} --workdir={shlex.quote(args.workdir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
