"""Command line: `python -m jaxtrain --config=configs/default.py[:arg] --workdir=DIR [--config.a.b=value ...]`.

Running the same command again on the same workdir resumes from its latest checkpoint.

Flags are written as absl and big_vision's `ml_collections.config_flags` read them:
`--flag=value` or `--flag value` (`--config.model.num_layers 12` too; a bare
`--config.model.qk_norm` sets a boolean field to true), `--flagfile=FILE` reads
more flags from FILE (one per line, `#` comments), and `--helpfull` lists every
config field with its type and default. Unlike config_flags, every error is one
line naming the problem and the fix, and a typo in a field names the nearest one.

Multi-host: one process per host, each started with `--distributed`, which calls
`jax.distributed.initialize` before anything else. On a Cloud TPU VM slice, under
SLURM (`srun`) or Open MPI it finds the coordinator, process count and id itself;
elsewhere name them with `--coordinator=HOST:PORT --num_processes=N --process_id=I`
(or the variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import logging
import os
import sys
import tokenize

USAGE = ("python -m jaxtrain --config=configs/<name>.py[:arg] --workdir=DIR [--config.<field>=<value> ...]\n"
         "       [--distributed [--coordinator=HOST:PORT --num_processes=N --process_id=I]] [--cpu_devices=N]\n"
         "       [--flagfile=FILE] [--helpfull]")
OVERRIDE = "--config."
# The variables a launcher may set instead of the flags. jax.distributed.initialize reads JAX_COORDINATOR_ADDRESS
# (and JAX_LOCAL_DEVICE_IDS) itself; the count and id it takes only as arguments, so they are read here.
ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


class UsageError(ValueError):
  """A command line that cannot run (reported in one line, exit code 2)."""


# ---------------------------------------------------------------- flag files and the `--flag value` form


def expand_flagfiles(argv: list[str], _open: tuple[str, ...] = ()) -> list[str]:
  """`argv` with every `--flagfile=FILE` (or `--flagfile FILE`) replaced by the flags FILE holds.

  absl's format: one flag per line, `--flag=value` or `--flag value`; blank lines and
  lines starting with `#` or `//` are skipped; a flag file may name other flag files.
  """
  out, i = [], 0
  while i < len(argv):
    item = argv[i]
    if item == "--flagfile" or item.startswith("--flagfile="):
      if item == "--flagfile":
        if i + 1 == len(argv):
          raise UsageError("--flagfile needs a file: --flagfile=FILE")
        path, i = argv[i + 1], i + 1
      else:
        path = item.partition("=")[2]
      if os.path.abspath(path) in _open:
        raise UsageError(f"--flagfile={path} includes itself")
      try:
        with open(path, encoding="utf-8") as f:
          lines = f.read().splitlines()
      except OSError as e:
        raise UsageError(f"--flagfile={path}: cannot read it ({e.strerror})") from None
      flags = []
      for line in map(str.strip, lines):
        if not line or line.startswith(("#", "//")):
          continue
        name, space, value = line.partition(" ")
        flags += [name, value.strip()] if space and "=" not in name else [line]
      out += expand_flagfiles(flags, _open + (os.path.abspath(path),))
    else:
      out.append(item)
    i += 1
  return out


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the other flags, the config overrides as `a.b=value`, or `a.b` for a bare flag) from `argv`.

  `--config.a.b value` is `--config.a.b=value` when the next item is not a flag
  (a negative number is a value: `--config.optim.lr -1`).
  """
  rest, overrides, i = [], [], 0
  while i < len(argv):
    item = argv[i]
    if item.startswith(OVERRIDE):
      field = item[len(OVERRIDE):]
      if "=" not in field and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        field, i = f"{field}={argv[i + 1]}", i + 1
      overrides.append(field)
    else:
      rest.append(item)
    i += 1
  return rest, overrides


# ---------------------------------------------------------------- --helpfull


