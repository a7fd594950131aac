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
import ast
import csv
import ctypes
import dataclasses
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import ml_collections

from jaxtrain import __main__ as cli
from jaxtrain import config as cfg_lib
from jaxtrain import paths

USAGE = ("python -m jaxtrain.sweep --config=FILE[:ARG] --workdir=DIR --grid FIELD=VALUES [--grid ...]\n"
         "       [--parallel N] [--plot X[,CURVE]] [--config.FIELD=VALUE ...] [--flagfile=FILE] [--dry_run]")
EXIT_STATUS = {0: "ok", 3: "diverged", 2: "error"}   # any other exit code: "failed" (the CLI's codes, __main__.py)
STATUSES = ("ok", "diverged", "error", "failed")
FINISHED = ("ok", "diverged", "error")                # skipped on a rerun; "failed" and unfinished points run again
GEOMETRIC = re.compile(r"([^:,]+):([^:,]+):x([^:,]+)")
REL_TOL = 1e-9
MAX_POINTS_PER_AXIS = 1000


def _print(line: str) -> None:
  print(line, flush=True)  # a sweep's log is read while it runs, often from a file


class Interrupted(KeyboardInterrupt):
  """The sweep stopped on SIGINT or SIGTERM after its running points saved and exited; rerun it to continue."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


# ---------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Axis:
  """One `--grid`: its fields (several when zipped) and each field's values as command-line strings."""
  spec: str
  fields: tuple[str, ...]
  raws: tuple[tuple[str, ...], ...]  # raws[i]: the values of fields[i]
  geometric: tuple[bool, ...]

  def __len__(self):
    return len(self.raws[0])


def _number(raw: str, spec: str) -> int | float:
  try:
    return int(raw)
  except ValueError:
    pass
  try:
    return float(raw)
  except ValueError:
    raise cfg_lib.ConfigError(f"--grid {spec}: {raw!r} is not a number (LO:HI:xK needs numbers)") from None


def geometric(lo: int | float, hi: int | float, k: int | float, spec: str = "") -> list[int | float]:
  """LO, LO·K, LO·K², ... while ≤ HI·(1 + 1e-9); integers if all three are, else floats to 12 digits."""
  where = f"--grid {spec}: " if spec else ""
  if not (lo > 0 and k > 1 and hi >= lo):
    raise cfg_lib.ConfigError(f"{where}LO:HI:xK needs 0 < LO <= HI and K > 1 (got LO={lo}, HI={hi}, K={k})")
  ints = all(isinstance(v, int) for v in (lo, hi, k))
  values = []
  while len(values) <= MAX_POINTS_PER_AXIS:
    v = lo * k ** len(values)  # a power, not repeated products: no drift over long grids
    if v > hi * (1 + REL_TOL):
      return values
    values.append(v if ints else float(f"{v:.12g}"))
  raise cfg_lib.ConfigError(f"{where}more than {MAX_POINTS_PER_AXIS} values; raise K or narrow LO:HI")


def parse_axis(spec: str) -> Axis:
  """One `--grid` value: `field=a,b,c`, `field=LO:HI:xK`, or several such joined by `;` (zipped)."""
  fields, raws, geo = [], [], []
  for part in spec.split(";"):
    field, eq, values = (s.strip() for s in part.partition("="))
    if not (field and eq and values):
      raise cfg_lib.ConfigError(f"--grid {spec!r}: expected FIELD=VALUES (a,b,c or LO:HI:xK), several joined by ';'")
    field = field.removeprefix("--config.").removeprefix("config.")
    if field in fields:
      raise cfg_lib.ConfigError(f"--grid {spec!r}: {field} appears twice")
    m = GEOMETRIC.fullmatch(values)
    if m:
      nums = geometric(*(_number(g.strip(), spec) for g in m.groups()), spec=spec)
      raws.append(tuple(repr(v) for v in nums))
    else:
      items = tuple(v.strip() for v in values.split(","))
      if not all(items):
        raise cfg_lib.ConfigError(f"--grid {spec!r}: an empty value in {values!r}")
      raws.append(items)
    fields.append(field)
    geo.append(bool(m))
  lengths = {f: len(r) for f, r in zip(fields, raws)}
  if len(set(lengths.values())) > 1:
    raise cfg_lib.ConfigError(f"--grid {spec!r}: zipped fields need equally many values, got "
                              + ", ".join(f"{n} for {f}" for f, n in lengths.items()))
  return Axis(spec, tuple(fields), tuple(raws), tuple(geo))


