"""python -m grokking: one full-batch grokking run into a workdir, resumed when rerun.

  python -m grokking --workdir runs/g --config.output=stablemax --config.loss_dtype=float64 --config.steps=8000
  python -m grokking --workdir runs/g31_ieee --init_from runs/g31:52000 --save_every 4000 --config.p=31 ...

`--config.KEY=VALUE` sets a field of `grokking.config()` (the paper's defaults); `--config=FILE[:ARG]` starts from
FILE's `get_config(ARG)`, a dict of such fields. Exit codes as `python -m jaxtrain` (what `jaxtrain.sweep` reads):
0 done, 2 a config or command that cannot run, 1 no saved state at --init_from yet (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from grokking.config import config
from grokking.runs import run
from jaxtrain import config as cfg_lib


def _value(raw: str, default):
  """`raw` as the type of the field's default (None defaults: a number, a bool, None or the string)."""
  if raw.lower() in ("none", "null"):
    return None
  if isinstance(default, bool) or (default is None and raw.lower() in ("true", "false")):
    if raw.lower() not in ("true", "false"):
      raise cfg_lib.ConfigError(f"{raw!r} is not a bool (true or false)")
    return raw.lower() == "true"
  for kind in ((int, float) if default is None else (type(default),)):
    try:
      return kind(raw)
    except ValueError:
      pass
  if default is None or isinstance(default, str):
    return raw
  raise cfg_lib.ConfigError(f"{raw!r} is not a {type(default).__name__}")


def overrides(file: str | None, flags: list[str]) -> dict:
  """The config fields from `--config=FILE[:ARG]` and the `--config.KEY=VALUE` flags (the flags win)."""
  out, defaults = {}, config().to_dict()
  if file:
    path, _, arg = file.partition(":")
    spec = importlib.util.spec_from_file_location("grokking_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out.update(module.get_config(arg or None))
  for flag in flags:
    key, eq, raw = flag.removeprefix("--config.").partition("=")
    if not eq:
      raise cfg_lib.ConfigError(f"{flag}: use --config.KEY=VALUE")
    if key not in defaults:
      raise cfg_lib.unknown_key(key, list(defaults), schema="grokking.config()")
    try:
      out[key] = _value(raw, defaults[key])
    except cfg_lib.ConfigError as e:
      raise cfg_lib.ConfigError(f"--config.{key}: {e}") from None
  return out


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m grokking", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="the run's directory: checkpoints, history.npz, metrics.jsonl")
  p.add_argument("--config", help="FILE[:ARG]: a Python file whose get_config(ARG) returns config fields")
  p.add_argument("--save_every", type=int, help="steps per saved segment (a multiple of log_every; default: one)")
  p.add_argument("--init_from", metavar="DIR:STEP", help="continue the saved state of the run in DIR at STEP")
  p.add_argument("--quiet", action="store_true", help="no line per chunk")
  args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  try:
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
      raise cfg_lib.ConfigError(f"unknown arguments {unknown}")
    c = config(**overrides(args.config, rest))
    init_from = None
    if args.init_from:
      path, _, step = args.init_from.rpartition(":")
      if not path or not step.isdigit():
        raise cfg_lib.ConfigError(f"--init_from={args.init_from}: use DIR:STEP")
      init_from = (path, int(step))
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
    run(c, args.workdir, save_every=args.save_every, init_from=init_from, verbose=not args.quiet)
  except FileNotFoundError as e:  # the state to start from is not saved yet: "failed", a rerun tries again
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (cfg_lib.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
