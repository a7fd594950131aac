"""Command line: `python -m jaxtrain --config=configs/default.py[:arg] --workdir=DIR [--config.a.b=value ...]`.

Running the same command again on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

USAGE = "python -m jaxtrain --config=configs/<name>.py[:arg] --workdir=DIR [--distributed] [--config.<field>=<value> ...]"


def parse(argv: list[str]):
  """(config, workdir) from command-line arguments; config errors raise ConfigError."""
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="jaxtrain", usage=USAGE, description=__doc__)
  parser.add_argument("--config", required=True, help="a config file, optionally with :arg for get_config(arg)")
  parser.add_argument("--workdir", required=True, help="where config.json, metrics and checkpoints go")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host TPU pods, SLURM GPU clusters)")
  args, rest = parser.parse_known_args(argv)
  if args.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r}; overrides are written --config.<field>=<value>")
    overrides.append(item[len("--config."):])
  return cfg_lib.load(args.config, overrides), args.workdir


def main(argv: list[str] | None = None) -> int:
  from jaxtrain import malloc  # pylint: disable=g-import-not-at-top
  if argv is None:  # a real command line: may restart the process with malloc tuned (see malloc.py)
    malloc.tune_process()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "orbax", "jax._src", "grain"):  # TFDS warns of every custom builder config
    logging.getLogger(noisy).setLevel(logging.ERROR)
  from jaxtrain import checkpoint, config as cfg_lib, data, train  # pylint: disable=g-import-not-at-top
  try:
    config, workdir = parse(sys.argv[1:] if argv is None else argv)
    summary = train.train(config, workdir)
  except (cfg_lib.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
    print(f"jaxtrain: error: {e}", file=sys.stderr)
    return 2
  except train.NonFiniteError as e:
    print(f"jaxtrain: stopped: {e}", file=sys.stderr)
    return 3
  print(f"\nworkdir:     {summary['workdir']}")
  print(f"metrics:     {summary['metrics']}  (TensorBoard: {summary['workdir']}/tensorboard)")
  print(f"checkpoints: {summary['checkpoints']}")
  if "final_eval_loss" in summary:
    print(f"final validation loss: {summary['final_eval_loss']:.4f} after {summary['step']} steps")
  else:
    print(f"stopped at step {summary['step']} ({summary['stopped_by']}); run the same command to resume")
  return 0


if __name__ == "__main__":
  sys.exit(main())