def parse_grid(grid) -> list[Axis]:
  """All `--grid` values; a field may be swept by one axis only."""
  if not grid:
    raise cfg_lib.ConfigError("a sweep needs at least one --grid FIELD=VALUES")
  axes = [parse_axis(g) for g in grid]
  seen = [f for a in axes for f in a.fields]
  twice = sorted({f for f in seen if seen.count(f) > 1})
  if twice:
    raise cfg_lib.ConfigError(f"--grid: {twice[0]} is swept by two --grid axes; zip them with ';' or drop one")
  return axes


def _generic(raw: str):
  """A value without a schema to go by: bool, int, float, None, else the string (as a `--config.` value reads)."""
  if raw.lower() in ("true", "false"):
    return raw.lower() == "true"
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw
  return value if isinstance(value, (int, float, type(None))) else raw


def _typed(config, field: str, raw: str):
  """`raw` parsed as `field`'s type in `config`, by the CLI's own parser; unknown fields name the nearest."""
  c = ml_collections.ConfigDict(config)  # a copy: `config` stays untouched
  try:
    cfg_lib.set_field(c, field, raw)
  except cfg_lib.ConfigError as e:
    raise cfg_lib.ConfigError(f"--grid: {e}") from None
  return cfg_lib.get_field(c, field)


def _points_raw(axes: list[Axis]) -> list[dict[str, str]]:
  """The cartesian product of the axes, last fastest: [{field: raw value}, ...]."""
  rows = []
  for combo in itertools.product(*(range(len(a)) for a in axes)):
    rows.append({f: a.raws[j][i] for a, i in zip(axes, combo) for j, f in enumerate(a.fields)})
  return rows


def expand(grid: list[str], config=None) -> list[dict[str, object]]:
  """The points' values, in order: the cartesian product of the `--grid` axes (last fastest), zipped fields together.

  Without `config` values are parsed as the CLI parses a literal (bool, int, float, else str);
  with a loaded `config` as the type of each field there, unknown fields being an error.
  """
  axes = parse_grid(grid)
  parse = (lambda f, r: _generic(r)) if config is None else (lambda f, r: _typed(config, f, r))
  return [{f: parse(f, r) for f, r in p.items()} for p in _points_raw(axes)]


# ---------------------------------------------------------------- names


def short_names(fields) -> dict[str, str]:
  """{field: its shortest dotted suffix that no other field ends with} ('optim.lr' -> 'lr')."""
  out = {}
  for f in fields:
    parts = f.split(".")
    for n in range(1, len(parts) + 1):
      s = ".".join(parts[-n:])
      if not any(g != f and (g == s or g.endswith("." + s)) for g in fields):
        break
    out[f] = s
  return out


def format_value(v) -> str:
  """A value as it appears in a point's name: `%g` for floats, str otherwise."""
  return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(values: dict, shorts: dict[str, str]) -> str:
  """`d_model=64,lr=0.0002`: the point's values in grid order, fields by their short names ('/' becomes '_')."""
  return ",".join(f"{shorts[f]}={format_value(v)}" for f, v in values.items()).replace(os.sep, "_")


def _resolve_field(name: str, fields: list[str], what: str) -> str:
  """A swept field named in full or by a unique dotted suffix (as `--plot lr,d_model`)."""
  if name in fields:
    return name
  hits = [f for f in fields if f.endswith("." + name)]
  if len(hits) == 1:
    return hits[0]
  raise cfg_lib.ConfigError(f"{what} {name!r} is {'ambiguous among ' + str(hits) if hits else 'not a swept field'}; "
                            f"the swept fields are {fields}")


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass
class Point:
  """One run of the sweep."""
  index: int
  name: str
  values: dict[str, object]  # typed, in grid order
  args: list[str]            # its `--config.<field>=<value>` flags
  steps: int                 # its train.steps: an exit 0 short of it was stopped, not finished
  workdir: str


@dataclasses.dataclass
class Plan:
  """A checked sweep: its points in grid order and the definition DIR/sweep.json keeps."""
  config: str
  axes: list[Axis]
  overrides: list[str]
  points: list[Point]
  definition: dict


