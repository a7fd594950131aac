r"""Sweeps: a grid of ordinary runs of the CLI, resumable, with a results table and a plot.

    python -m jaxtrain.sweep --config=configs/lm_small.py:tiny --workdir=runs/lr_width \
        --grid "model.d_model=64,128,256;model.num_heads=2,4,8" --grid optim.lr=2e-4:1.6e-2:x2 \
        --config.train.steps=500 [--parallel N] [--plot lr,d_model]

Each `--grid` is one axis and the sweep is their cartesian product (the last axis
varies fastest); fields joined by `;` in one `--grid` vary together (zipped).
Values are `a,b,c` (parsed as the field's type, as `--config.` values are) or
`LO:HI:xK`, the geometric grid LO, LO·K, LO·K², ... up to HI (relative tolerance
1e-9; integers stay integers, floats are rounded to 12 significant digits, so
`1e-4:9e-4:x3` is 0.0001, 0.0003, 0.0009, not 0.00030000000000000003, ...).

Every point is one run of `python -m jaxtrain` in a subprocess, in its own
workdir DIR/points/<name> (<name>: the point's values, `d_model=64,lr=0.0002`,
each field by its shortest unique dotted suffix), its output in log.txt there.
Its exit code is its status: 0 ok, 3 diverged (loss or gradient not finite),
2 error (the config or data cannot run; one line), anything else failed (a
crash or a kill). DIR/points/<name>/result.json records it with the final losses
from the point's metrics.jsonl, and DIR/results.csv, DIR/results.md (and with
`--plot X[,CURVE]` DIR/loss_vs_<X>.png) are rewritten after every point.

Resume: the same command again skips ok, diverged and error points and reruns
failed or unfinished ones in their workdirs, which resume from their latest
checkpoints. DIR/sweep.json holds the sweep's definition (config, grid,
overrides and the resolved base config): another sweep on the same DIR is
refused. To retry a finished point, delete its result.json.

Ctrl-C or SIGTERM is forwarded to the running points, which save a checkpoint
and exit (a second Ctrl-C aborts them at once), and the sweep stops; if the
sweep itself is killed, its points get SIGTERM from the kernel
(PR_SET_PDEATHSIG, Linux) and do the same.

`--parallel N` runs N points at once, each pinned to its own devices: on GPUs
disjoint CUDA_VISIBLE_DEVICES subsets, on CPU disjoint sets of cores
(sched_setaffinity); TPUs are not supported yet. Nothing here imports JAX: the
sweep process only starts, watches and records.
"""

from __future__ import annotations

import argparse
import sys

from jaxtrain import __main__ as cli
from jaxtrain import config as cfg_lib
from jaxtrain.sweep import runner

USAGE = ("python -m jaxtrain.sweep --config=FILE[:ARG] --workdir=DIR --grid FIELD=VALUES [--grid ...]\n"
         "       [--parallel N] [--plot X[,CURVE]] [--config.FIELD=VALUE ...] [--flagfile=FILE] [--dry_run]")


def parser() -> argparse.ArgumentParser:
  """The sweep's own flags; `--config.` overrides and `--flagfile` are split off first, as the CLI does."""
  p = cli.tool_parser("python -m jaxtrain.sweep", USAGE, __doc__)
  p.add_argument("--config", required=True, help="a config file, optionally with :arg for get_config(arg)")
  p.add_argument("--workdir", required=True, help="the sweep's directory: sweep.json, points/<name>/, results")
  p.add_argument("--grid", action="append", default=[], metavar="FIELD=VALUES",
                 help="one axis: FIELD=a,b,c or FIELD=LO:HI:xK; 'F1=..;F2=..' zips fields (equal lengths)")
  p.add_argument("--parallel", type=int, default=1, metavar="N",
                 help="points at once, each on its own GPUs or CPU cores (default 1)")
  p.add_argument("--plot", metavar="X[,CURVE]", help="also write loss_vs_<X>.png: final eval loss against X, "
                 "one curve per value of CURVE")
  p.add_argument("--dry_run", action="store_true", help="check the sweep and list its points and their commands; "
                 "run nothing")
  return p


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 when every point finished (ok, diverged or error), 1 if some failed, 2 for a command that cannot
  run, 128 + the signal number when stopped by SIGINT or SIGTERM."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, overrides = cli.parse_tool_args(parser(), argv)
    if args.dry_run:
      print("\n".join(runner.dry_run(args.config, args.grid, args.workdir, overrides, args.parallel, args.plot)))
      return 0
    rows = runner.run(args.config, args.grid, args.workdir, overrides, parallel=args.parallel, plot=args.plot,
                      argv=argv)
  except cfg_lib.ConfigError as e:
    print(f"jaxtrain.sweep: error: {e}", file=sys.stderr)
    return 2
  except runner.Interrupted as e:
    print(f"jaxtrain.sweep: stopped by {e.args[0]}; run the same command to continue", file=sys.stderr)
    return 128 + e.signum
  return 1 if any(r["status"] == "failed" for r in rows) else 0