def schema_fields() -> dict[str, str]:
  """{'seed': '', 'model.vocab_size': '>= the tokenizer's vocabulary.', ...}: every field of `base()` in the
  order it is written there, with the comment on its line."""
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  source = inspect.getsource(cfg_lib.base)
  comments = {tok.start[0]: tok.string.lstrip("# ").strip()
              for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
  found = {}

  def is_dict(node):
    return isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dict"

  def visit(call, prefix):
    for kw in call.keywords:
      if is_dict(kw.value):
        visit(kw.value, f"{prefix}{kw.arg}.")
      else:
        found[f"{prefix}{kw.arg}"] = comments.get(kw.value.lineno, "")

  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
      if is_dict(node.value):
        visit(node.value, f"{node.targets[0].attr}.")
      else:
        found[node.targets[0].attr] = comments.get(node.lineno, "")
  return found


def helpfull(config=None, spec: str | None = None) -> str:
  """Every config field: its type, its default in `base()`, the value in `config` (when given) and what it means."""
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  schema, comments = cfg_lib.base(), schema_fields()
  keys = cfg_lib.flat_keys(schema)
  keys = [k for k in comments if k in keys] + [k for k in keys if k not in comments]
  rows = [("field", "type", "default") + ((f"in {spec}",) if config is not None else ()) + ("",)]
  for key in keys:
    default = cfg_lib.get_field(schema, key)
    kind = cfg_lib.field_type(schema, key).__name__
    row = (key, kind, repr(default))
    if config is not None:
      value = cfg_lib.get_field(config, key)
      row += (("" if value == default and type(value) is type(default) else "*") + repr(value),)
    rows.append(row + (comments.get(key, ""),))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
  head = (f"usage: {USAGE}\n\nconfig fields, set with --config.<field>=<value> or --config.<field> <value> "
          "(booleans: true/false; a bare --config.<field> is true)")
  if config is not None:
    head += f"; the {spec} column has that config's values, * where they differ from the default"
  return head + ":\n\n" + "\n".join(line.rstrip() for line in lines) + "\n"


# ---------------------------------------------------------------- multi-host


def distributed_kwargs(args) -> dict | None:
  """The arguments of `jax.distributed.initialize` from the flags and JAX_* variables; None: one process.

  Missing ones stay None for JAX to detect (Cloud TPU, SLURM, Open MPI). A coordinator
  named on the command line needs the process count and id too (flags or variables).
  """
  flags = {k: getattr(args, k) for k in ENV}
  if not args.distributed and all(v is None for v in flags.values()):
    return None  # the variables alone do not start a distributed run: --distributed (or a flag) does
  kw = dict(flags)
  for key, var in ENV.items():
    if kw[key] is None and os.environ.get(var):
      kw[key] = os.environ[var]
  for key in ("num_processes", "process_id"):
    if isinstance(kw[key], str):
      try:
        kw[key] = int(kw[key])
      except ValueError:
        raise UsageError(f"{ENV[key]}={kw[key]!r} is not an integer") from None
  if flags["coordinator"] is not None:
    missing = [f"--{k}" for k in ("num_processes", "process_id") if kw[k] is None]
    if missing:
      raise UsageError(f"--coordinator={flags['coordinator']} needs {' and '.join(missing)} too (or "
                       f"{', '.join(ENV[m[2:]] for m in missing)}): every process names the count and its own id")
  if kw["coordinator"] is not None:
    host, colon, port = kw["coordinator"].rpartition(":")
    if not (host and colon and port.isdigit()):
      raise UsageError(f"coordinator {kw['coordinator']!r} is not HOST:PORT (process 0's address and a free port)")
  if kw["num_processes"] is not None and kw["num_processes"] < 1:
    raise UsageError(f"--num_processes={kw['num_processes']} must be at least 1")
  if kw["process_id"] is not None and not 0 <= kw["process_id"] < (kw["num_processes"] or float("inf")):
    raise UsageError(f"--process_id={kw['process_id']} must be in [0, --num_processes={kw['num_processes']})")
  return {"coordinator_address": kw["coordinator"], "num_processes": kw["num_processes"],
          "process_id": kw["process_id"]}


def start_jax(args) -> None:
  """Sets the simulated CPU device count and joins the distributed run, before JAX starts its backends."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.cpu_devices is not None:
    if args.cpu_devices < 1:
      raise UsageError(f"--cpu_devices={args.cpu_devices} must be at least 1")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # wins over XLA_FLAGS' device count
  kw = distributed_kwargs(args)
  if kw is None:
    return
  try:
    jax.distributed.initialize(**kw)
  except (ValueError, TypeError, RuntimeError) as e:
    named = ", ".join(f"{k}={v}" for k, v in kw.items() if v is not None) or "nothing"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UsageError(f"--distributed: jax.distributed.initialize({named}) failed: {first}; outside a TPU pod, SLURM "
                     "or Open MPI pass --coordinator=HOST:PORT --num_processes=N --process_id=I") from None


# ---------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
  """argparse, with its errors raised as one line rather than printed with the usage."""

  def error(self, message):
    raise UsageError(message)


def tool_parser(prog: str, usage: str, description: str | None) -> argparse.ArgumentParser:
  """An argparse parser for `python -m jaxtrain.<tool>`: errors as one line (UsageError), the docstring as help."""
  return _Parser(prog=prog, usage=usage, description=description, allow_abbrev=False,
                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_host_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The multi-host flags (`start_jax` reads them) of every command that runs on all hosts."""
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first: one process per host (TPU pods, SLURM, local runs)")
  p.add_argument("--coordinator", metavar="HOST:PORT",
                 help=f"process 0's address and a free port (implies --distributed; default ${ENV['coordinator']})")
  p.add_argument("--num_processes", type=int, metavar="N",
                 help=f"number of processes (implies --distributed; default ${ENV['num_processes']})")
  p.add_argument("--process_id", type=int, metavar="I",
                 help=f"this process's id in [0, N) (implies --distributed; default ${ENV['process_id']})")
  p.add_argument("--cpu_devices", type=int, metavar="N",
                 help="simulated CPU devices in this process (default: XLA_FLAGS' "
                      "--xla_force_host_platform_device_count, else 1)")
  return p


def setup_logging() -> None:
  """INFO lines with the time; the libraries' chatter (TFDS warns of every custom builder config) kept out."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  logging.getLogger("gcsfs").setLevel(logging.WARNING)  # a gs:// workdir: one INFO line per file opened


def parser() -> argparse.ArgumentParser:
  p = tool_parser("jaxtrain", USAGE, __doc__)
  p.add_argument("--config", help="a config file, optionally with :arg for get_config(arg)")
  p.add_argument("--workdir", help="where config.json, metrics and checkpoints go")
  p.add_argument("--helpfull", action="store_true", help="list every config field (type, default, value) and exit")
  return add_host_flags(p)


def parse_tool_args(tool_parser: argparse.ArgumentParser, argv: list[str]):
  """(parsed flags, `--config.x=y` overrides) of a tool's command line (flag files expanded); ConfigError."""
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  try:
    rest, overrides = split_overrides(expand_flagfiles(list(argv)))
    return tool_parser.parse_args(rest), overrides
  except UsageError as e:
    raise cfg_lib.ConfigError(str(e)) from None


def run_tool(name: str, tool_parser: argparse.ArgumentParser, argv: list[str] | None, act):
  """(flags, act(flags)) of a tool over a run's own config (export, evaluate), or None after printing its one-line
  error: no `--config.x=y` flags, and a bad input (config, data, checkpoint) is one line on stderr."""
  from jaxtrain import checkpoint, data  # pylint: disable=g-import-not-at-top
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  setup_logging()
  try:
    args, overrides = parse_tool_args(tool_parser, sys.argv[1:] if argv is None else list(argv))
    if overrides:
      raise cfg_lib.ConfigError(f"--config.{overrides[0]}: {name} takes the run's own config; it has no --config flags")
    return args, act(args)
  except (cfg_lib.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
    print(f"jaxtrain.{name}: error: {e}", file=sys.stderr)
    return None


def parse(argv: list[str]):
  """(config, workdir) from command-line arguments; errors raise ConfigError (UsageError is one).

  Also joins the distributed run when asked (before JAX starts its backends). `--helpfull`
  prints the config fields and exits.
  """
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  try:
    rest, overrides = split_overrides(expand_flagfiles(list(argv)))
    args, unknown = parser().parse_known_args(rest)
  except UsageError as e:
    raise cfg_lib.ConfigError(str(e)) from None
  if unknown:
    raise cfg_lib.ConfigError(f"unrecognized argument {unknown[0]!r}; config fields are set with "
                              "--config.<field>=<value> (--helpfull lists them)")
  if args.helpfull:
    print(helpfull(cfg_lib.load(args.config, overrides) if args.config else None, args.config), end="")
    raise SystemExit(0)
  for flag in ("config", "workdir"):
    if getattr(args, flag) is None:
      raise cfg_lib.ConfigError(f"--{flag} is required; usage: {USAGE.splitlines()[0]}")
  config = cfg_lib.load(args.config, overrides)  # before joining the other hosts: a typo fails at once
  try:
    start_jax(args)
  except UsageError as e:
    raise cfg_lib.ConfigError(str(e)) from None
  return config, args.workdir


def main(argv: list[str] | None = None) -> int:
  from jaxtrain import malloc  # pylint: disable=g-import-not-at-top
  if argv is None:  # a real command line: on a CPU run, may restart the process with malloc tuned (see malloc.py)
    malloc.tune_process()
  setup_logging()
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
