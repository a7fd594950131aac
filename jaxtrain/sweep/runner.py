"""The runner: a list of points, each one run of a trainer in a subprocess, resumable, N at a time on disjoint devices.

A point is a name, a config spec and overrides (`python -m jaxtrain --config=C --workdir=W --config.F=V ...`), or
another launch module (`module="grokking"`: the same flags to `python -m grokking`) or a whole command line
(`command=[...]`, "{workdir}" replaced, the overrides after it as `--config.F=V`). A grid (`plan`,
`grid_points`) is one way to make the list; `with_seeds` repeats each point over seeds (config field `seed`).
Every point runs in DIR/points/<name>, its output in log.txt there. Its exit code is its status (EXIT_STATUS: the
CLI's codes, jaxtrain/__main__.py): 0 ok, 3 diverged (loss or gradient not finite), 2 error (the config or data
cannot run; one line), anything else failed (a crash or a kill); an exit 0 short of the point's `steps` was
stopped by a signal: failed. DIR/points/<name>/result.json records it.

Resume: running the same points again skips ok, diverged and error points and reruns failed or unfinished ones in
their workdirs, which resume from their latest checkpoints. A point whose launch differs from the one recorded
in DIR/points/<name>/point.json is refused; new points may join a directory between invocations (DIR/sweep.json
keeps the points' order for `read_results`).

Ctrl-C or SIGTERM is forwarded to the running points, which save a checkpoint and exit (a second Ctrl-C aborts
them at once), and the runner stops (Interrupted); if the runner itself is killed, its points get SIGTERM from the
kernel (PR_SET_PDEATHSIG, Linux) and do the same. `parallel` N runs N points at once, each pinned to its own
devices: on GPUs disjoint CUDA_VISIBLE_DEVICES subsets, on CPU disjoint sets of cores (sched_setaffinity); TPUs
are not supported yet. Nothing here imports JAX: the runner only starts, watches and records.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from jaxtrain import config as cfg_lib
from jaxtrain import paths
from jaxtrain.sweep import grid as grid_lib
from jaxtrain.sweep import results as results_lib

EXIT_STATUS = {0: "ok", 3: "diverged", 2: "error"}   # any other exit code: "failed" (the CLI's codes, __main__.py)
STATUSES = results_lib.STATUSES
FINISHED = ("ok", "diverged", "error")                # skipped on a rerun; "failed" and unfinished points run again
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"                     # result.json's started and finished, UTC


def _print(line: str) -> None:
  print(line, flush=True)  # a sweep's log is read while it runs, often from a file


def status_of(rc: int) -> str:
  """A point's status from its exit code: ok, diverged, error, else failed."""
  return EXIT_STATUS.get(rc, "failed")


class Interrupted(KeyboardInterrupt):
  """The runner stopped on SIGINT or SIGTERM after its running points saved and exited; rerun it to continue."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


# ---------------------------------------------------------------- points


@dataclasses.dataclass
class Point:
  """One run: `python -m <module> --config=<config> --workdir=<workdir> --config.<override> ...`, or `command`."""
  name: str                                  # its directory: DIR/points/<name>
  config: str | None = None                  # FILE[:ARG]
  overrides: list[str] = dataclasses.field(default_factory=list)  # ["field=value", ...]
  values: dict = dataclasses.field(default_factory=dict)         # what the tables show, and grouping uses
  module: str = "jaxtrain"
  command: list[str] | None = None           # the launch instead ("{workdir}" replaced); the overrides follow it
  steps: int | None = None                   # its train.steps: an exit 0 short of it was stopped; None: no check
  env: dict = dataclasses.field(default_factory=dict)            # extra environment; a None value unsets
  index: int = 0                             # set by the runner: its place in the list
  workdir: str = ""                          # set by the runner


def command_line(point: Point) -> list[str]:
  """The point's command line: the launch module with its config, workdir and overrides, or its own command."""
  flags = [f"--config.{o}" for o in point.overrides]
  if point.command is not None:
    return [a.replace("{workdir}", point.workdir) for a in point.command] + flags
  return [sys.executable, "-m", point.module, *([f"--config={point.config}"] if point.config else []),
          f"--workdir={point.workdir}", *flags]