def _local_workdir(workdir: str) -> str:
  """The sweep's directory, absolute. A bucket is refused: the sweep holds a lock and its points' logs (their
  processes' output, as they run) in local files."""
  if paths.is_remote(workdir):
    raise cfg_lib.ConfigError(f"--workdir={workdir}: a sweep's directory must be local (it holds a lock and the "
                              "points' logs as they run); use a local --workdir and copy it to the bucket after")
  return os.path.abspath(os.path.expanduser(workdir))


def _spec_abspath(spec: str) -> str:
  path, colon, arg = spec.partition(":")
  return os.path.abspath(os.path.expanduser(path)) + colon + arg


def plan(config: str, grid: list[str], workdir: str, overrides=()) -> Plan:
  """Everything checked before anything runs: the grid's fields and values against the config schema, every
  point's config, unique names. Raises ConfigError (one line)."""
  overrides = [o.removeprefix("--config.") for o in overrides]
  axes = parse_grid(grid)
  fields = [f for a in axes for f in a.fields]
  fixed = {o.partition("=")[0] for o in overrides}
  for f in fields:
    if f in fixed:
      raise cfg_lib.ConfigError(f"{f} is both swept (--grid) and fixed (--config.{f}); drop one")
  base = cfg_lib.load(config, overrides)
  for f in fields:  # names the grid in the error, with the nearest field, before any point's config is built
    _typed(base, f, next(a.raws[a.fields.index(f)][0] for a in axes if f in a.fields))
  shorts = short_names(fields)
  points, names = [], {}
  for i, raw in enumerate(_points_raw(axes)):
    try:
      c = cfg_lib.load(config, overrides + [f"{f}={r}" for f, r in raw.items()])
    except cfg_lib.ConfigError as e:
      raise cfg_lib.ConfigError(f"--grid point {', '.join(f'{f}={r}' for f, r in raw.items())}: {e}") from None
    values = {f: cfg_lib.get_field(c, f) for f in raw}
    name = point_name(values, shorts)
    if name in names:
      raise cfg_lib.ConfigError(f"--grid: points {names[name]} and {i} are both named {name!r} (a repeated value, "
                                "or values equal to 6 digits); make the grid's values distinct")
    if len(name.encode()) > 255:
      raise cfg_lib.ConfigError(f"--grid: the point name {name[:60]}... is longer than a file name may be (255 "
                                "bytes); sweep fewer fields at once")
    names[name] = i
    points.append(Point(i, name, values, [f"--config.{f}={r}" for f, r in raw.items()], c.train.steps,
                        os.path.join(workdir, "points", name)))
  definition = {
      "config": _spec_abspath(config),
      "grid": [{f: [_typed(base, f, r) for r in rs] for f, rs in zip(a.fields, a.raws)} for a in axes],
      "overrides": overrides,
      "base_config": json.loads(base.to_json_best_effort()),
  }
  return Plan(config, axes, overrides, points, definition)


# ---------------------------------------------------------------- devices: what each of N points at once gets


@dataclasses.dataclass
class Slot:
  """What one concurrently running point is pinned to: CPU cores and/or environment (CUDA_VISIBLE_DEVICES)."""
  label: str = "all devices"
  cpus: tuple[int, ...] | None = None
  env: dict[str, str] = dataclasses.field(default_factory=dict)


def _platform() -> tuple[str, list[str]]:
  """('cpu' | 'gpu' | 'tpu', the GPU ids) as the points' JAX would see it, found without importing JAX here."""
  wanted = os.environ.get("JAX_PLATFORMS", "").lower().split(",")[0].strip()
  if wanted == "cpu":
    return "cpu", []
  if wanted == "tpu" or os.environ.get("TPU_ACCELERATOR_TYPE") or any(
      n.startswith("accel") for n in _listdir("/dev")):
    return "tpu", []
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    ids = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return ("gpu", ids) if ids else ("cpu", [])
  if shutil.which("nvidia-smi"):
    try:
      out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
      out = ""
    ids = [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]
    if ids:
      return "gpu", ids
  return "cpu", []


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def _split(items: list, n: int) -> list[list]:
  """`items` in `n` contiguous, disjoint groups whose sizes differ by at most one."""
  return [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]


