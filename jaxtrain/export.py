"""Export a run's checkpoint as a Hugging Face model directory that `transformers` loads with no custom code.

    python -m jaxtrain.export --workdir=runs/default --out=hf/default [--step=N] [--dtype=float32|bfloat16]

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf/default"); tok = AutoTokenizer.from_pretrained("hf/default")

Written into `--out`: config.json (the architecture jaxtrain/hf.py maps the run's model to: Llama, Qwen3, Gemma 2,
Gemma 3, StableLM or Starcoder2), model.safetensors (written from numpy: no torch needed) and the tokenizer as a
tokenizer.json (byte: a BPE with no merges over the byte alphabet, id = byte; SentencePiece, BPE or unigram: the
model's own pieces and normalizer, converted by transformers; a tokenizer.json: the run's own copy, as it is), each
encoding exactly as jaxtrain's does.
eos_token_id is the tokenizer's eos (byte: 0), so `generate` stops where jaxtrain's sampling would.

The parameters are read with `jaxtrain.run.load_run` (params only, any device count, never writing into the run).
Refused in one line each (exit code 2), nothing written: a model with no exact HF architecture (hf.SUPPORTED), a
workdir without checkpoints, a step that does not exist, an --out directory that is not empty (--overwrite
replaces the files export writes, nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from jaxtrain import hf
from jaxtrain.config import ConfigError

USAGE = "python -m jaxtrain.export --workdir=RUN --out=DIR [--step=N] [--dtype=float32|bfloat16] [--overwrite]"
DTYPES = ("float32", "bfloat16")
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def check_out(out: str, overwrite: bool) -> None:
  """ConfigError unless `out` is absent, empty, or --overwrite is given."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConfigError(f"--out={out} is a file; name a new or empty directory")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ConfigError(f"--out={out} is not empty; name a new directory, or pass --overwrite to replace its model")


def write_pretrained(out: str, model_config, params, tokenizer: str = "byte", eos_id: int | None = 0,
                     dtype: str = "float32", overwrite: bool = False, eos_token: str | None = None) -> dict:
  """Writes `params` of jaxtrain model config `model_config` as an HF model directory; returns its config.json.

  `tokenizer`: the run's `data.tokenizer` ('byte', a SentencePiece .model or a tokenizer.json path), written beside
  the model; `eos_token`: a tokenizer.json's end-of-document token (tokenizer_config.json's eos_token).
  """
  if dtype not in DTYPES:
    raise ConfigError(f"--dtype={dtype} is not one of {DTYPES}")
  check_out(out, overwrite)
  config, tensors = hf.to_hf(model_config, params, eos_id=eos_id, dtype=dtype)
  tok_files = hf.tokenizer_files(tokenizer, model_config.max_seq_len, eos_token)
  if dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  for name in FILES:  # --overwrite: no stale tokenizer of another kind left behind
    if os.path.isfile(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  for name, blob in tok_files.items():
    with open(os.path.join(out, name), "wb") as f:
      f.write(blob)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  mode = os.stat(os.path.join(out, "config.json")).st_mode & 0o777  # safetensors writes 0600: the umask's mode instead
  os.chmod(os.path.join(out, "model.safetensors"), mode)
  return config


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32", overwrite: bool = False) -> dict:
  """Exports `workdir`'s checkpoint at `step` (default: the newest) into `out`; returns a summary."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtrain import data  # pylint: disable=g-import-not-at-top
  from jaxtrain.run import load_run  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise ConfigError(f"--dtype={dtype} is not one of {DTYPES}")
  check_out(out, overwrite)
  run = load_run(workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir)))
  hf.architecture(run.config.model)  # refused before any parameter is read
  if not run.steps:
    raise ConfigError(f"--workdir={workdir} has no checkpoint to export; train it first, or name another run")
  if step is not None and step not in run.steps:
    raise ConfigError(f"--step={step}: {workdir} has checkpoints at steps {run.steps}; pick one of them")
  model = run.model(step=step)
  params = model.params
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  tokenizer = model.config.data.tokenizer  # the copy in the workdir where the run kept one (run.Run.config_at)
  tok = data.make_tokenizer(model.config.data)
  config = write_pretrained(out, model.config.model, params, tokenizer, tok.eos_id, dtype, overwrite,
                            getattr(tok, "eod_token", None))
  return {"workdir": workdir, "step": model.step, "out": out, "architecture": config["architectures"][0],
          "dtype": dtype, "parameters": int(sum(np.size(x) for x in _leaves(params)))}


def _leaves(tree):
  if hasattr(tree, "items"):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def parser() -> argparse.ArgumentParser:
  from jaxtrain import __main__ as cli  # pylint: disable=g-import-not-at-top
  p = cli.tool_parser("python -m jaxtrain.export", USAGE, __doc__)
  p.add_argument("--workdir", required=True, help="the run to export")
  p.add_argument("--out", required=True, help="the HF model directory to write (new or empty)")
  p.add_argument("--step", type=int, help="the checkpoint step (default: the newest)")
  p.add_argument("--dtype", default="float32", choices=DTYPES, help="the stored weights' dtype")
  p.add_argument("--overwrite", action="store_true", help="replace the model files in a non-empty --out")
  return p


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 when the model directory is written, 2 for a command that cannot run (one line)."""
  from jaxtrain import __main__ as cli  # pylint: disable=g-import-not-at-top
  done = cli.run_tool("export", parser(), argv, lambda a: export(a.workdir, a.out, a.step, a.dtype, a.overwrite))
  if done is None:
    return 2
  _, s = done
  print(f"exported {s['workdir']} step {s['step']} ({s['parameters'] / 1e6:.2f}M parameters) as "
        f"{s['architecture']} ({s['dtype']}) into {s['out']}")
  print(f"load it with:  transformers.AutoModelForCausalLM.from_pretrained({s['out']!r})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