def with_seeds(points: list[Point], seeds) -> list[Point]:
  """Each point once per seed (config field `seed`), seeds varying fastest: `<name>,seed=S`, values["seed"] = S."""
  out = []
  for p in points:
    if "seed" in p.values or any(o.partition("=")[0] == "seed" for o in p.overrides):
      raise cfg_lib.ConfigError(f"point {p.name}: seed is set already; sweep seeds once")
    for s in seeds:
      out.append(dataclasses.replace(p, name=seed_name(p.name, s), overrides=[*p.overrides, f"seed={s}"],
                                     values={**p.values, "seed": s}, env=dict(p.env)))
  return out


def study_seeds(n: int) -> list[int | None]:
  """The seeds a study run with `--seeds n` launches: [None] for one (each point as it is, under its own name and
  its config's seed: a one-seed study's runs and names as before seeds were an axis), else 0, 1, ..., n-1."""
  if n < 1:
    raise cfg_lib.ConfigError(f"--seeds {n}: give 1 or more")
  return [None] if n == 1 else list(range(n))


def seeded(points: list[Point], n: int) -> list[Point]:
  """A study's points with `--seeds n`: as they are for n = 1, else `with_seeds(points, range(n))`."""
  seeds = study_seeds(n)
  return list(points) if seeds == [None] else with_seeds(points, seeds)


def seed_name(name: str, seed: int | None) -> str:
  """The name `with_seeds` gives a point's run with `seed` (`<name>,seed=S`); the name itself for None."""
  return name if seed is None else f"{name},seed={seed}"


def local_workdir(workdir: str) -> str:
  """The runner's directory, absolute. A bucket is refused: the runner holds a lock and its points' logs (their
  processes' output, as they run) in local files."""
  if paths.is_remote(workdir):
    raise cfg_lib.ConfigError(f"--workdir={workdir}: a sweep's directory must be local (it holds a lock and the "
                              "points' logs as they run); use a local --workdir and copy it to the bucket after")
  return os.path.abspath(os.path.expanduser(workdir))


def _spec_abspath(spec: str) -> str:
  path, colon, arg = spec.partition(":")
  return os.path.abspath(os.path.expanduser(path)) + colon + arg


# ---------------------------------------------------------------- a grid's points


@dataclasses.dataclass
class Plan:
  """A checked grid: its points in grid order and the definition DIR/sweep.json keeps."""
  config: str
  axes: list[grid_lib.Axis]
  overrides: list[str]
  points: list[Point]
  definition: dict

  @property
  def geometric(self) -> set[str]:
    return {f for a in self.axes for f, g in zip(a.fields, a.geometric) if g}


def plan(config: str, grid: list[str], workdir: str, overrides=()) -> Plan:
  """Everything checked before anything runs: the grid's fields and values against the config schema, every
  point's config, unique names. Raises ConfigError (one line)."""
  overrides = [o.removeprefix("--config.") for o in overrides]
  axes = grid_lib.parse_grid(grid)
  fields = [f for a in axes for f in a.fields]
  fixed = {o.partition("=")[0] for o in overrides}
  for f in fields:
    if f in fixed:
      raise cfg_lib.ConfigError(f"{f} is both swept (--grid) and fixed (--config.{f}); drop one")
  base = cfg_lib.load(config, overrides)
  for f in fields:  # names the grid in the error, with the nearest field, before any point's config is built
    grid_lib.typed(base, f, next(a.raws[a.fields.index(f)][0] for a in axes if f in a.fields))
  shorts = grid_lib.short_names(fields)
  points, names = [], {}
  for i, raw in enumerate(grid_lib.product(axes)):
    try:
      c = cfg_lib.load(config, overrides + [f"{f}={r}" for f, r in raw.items()])
    except cfg_lib.ConfigError as e:
      raise cfg_lib.ConfigError(f"--grid point {', '.join(f'{f}={r}' for f, r in raw.items())}: {e}") from None
    values = {f: cfg_lib.get_field(c, f) for f in raw}
    name = grid_lib.point_name(values, shorts)
    if name in names:
      raise cfg_lib.ConfigError(f"--grid: points {names[name]} and {i} are both named {name!r} (a repeated value, "
                                "or values equal to 6 digits); make the grid's values distinct")
    if len(name.encode()) > 255:
      raise cfg_lib.ConfigError(f"--grid: the point name {name[:60]}... is longer than a file name may be (255 "
                                "bytes); sweep fewer fields at once")
    names[name] = i
    points.append(Point(name, config, overrides + [f"{f}={r}" for f, r in raw.items()], values,
                        steps=c.train.steps, index=i, workdir=os.path.join(workdir, "points", name)))
  definition = {
      "config": _spec_abspath(config),
      "grid": [{f: [grid_lib.typed(base, f, r) for r in rs] for f, rs in zip(a.fields, a.raws)} for a in axes],
      "overrides": overrides,
      "base_config": json.loads(base.to_json_best_effort()),
  }
  return Plan(config, axes, overrides, points, definition)