def slots(parallel: int, log=_print) -> list[Slot]:
  """One Slot per point that may run at once; with one, the point gets the whole machine."""
  if parallel < 1:
    raise cfg_lib.ConfigError(f"--parallel={parallel} must be at least 1")
  if parallel == 1:
    return [Slot()]
  platform, gpus = _platform()
  if platform == "tpu":
    raise cfg_lib.ConfigError(f"--parallel={parallel}: running several points at once on a TPU host is not supported "
                              "yet (one process owns the chips); use --parallel 1")
  if platform == "gpu":
    if parallel > len(gpus):
      raise cfg_lib.ConfigError(f"--parallel={parallel} exceeds the {len(gpus)} GPU(s) here: each point needs a GPU of "
                                f"its own; use --parallel {len(gpus)} or fewer")
    groups = _split(gpus, parallel) if len(gpus) % parallel == 0 else [[g] for g in gpus[:parallel]]
    if len(gpus) % parallel:
      log(f"sweep: {len(gpus)} GPUs do not split evenly into {parallel}: one GPU per point, "
          f"{len(gpus) - parallel} unused")
    return [Slot(f"GPU {','.join(g)}", None, {"CUDA_VISIBLE_DEVICES": ",".join(g)}) for g in groups]
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if not cpus:
    raise cfg_lib.ConfigError(f"--parallel={parallel}: this system cannot pin processes to cores; use --parallel 1")
  if parallel > len(cpus):
    raise cfg_lib.ConfigError(f"--parallel={parallel} exceeds the {len(cpus)} CPU cores this process may use: each "
                              f"point needs a core of its own; use --parallel {len(cpus)} or fewer")
  return [Slot(f"cores {g[0]}-{g[-1]}" if len(g) > 1 else f"core {g[0]}", tuple(g)) for g in _split(cpus, parallel)]


def _prctl():
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def _child_setup(cpus, parent: int):
  """Runs in the point's process before exec: its cores, and SIGTERM (save and exit) if the sweep dies."""

  def setup():
    if cpus is not None:
      os.sched_setaffinity(0, cpus)
    if _PRCTL is not None:
      _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
      if os.getppid() != parent:  # the sweep died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

  return setup


# ---------------------------------------------------------------- one point's run and its result


@dataclasses.dataclass
class Attempt:
  """A point's running process."""
  point: Point
  slot: Slot
  popen: subprocess.Popen
  log_offset: int   # where this attempt's output starts in log.txt
  started: float
  signals: int = 0  # how many signals the sweep forwarded to it


def command(plan_: Plan, point: Point) -> list[str]:
  """The point's command line: the real CLI, the sweep's fixed overrides, then its values."""
  return [sys.executable, "-m", "jaxtrain", f"--config={plan_.config}", f"--workdir={point.workdir}",
          *[f"--config.{o}" for o in plan_.overrides], *point.args]


def start(plan_: Plan, point: Point, slot: Slot) -> Attempt:
  """Starts the point's run in its own session (a Ctrl-C at the terminal reaches it only through the sweep)."""
  os.makedirs(point.workdir, exist_ok=True)
  cmd = command(plan_, point)
  path = os.path.join(point.workdir, "log.txt")
  with open(path, "a", encoding="utf-8") as out:
    out.write(f"=== sweep: {time.strftime('%Y-%m-%d %H:%M:%S')} on {slot.label}: {' '.join(cmd)}\n")
    out.flush()
    offset = out.tell()
    popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, **slot.env), start_new_session=True,
                             preexec_fn=_child_setup(slot.cpus, os.getpid()))
  return Attempt(point, slot, popen, offset, time.monotonic())


def losses(workdir: str) -> dict:
  """final_train_loss, final_eval_loss, initial_loss and steps from a point's metrics.jsonl (None when missing)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
    rows = read_metrics(workdir)
  train = [r for r in rows if "loss" in r]
  evals = [r for r in rows if "eval_loss" in r]
  return {"final_train_loss": train[-1]["loss"] if train else None,
          "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
          "initial_loss": train[0]["loss"] if train else None,
          "steps": max((r["step"] for r in rows), default=0)}


def _last_line(path: str, offset: int) -> str | None:
  """The last non-empty line written to `path` after `offset` (progress bars' carriage returns split lines)."""
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      text = f.read().decode("utf-8", "replace")
  except OSError:
    return None
  lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
  return lines[-1][:2000] if lines else None


def finish(attempt: Attempt, rc: int, forwarded: bool) -> dict | None:
  """The point's result row (written to result.json), or None when the sweep stopped it unfinished."""
  p = attempt.point
  found = losses(p.workdir)
  status = EXIT_STATUS.get(rc, "failed")
  error = None
  if rc < 0:
    error = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"killed by signal {-rc}"
  elif status != "ok":
    error = _last_line(os.path.join(p.workdir, "log.txt"), attempt.log_offset)
  elif found["steps"] < p.steps:  # exit 0 after a signal: saved and stopped, not finished
    status, error = "failed", f"stopped at step {found['steps']} of {p.steps} (a signal to the point)"
  if forwarded and status == "failed":
    return None  # the sweep stopped it: unfinished, not failed; the rerun resumes it
  before = read_result(p.workdir) or {}  # an earlier failed attempt's time counts too
  wall = time.monotonic() - attempt.started + (before.get("wall_s") or 0.0)
  row = {"name": p.name, "values": p.values, "status": status, **found, "wall_s": round(wall, 1), "error": error}
  _write_json(os.path.join(p.workdir, "result.json"), row)
  return row


def _write_json(path: str, obj) -> None:
  _write_text(path, json.dumps(obj, indent=2) + "\n")


def _write_text(path: str, text: str) -> None:
  """Written whole or not at all: a kill mid-write leaves the old file."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def read_result(point_workdir: str) -> dict | None:
  """A point's result.json (None if it has not finished), with "workdir" added."""
  try:
    with open(os.path.join(point_workdir, "result.json"), encoding="utf-8") as f:
      row = json.load(f)
  except (OSError, ValueError):
    return None
  return dict(row, workdir=os.path.abspath(point_workdir))


def read_results(workdir: str) -> list[dict]:
  """The result.json rows of all finished points of the sweep in `workdir`, in grid order; each with "workdir"."""
  points = os.path.join(workdir, "points")
  try:
    with open(os.path.join(workdir, "sweep.json"), encoding="utf-8") as f:
      order = json.load(f)["points"]
  except (OSError, ValueError, KeyError):
    order = []
  names = order + sorted(n for n in _listdir(points) if n not in order)
  rows = [read_result(os.path.join(points, n)) for n in names]
  return [r for r in rows if r is not None]


# ---------------------------------------------------------------- the tables and the plot


def table_rows(plan_: Plan, results: dict[str, dict], running=()) -> list[dict]:
  """One row per point in grid order: its values and result, "pending" (or "running") where it has none yet."""
  rows = []
  for p in plan_.points:
    r = results.get(p.name) or {"status": "running" if p.name in running else "pending"}
    rows.append({**p.values, "status": r["status"], "final_train_loss": r.get("final_train_loss"),
                 "final_eval_loss": r.get("final_eval_loss"), "steps": r.get("steps"), "wall_s": r.get("wall_s"),
                 "error": r.get("error")})
  return rows


def to_csv(rows: list[dict]) -> str:
  out = io.StringIO()
  w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
  w.writeheader()
  w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
  return out.getvalue()


def to_markdown(rows: list[dict], shorts: dict[str, str]) -> str:
  """The table with fields by their short names, losses to 4 decimals, the best final eval loss in bold."""
  evals = [r["final_eval_loss"] for r in rows if r["status"] == "ok" and r["final_eval_loss"] is not None]
  best = min(evals, default=None)

  def cell(k, v):
    if v is None:
      return ""
    if k in ("final_train_loss", "final_eval_loss"):
      return f"**{v:.4f}**" if k == "final_eval_loss" and v == best else f"{v:.4f}"
    if k == "wall_s":
      return f"{v:.0f}"
    return (format_value(v) if k in shorts else str(v)).replace("|", "\\|")

  head = [shorts.get(k, k) for k in rows[0]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(cell(k, v) for k, v in r.items()) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], x: str, curve: str | None, shorts: dict[str, str], path: str, log_x: bool) -> None:
  """Final eval loss against swept field `x`, one curve per value of `curve` (and of any other swept field);
  diverged points are marked with an x on the top edge."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from jaxtrain import plots  # pylint: disable=import-outside-toplevel
  others = ([curve] if curve else []) + [f for f in shorts if f not in (x, curve)]
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  plots.sweep(rows, x, ax=ax, by=others, failed=("diverged",), ms=6, logx=log_x, xlabel=x, ylabel="final eval loss",
              label=lambda key: ", ".join(f"{shorts[f]}={format_value(v)}" for f, v in zip(others, key)) or None,
              title=f"final eval loss against {shorts[x]}" + ("  (x: diverged)" if any(
                  r["status"] == "diverged" for r in rows) else ""))
  ax.grid(alpha=0.3)
  plots.save(fig, path, dpi=120)


class Reporter:
  """Rewrites DIR/results.csv, results.md (and the plot) from the points' results."""

  def __init__(self, plan_: Plan, workdir: str, plot_spec: str | None, log=_print):
    self.plan, self.workdir, self.log = plan_, workdir, log
    fields = [f for a in plan_.axes for f in a.fields]
    self.shorts = short_names(fields)
    self.x = self.curve = None
    if plot_spec:
      x, _, curve = plot_spec.partition(",")
      self.x = _resolve_field(x.strip(), fields, "--plot")
      self.curve = _resolve_field(curve.strip(), fields, "--plot's curve") if curve.strip() else None
      if self.curve == self.x:
        raise cfg_lib.ConfigError(f"--plot {plot_spec}: the curve field must differ from the x field")
      xs = [p.values[self.x] for p in plan_.points]
      numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in xs)
      # A log axis for a LO:HI:xK axis, and for positive values spanning a decade or more written out by hand.
      self.log_x = next(a.geometric[a.fields.index(self.x)] for a in plan_.axes if self.x in a.fields) or (
          numeric and max(xs) >= 10 * min(xs))
      self.matplotlib = _has_matplotlib()
      if not self.matplotlib:
        log("sweep: matplotlib is not installed, so no plot (pip install -e '.[plots]'); the tables are written")

  def write(self, results: dict[str, dict], running=()) -> None:
    rows = table_rows(self.plan, results, running)
    _write_text(os.path.join(self.workdir, "results.csv"), to_csv(rows))
    _write_text(os.path.join(self.workdir, "results.md"), to_markdown(rows, self.shorts))
    if self.x and self.matplotlib and any(r["status"] in ("ok", "diverged") for r in rows):
      try:
        plot(rows, self.x, self.curve, self.shorts, self.plot_path, self.log_x)
      except Exception as e:  # pylint: disable=broad-except  # a plot is not worth stopping the sweep for
        self.log(f"sweep: the plot failed ({type(e).__name__}: {e}); the tables are written")

  @property
  def plot_path(self) -> str:
    return os.path.join(self.workdir, f"loss_vs_{self.shorts[self.x]}.png")