def grid_points(config: str, grid: list[str], overrides=()) -> list[Point]:
  """A grid's points (checked as `plan` checks them), for `run_points`: config FILE[:ARG], `--grid` values."""
  return plan(config, list(grid), "", overrides).points


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
      n.startswith("accel") for n in results_lib.listdir("/dev")):
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
  """Runs in the point's process before exec: its cores, and SIGTERM (save and exit) if the runner dies."""

  def setup():
    if cpus is not None:
      os.sched_setaffinity(0, cpus)
    if _PRCTL is not None:
      _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
      if os.getppid() != parent:  # the runner died before prctl took effect
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
  signals: int = 0  # how many signals the runner forwarded to it
  started_utc: str = ""


def _environment(*layers: dict) -> dict[str, str]:
  env = dict(os.environ)
  for layer in layers:
    for k, v in layer.items():
      if v is None:
        env.pop(k, None)
      else:
        env[k] = v
  return env


def start(point: Point, slot: Slot, env=None) -> Attempt:
  """Starts the point's run in its own session (a Ctrl-C at the terminal reaches it only through the runner)."""
  os.makedirs(point.workdir, exist_ok=True)
  cmd = command_line(point)
  path = os.path.join(point.workdir, "log.txt")
  with open(path, "a", encoding="utf-8") as out:
    out.write(f"=== sweep: {time.strftime('%Y-%m-%d %H:%M:%S')} on {slot.label}: {' '.join(cmd)}\n")
    out.flush()
    offset = out.tell()
    popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=_environment(env or {}, point.env, slot.env), start_new_session=True,
                             preexec_fn=_child_setup(slot.cpus, os.getpid()))
  return Attempt(point, slot, popen, offset, time.monotonic(), started_utc=time.strftime(TIME_FORMAT, time.gmtime()))


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
  """The point's result row (written to result.json), or None when the runner stopped it unfinished."""
  p = attempt.point
  found = losses(p.workdir)
  status = status_of(rc)
  error = None
  if rc < 0:
    error = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"killed by signal {-rc}"
  elif status != "ok":
    error = _last_line(os.path.join(p.workdir, "log.txt"), attempt.log_offset)
  elif p.steps is not None and found["steps"] < p.steps:  # exit 0 after a signal: saved and stopped, not finished
    status, error = "failed", f"stopped at step {found['steps']} of {p.steps} (a signal to the point)"
  if forwarded and status == "failed":
    return None  # the runner stopped it: unfinished, not failed; the rerun resumes it
  before = results_lib.read_result(p.workdir) or {}  # an earlier failed attempt's time counts too
  wall = time.monotonic() - attempt.started + (before.get("wall_s") or 0.0)
  row = {"name": p.name, "values": p.values, "status": status, **found, "wall_s": round(wall, 1), "error": error,
         "started": before.get("started") or attempt.started_utc or None,
         "finished": time.strftime(TIME_FORMAT, time.gmtime())}
  results_lib.write_json(os.path.join(p.workdir, "result.json"), row)
  return row


# ---------------------------------------------------------------- the directory: its definition, lock, signals


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out |= _flat(v, f"{prefix}{k}.")
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_definition(workdir: str, definition: dict, argv: list[str] | None) -> None:
  """Writes DIR/sweep.json on the first run of a grid; on a rerun refuses (one line) a grid that differs from it."""
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
  results_lib.write_json(path, dict(now, command=argv if argv is not None else (saved or {}).get("command")))


def launch(point: Point) -> dict:
  """What identifies a point's run (DIR/points/<name>/point.json): its launch, not the interpreter's path."""
  if point.command is not None:
    return {"command": list(point.command)}
  return {"module": point.module, "config": point.config and _spec_abspath(point.config),
          "overrides": list(point.overrides)}


def check_points(points: list[Point]) -> None:
  """Unique names that are file names; each point's launch the same as the one recorded in its directory."""
  seen = set()
  for p in points:
    if not p.name or p.name in (".", "..") or os.sep in p.name or len(p.name.encode()) > 255:
      raise cfg_lib.ConfigError(f"point name {p.name[:60]!r} is not a file name (non-empty, no {os.sep!r}, at most "
                                "255 bytes)")
    if p.name in seen:
      raise cfg_lib.ConfigError(f"two points are named {p.name!r}; name them apart")
    seen.add(p.name)
    path = os.path.join(p.workdir, "point.json")
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError):
      continue
    now = json.loads(json.dumps(launch(p)))
    if saved != now:
      raise cfg_lib.ConfigError(f"{p.workdir} holds another run ({json.dumps(saved)} there, {json.dumps(now)} now); "
                                "use another directory or name, or delete it")


class Lock:
  """DIR/.sweep.lock, held while the runner runs (the kernel drops it if the runner dies): one runner per DIR."""

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


class Forwarder:
  """SIGINT and SIGTERM to the runner: forwarded to the running points (they save and exit), and no new point starts.

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
    attempt.signals += 1  # a point the runner signalled ends unfinished, not failed (see `finish`)
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


# ---------------------------------------------------------------- running the points


def _keep_order(workdir: str, names: list[str]) -> None:
  """DIR/sweep.json's "points": this list's names, then those of earlier lists run there (read_results' order)."""
  path = os.path.join(workdir, "sweep.json")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f).get("points", [])
  except (OSError, ValueError, AttributeError):
    saved = []
  results_lib.write_json(path, {"points": names + [n for n in saved if n not in names]})


def _placed(points: list[Point], workdir: str) -> list[Point]:
  return [dataclasses.replace(p, index=i, workdir=os.path.join(workdir, "points", p.name))
          for i, p in enumerate(points)]


def _execute(points: list[Point], workdir: str, pins: list[Slot], reporter, log, env, *, definition=None,
             argv=None) -> tuple[list[dict], int | None]:
  """Runs the unfinished points under the lock; (result rows in order, the signal that stopped it or None)."""
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  with Lock(workdir):
    if definition is not None:
      check_definition(workdir, definition, argv)
    else:
      check_points(points)
      _keep_order(workdir, [p.name for p in points])
    results = {p.name: r for p in points if (r := results_lib.read_result(p.workdir)) and r["status"] in FINISHED}
    todo = [p for p in points if p.name not in results]
    n = len(points)
    log(f"sweep {workdir}: {n} points, {len(results)} finished, {len(todo)} to run"
        + (f", {len(pins)} at a time ({'; '.join(s.label for s in pins)})" if len(pins) > 1 else ""))
    reporter.write(results)
    running: dict[int, Attempt] = {}
    free = list(range(len(pins)))
    with Forwarder(running) as signals:
      try:
        while (todo and not signals.received) or running:
          while todo and free and not signals.received:
            p, slot = todo.pop(0), free.pop(0)
            if definition is None:
              os.makedirs(p.workdir, exist_ok=True)
              results_lib.write_json(os.path.join(p.workdir, "point.json"), launch(p))
            running[slot] = attempt = start(p, pins[slot], env)
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
            log(f"[{p.index + 1}/{n}] {p.name}: {results_lib.describe(row)}")
          reporter.write(results, running={a.point.name for a in running.values()})
      except BaseException:  # a failure here (disk full, a bug): the running points save and exit before it surfaces
        for attempt in running.values():
          if not attempt.signals:
            signals.forward(attempt, signal.SIGTERM)
        for attempt in running.values():
          attempt.popen.wait()
        raise
    rows = [dict(results[p.name], workdir=p.workdir) for p in points if p.name in results]
    log(f"sweep {workdir}: {results_lib.summary(rows, n)}")
    return rows, signals.received