def _has_matplotlib() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------- the sweep


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out |= _flat(v, f"{prefix}{k}.")
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_definition(workdir: str, definition: dict, argv: list[str] | None) -> None:
  """Writes DIR/sweep.json on the first run; on a rerun refuses (one line) a sweep that differs from it."""
  path = os.path.join(workdir, "sweep.json")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except FileNotFoundError:
    saved = None
  except (OSError, ValueError) as e:
    raise cfg_lib.ConfigError(f"{path} is unreadable ({e}); move it away or use a new --workdir") from None
  now = json.loads(json.dumps(definition))  # tuples and ints as JSON has them
  if saved is not None:
    # The overrides are compared by what they resolve to: their order, or fixing a default, changes nothing.
    for key, what in (("config", "the config file differs"), ("grid", "the grid differs")):
      if saved.get(key) != now[key]:
        raise cfg_lib.ConfigError(f"{workdir} holds another sweep: {what} ({json.dumps(saved.get(key))} there, "
                                  f"{json.dumps(now[key])} now); use a new --workdir, or rerun the command in {path}")
    old, new = _flat(saved.get("base_config", {})), _flat(now["base_config"])
    # Fields on one side only are the schema's change (a newer jaxtrain), not the sweep's.
    changed = [k for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    if changed:
      k = changed[0]
      raise cfg_lib.ConfigError(f"{workdir} holds another sweep: the config's {k} was {old.get(k)!r} there and is "
                                f"{new.get(k)!r} now (another --config. override, or an edited config file); use "
                                "a new --workdir")
  _write_json(path, dict(now, command=argv if argv is not None else (saved or {}).get("command")))


class _Lock:
  """DIR/.sweep.lock, held while the sweep runs (the kernel drops it if the sweep dies): one sweep per DIR."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".sweep.lock")

  def __enter__(self):
    import fcntl  # pylint: disable=import-outside-toplevel
    self.f = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self.f.seek(0)
      holder = self.f.read().strip()
      self.f.close()
      raise cfg_lib.ConfigError(f"another sweep ({holder or 'a process'}) is running in "
                                f"{os.path.dirname(self.path)}; wait for it to end or use another --workdir") from None
    self.f.seek(0)
    self.f.truncate()
    self.f.write(f"pid {os.getpid()}\n")
    self.f.flush()
    return self

  def __exit__(self, *_):
    self.f.close()


class _Forwarder:
  """SIGINT and SIGTERM to the sweep: forwarded to the running points (they save and exit), and no new point starts.

  The points run in their own sessions, so a terminal's Ctrl-C reaches them once, from here; a second Ctrl-C
  is forwarded too and makes them stop at once (jaxtrain/train.py).
  """

  def __init__(self, running: dict):
    self.running, self.received, self._old = running, None, {}

  def _on_signal(self, signum, _):
    self.received = self.received or signum
    for attempt in list(self.running.values()):
      self.forward(attempt, signum)

  @staticmethod
  def forward(attempt: Attempt, signum: int) -> None:
    attempt.signals += 1  # a point the sweep signalled ends unfinished, not failed (see `finish`)
    if attempt.popen.poll() is None:
      try:
        attempt.popen.send_signal(signum)
      except ProcessLookupError:
        pass

  def __enter__(self):
    try:
      self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with whoever handles them there
      self._old = {}
    return self

  def __exit__(self, *_):
    for s, h in self._old.items():
      signal.signal(s, h)


def _describe(row: dict) -> str:
  parts = [row["status"]]
  for key, label in (("final_train_loss", "train"), ("final_eval_loss", "eval")):
    if row.get(key) is not None:
      parts.append(f"{label} {row[key]:.4f}")
  parts.append(f"{row.get('steps') or 0} steps, {row.get('wall_s') or 0:.0f} s")
  if row.get("error"):
    error = row["error"]
    parts.append(f"({error[:200]}{'...' if len(error) > 200 else ''})")
  return "  ".join(parts)


def summary(rows: list[dict], total: int | None = None) -> str:
  """'3 points: 2 ok, 1 diverged, 0 error, 0 failed; best final eval loss 4.1000 at lr=0.001' from result rows;
  of `total` points (default: as many as rows), the others not run yet."""
  total = len(rows) if total is None else total
  counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
  text = f"{total} points: " + ", ".join(f"{n} {s}" for s, n in counts.items())
  text += f", {total - len(rows)} not run" if total > len(rows) else ""
  ok = [r for r in rows if r["status"] == "ok" and r.get("final_eval_loss") is not None]
  if ok:
    best = min(ok, key=lambda r: r["final_eval_loss"])
    text += f"; best final eval loss {best['final_eval_loss']:.4f} at {best['name']}"
  return text


def run(config: str, grid: list[str], workdir: str, overrides=(), parallel: int = 1, plot: str | None = None,
        log=_print, argv: list[str] | None = None) -> list[dict]:
  """Runs (or skips, when finished) every point of the sweep; returns the result rows in grid order.

  `config`: FILE[:ARG]; `grid`: the `--grid` values; `overrides`: fixed `field=value` for every point.
  Rows are result.json's (see the module docstring) plus "workdir". Raises ConfigError (one line) before
  anything runs if the sweep cannot, and Interrupted after SIGINT/SIGTERM once the running points stopped.
  `argv` (the CLI's) is kept in DIR/sweep.json as the command that made the sweep.
  """
  workdir = _local_workdir(workdir)
  plan_ = plan(config, list(grid), workdir, overrides)
  reporter = Reporter(plan_, workdir, plot, log)
  pins = slots(parallel, log)
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  with _Lock(workdir):
    check_definition(workdir, dict(plan_.definition, points=[p.name for p in plan_.points]), argv)
    results = {p.name: r for p in plan_.points if (r := read_result(p.workdir)) and r["status"] in FINISHED}
    todo = [p for p in plan_.points if p.name not in results]
    n = len(plan_.points)
    log(f"sweep {workdir}: {n} points, {len(results)} finished, {len(todo)} to run"
        + (f", {len(pins)} at a time ({'; '.join(s.label for s in pins)})" if len(pins) > 1 else ""))
    reporter.write(results)
    running: dict[int, Attempt] = {}
    free = list(range(len(pins)))
    with _Forwarder(running) as signals:
      try:
        while (todo and not signals.received) or running:
          while todo and free and not signals.received:
            p, slot = todo.pop(0), free.pop(0)
            running[slot] = attempt = start(plan_, p, pins[slot])
            if signals.received and not attempt.signals:  # the signal came while it started: it gets it too
              signals.forward(attempt, signals.received)
            log(f"[{p.index + 1}/{n}] {p.name}: running (log: {os.path.join(p.workdir, 'log.txt')})")
          reporter.write(results, running={a.point.name for a in running.values()})
          for slot, rc in _wait_any(running):
            attempt = running.pop(slot)
            free.append(slot)
            free.sort()
            p = attempt.point
            row = finish(attempt, rc, forwarded=bool(attempt.signals))
            if row is None:
              log(f"[{p.index + 1}/{n}] {p.name}: stopped by {signal.Signals(signals.received).name}, unfinished; "
                  "rerun the sweep to resume it")
              continue
            results[p.name] = row
            log(f"[{p.index + 1}/{n}] {p.name}: {_describe(row)}")
          reporter.write(results, running={a.point.name for a in running.values()})
      except BaseException:  # a failure here (disk full, a bug): the running points save and exit before it surfaces
        for attempt in running.values():
          if not attempt.signals:
            signals.forward(attempt, signal.SIGTERM)
        for attempt in running.values():
          attempt.popen.wait()
        raise
    rows = [dict(results[p.name], workdir=p.workdir) for p in plan_.points if p.name in results]
    log(f"sweep {workdir}: {summary(rows, n)}")
    plotted = plot and os.path.exists(reporter.plot_path)
    log(f"results: {os.path.join(workdir, 'results.md')}, results.csv"
        + (f", {os.path.basename(reporter.plot_path)}" if plotted else ""))
    if signals.received:
      raise Interrupted(signals.received)
  return rows


def dry_run(config: str, grid: list[str], workdir: str, overrides=(), parallel: int = 1,
            plot: str | None = None) -> list[str]:
  """What `run` would do, as lines (each point: whether it would run or is finished, and its command); runs and
  writes nothing, but checks everything `run` checks first."""
  workdir = _local_workdir(workdir)
  plan_ = plan(config, list(grid), workdir, overrides)
  Reporter(plan_, workdir, plot, log=lambda s: None)
  pins = slots(parallel, log=lambda s: None)
  lines = []
  for p in plan_.points:
    r = read_result(p.workdir)
    state = f"finished ({r['status']})" if r and r["status"] in FINISHED else "would run"
    lines.append(f"[{p.index + 1}/{len(plan_.points)}] {p.name}: {state}: {' '.join(command(plan_, p))}")
  return lines + [f"{len(plan_.points)} points, {len(pins)} at a time"]


def _wait_any(running: dict[int, Attempt], poll_s: float = 0.1) -> list[tuple[int, int]]:
  """[(slot, exit code)] of the points that ended, blocking until one does."""
  while True:
    done = [(slot, a.popen.poll()) for slot, a in running.items()]
    done = [(slot, rc) for slot, rc in done if rc is not None]
    if done or not running:
      return done
    time.sleep(poll_s)


def write_summary(path: str, meta: dict, measurements, *, report_only: bool = False) -> None:
  """A study's summary.json: {"meta", "measurements"}. A report rebuilt without training (`report_only`) keeps the
  date, wall time, parallelism and load the training invocation recorded (or says the load was not recorded)."""
  if report_only and os.path.isfile(path):
    with open(path) as fh:
      saved = json.load(fh)["meta"]
    meta.update({k: saved[k] for k in ("date", "wall_min", "parallel", "load") if k in saved})
  elif report_only:
    meta["load"] = "not recorded (report rebuilt with --report-only)"
  with open(path, "w") as fh:
    json.dump({"meta": meta, "measurements": measurements}, fh, indent=1)


# ---------------------------------------------------------------- command line


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
      print("\n".join(dry_run(args.config, args.grid, args.workdir, overrides, args.parallel, args.plot)))
      return 0
    rows = run(args.config, args.grid, args.workdir, overrides, parallel=args.parallel, plot=args.plot, argv=argv)
  except cfg_lib.ConfigError as e:
    print(f"jaxtrain.sweep: error: {e}", file=sys.stderr)
    return 2
  except Interrupted as e:
    print(f"jaxtrain.sweep: stopped by {e.args[0]}; run the same command to continue", file=sys.stderr)
    return 128 + e.signum
  return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