def run_points(points: list[Point], workdir: str, *, parallel: int = 1, log=_print, env=None,
               plot: str | None = None) -> list[dict]:
  """Runs (or skips, when finished) every point in DIR/points/<name>; returns the result rows in list order.

  Rows are result.json's (see the module docstring) plus "workdir". `env`: extra environment for every point
  (a None value unsets). Also writes DIR/results.csv and results.md (and with `plot` X[,CURVE] the plot over the
  points' values). Raises ConfigError (one line) before anything runs if it cannot, and Interrupted after
  SIGINT/SIGTERM once the running points stopped.
  """
  workdir = local_workdir(workdir)
  points = _placed(list(points), workdir)
  check_points(points)
  reporter = results_lib.Reporter(points, workdir, plot, log)
  pins = slots(parallel, log)
  rows, received = _execute(points, workdir, pins, reporter, log, env)
  log(f"results: {os.path.join(workdir, 'results.md')}, results.csv")
  if received:
    raise Interrupted(received)
  return rows


def run(config: str, grid: list[str], workdir: str, overrides=(), parallel: int = 1, plot: str | None = None,
        log=_print, argv: list[str] | None = None) -> list[dict]:
  """Runs (or skips, when finished) every point of the grid; returns the result rows in grid order.

  `config`: FILE[:ARG]; `grid`: the `--grid` values; `overrides`: fixed `field=value` for every point.
  Rows are result.json's (see the module docstring) plus "workdir". Raises ConfigError (one line) before
  anything runs if the sweep cannot, and Interrupted after SIGINT/SIGTERM once the running points stopped.
  DIR/sweep.json holds the grid's definition (another grid on the same DIR is refused); `argv` (the CLI's) is
  kept there as the command that made the sweep.
  """
  workdir = local_workdir(workdir)
  plan_ = plan(config, list(grid), workdir, overrides)
  reporter = results_lib.Reporter(plan_.points, workdir, plot, log, geometric=plan_.geometric)
  pins = slots(parallel, log)
  rows, received = _execute(plan_.points, workdir, pins, reporter, log, None,
                            definition=dict(plan_.definition, points=[p.name for p in plan_.points]), argv=argv)
  plotted = plot and os.path.exists(reporter.plot_path)
  log(f"results: {os.path.join(workdir, 'results.md')}, results.csv"
      + (f", {os.path.basename(reporter.plot_path)}" if plotted else ""))
  if received:
    raise Interrupted(received)
  return rows


def dry_run(config: str, grid: list[str], workdir: str, overrides=(), parallel: int = 1,
            plot: str | None = None) -> list[str]:
  """What `run` would do, as lines (each point: whether it would run or is finished, and its command); runs and
  writes nothing, but checks everything `run` checks first."""
  workdir = local_workdir(workdir)
  plan_ = plan(config, list(grid), workdir, overrides)
  results_lib.Reporter(plan_.points, workdir, plot, log=lambda s: None, geometric=plan_.geometric)
  pins = slots(parallel, log=lambda s: None)
  lines = []
  for p in plan_.points:
    r = results_lib.read_result(p.workdir)
    state = f"finished ({r['status']})" if r and r["status"] in FINISHED else "would run"
    lines.append(f"[{p.index + 1}/{len(plan_.points)}] {p.name}: {state}: {' '.join(command_line(p))}")
  return lines + [f"{len(plan_.points)} points, {len(pins)} at a time"]


def _wait_any(running: dict[int, Attempt], poll_s: float = 0.1) -> list[tuple[int, int]]:
  """[(slot, exit code)] of the points that ended, blocking until one does."""
  while True:
    done = [(slot, a.popen.poll()) for slot, a in running.items()]
    done = [(slot, rc) for slot, rc in done if rc is not None]
    if done or not running:
      return done
    time.sleep(poll_s)
