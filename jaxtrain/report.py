"""The studies' report library: markdown tables, machine and timing metadata, number formatting, summary.json,
mean and spread over seeds, and verdicts computed from the data.

  table(header, rows), rows(rows)          markdown lines
  render(template, out, **fields)          a study's report.md from its markdown template
  claims([(claim, measured, verdict)])     the "| the paper says | we measured | agrees? |" table
  num(x), pct(x)                           a number or a percentage, "—" for None
  machine(), load_state(l0, l1), span(workdirs), meta(t0, load0, parallel)   where and when the runs ran
  study_parser(doc, name, sizes), study_args(parser, name, here)            the flags every study has
  load_module(path, name)                  a study's config.py
  write_summary(path, meta, m), read_summary(path)                           THE summary.json: {"meta", "measurements"}
  load_or_measure(args, measure)           summary.json's (--report-only, runs gone) or measure()'s, written there
  mean_spread(values), cell(values)        over seeds: (mean, sd, n), and "4.1000 ± 0.0100 (n=3)"
  join_seeds(seeds, ms), per_seed(m)       a study's measurements per seed in summary.json (one seed: as they were)
  pooled(ms, *path), over_seeds(ms, *path) each seed's values side by side
  reached(values), statuses(s), first_last(series)   cells over seeds
  mean_curve(cs), mean_curves(ms, *path), mean_rows(rows, key)   curves and grid points averaged over seeds
  fp8_cells(fs), fp8_per_linear(fs)        FP8 health (jaxtrain.plots.fp8_stats) over seeds, as cells and text
  verdict(measured, predicted, band), at_least(...), at_most(...), tally(bools)   a Verdict that can come out either way
  difference(a, b), compare(a, b)          a − b over seeds with its 95% confidence interval; lower, higher or a tie
  last_per_step(rows), smooth(curve, k), first_reach(curve, level), at(curve, x)   curves of (x, y, ...) points
  speedup(ref, curve, level), speedup_cell(ps)   the compute speed-up at equal loss, and as text over seeds
  grid_optimum([(x, y, ok)])               a sweep's best point, at the grid's edge or not, its parabola estimate

A study's verdicts are computed from its measurements, never written in advance: each helper here returns the
label its numbers earn. Nothing here imports JAX or matplotlib.
"""

from __future__ import annotations

import argparse
import calendar
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from typing import NamedTuple

import numpy as np

NONE = "—"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the runner's result.json "started"/"finished", UTC


# ---------------------------------------------------------------- tables and numbers


def rows(cells) -> list[str]:
  """Markdown table lines, one per row of cells (each as str, a '|' inside escaped)."""
  return ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in cells]


def table(header, cells) -> list[str]:
  """A markdown table's lines: the header, its rule, one line per row of cells."""
  return rows([header]) + ["|" + "---|" * len(header)] + rows(cells)


BLOCK = re.compile(r"<!-- if (\w+) -->\n(.*?)<!-- end \1 -->\n", re.DOTALL)
INLINE = re.compile(r"<!-- if (\w+) -->(.*?)<!-- end \1 -->", re.DOTALL)
ELSE = "<!-- else -->"


def render(template: str, out: str | None = None, **fields) -> str:
  """A report's text: the markdown file `template` with its `{name}` (`{name:spec}`, `{name[key]}`) fields filled
  in by `str.format` (literal braces doubled), written to `out` when given. Lines from `<!-- if NAME -->` to
  `<!-- end NAME -->` are kept (without those two lines) when fields[NAME] is true, else dropped: a section that
  only some measurements have; a `<!-- else -->` line between them gives the lines kept otherwise. Within a line,
  `<!-- if NAME -->A<!-- else -->B<!-- end NAME -->` is A or B (a sentence for one seed or several). A study
  keeps its prose in the template and computes the fields."""
  def choose(nl):
    return lambda mt: mt.group(2).partition(ELSE + nl)[0 if fields.get(mt.group(1)) else 2]
  with open(template, encoding="utf-8") as fh:
    text = INLINE.sub(choose(""), BLOCK.sub(choose("\n"), fh.read()))
  text = text.format(**fields)
  if out is not None:
    with open(out, "w", encoding="utf-8") as fh:
      fh.write(text)
  return text


def claims(rows) -> list[str]:
  """The claims table every study ends with: (what the paper says, what we measured, the verdict) per row; the
  verdict in bold. Cells are written as given (they may hold markdown)."""
  return (["| the paper says | we measured | agrees? |", "|---|---|---|"]
          + [f"| {a} | {b} | **{c}** |" for a, b, c in rows])


def num(x, fmt: str = "{:.4f}", none: str = NONE) -> str:
  """`fmt.format(x)`, or `none` for None."""
  return none if x is None else fmt.format(x)


def pct(x, spec: str = "+.1f", none: str = NONE, zero: str | None = None) -> str:
  """x as a percentage: pct(0.123) == '+12.3%'; `zero`, when given, is what an exact 0 prints as."""
  if x is None:
    return none
  if zero is not None and not x:
    return zero
  return f"{100 * x:{spec}}%"


# ---------------------------------------------------------------- where and when


def machine(gpu: bool = False) -> str:
  """'x86_64 CPU (AMD EPYC), 2 threads', or on a GPU 'GPU: ' and what `nvidia-smi -L` lists."""
  if gpu:
    try:
      return "GPU: " + subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
      return "GPU"
  model = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
      model = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "")
  except OSError:
    pass
  return f"{platform.machine()} CPU ({model}), {os.cpu_count()} threads"


def load_state(load0: float, load1: float) -> str:
  """The 1-minute load average at the start and the end, and whether other processes shared the CPU."""
  cores = os.cpu_count()
  busy = max(load0, load1) > 0.5 * cores + 0.5
  return (f"load average {load0:.1f} at start, {load1:.1f} at the end ({cores} CPU threads): "
          + ("**busy** (other processes shared the CPU)" if busy else "idle apart from the study"))


def _first_header(workdir: str) -> float | None:
  """When the first attempt started, from log.txt's first '=== <who>: <local time> ...' line (older runs)."""
  try:
    with open(os.path.join(workdir, "log.txt"), encoding="utf-8") as fh:
      first = fh.readline()
    return time.mktime(time.strptime(first.split(": ", 1)[1][:19], TIME_FORMAT))
  except (OSError, IndexError, ValueError):
    return None


def span(workdirs) -> dict:
  """When the runs ran, from their files, across every invocation (a resumed study included): {"start", "end"
  (UTC, TIME_FORMAT), "minutes" (first start to last end), "runs" (how many finished), "run_minutes" (their
  summed wall time)}; {} when none finished. A run's start: result.json's "started", else its log's first header;
  its end: result.json's "finished", else the file's time."""
  starts, ends, total = [], [], 0.0
  for d in workdirs:
    path = os.path.join(d, "result.json")
    try:
      with open(path, encoding="utf-8") as fh:
        r = json.load(fh)
      end = (calendar.timegm(time.strptime(r["finished"], TIME_FORMAT)) if r.get("finished")
             else os.path.getmtime(path))
    except (OSError, ValueError):
      continue
    start = calendar.timegm(time.strptime(r["started"], TIME_FORMAT)) if r.get("started") else _first_header(d)
    if start is None:
      continue
    starts.append(start)
    ends.append(end)
    total += r.get("wall_s") or 0.0
  if not starts:
    return {}
  fmt = lambda t: time.strftime(TIME_FORMAT, time.gmtime(t))
  return {"start": fmt(min(starts)), "end": fmt(max(ends)), "minutes": (max(ends) - min(starts)) / 60,
          "runs": len(starts), "run_minutes": total / 60}


def meta(t0: float, load0: float, parallel: int, *, gpu: bool = False, **extra) -> dict:
  """A study's summary.json "meta": date, machine, runs at a time, load, the invocation's wall time; `extra` after."""
  return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(gpu), "parallel": parallel,
          "load": load_state(load0, os.getloadavg()[0]), "wall_min": (time.time() - t0) / 60, **extra}


# ---------------------------------------------------------------- a study's command line


def load_module(path: str, name: str):
  """The Python file `path` imported as module `name` (a study's config.py, which is not in a package)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def study_parser(doc: str, name: str, sizes, *, runs_flag: str = "--runs-dir",
                 seeds: bool = False) -> argparse.ArgumentParser:
  """The flags every study has: --size, --out, the runs' directory (`runs_flag`, read as args.runs_dir),
  --parallel and --report-only; with `seeds`, --seeds N (default 1: each run once, with its config's seed);
  a study adds its own."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=tuple(sizes), default="cpu")
  p.add_argument("--out", default=None, help=f"report, plots and summary.json (default experiments/{name}/results "
                 f"for the cpu size, runs/{name}_<size>/results otherwise)")
  p.add_argument(runs_flag, dest="runs_dir", default=None, help="where the runs' workdirs go (the runner's "
                 f"points/<name> there; default runs/{name}_<size>)")
  p.add_argument("--parallel", type=int, default=None, help="runs at once (default: 2 on a CPU with 2+ cores, each "
                 "pinned to its own cores; 1 on a GPU)")
  p.add_argument("--report-only", action="store_true", help="no training: the report from the finished runs (or "
                 "from <out>/summary.json when the runs are gone)")
  if seeds:
    p.add_argument("--seeds", type=int, default=1, help="launch every run with seeds 0..N-1 and give mean ± sd (n) "
                   "over them in the tables (default 1: one run each, with its config's seed)")
  return p


def study_args(parser: argparse.ArgumentParser, name: str, here: str, argv=None) -> argparse.Namespace:
  """`parser`'s arguments with the defaults filled in (the cpu size reports into `here`/results) and --out made."""
  args = parser.parse_args(argv)
  args.out = args.out or (os.path.join(here, "results") if args.size == "cpu" else f"runs/{name}_{args.size}/results")
  args.runs_dir = args.runs_dir or f"runs/{name}_{args.size}"
  if args.parallel is None:  # on CPU a run's start-up (imports, data, compiles) is single-threaded: overlap two
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    args.parallel = 1 if args.size == "gpu" else max(1, min(2, cores))
  os.makedirs(args.out, exist_ok=True)
  return args


# ---------------------------------------------------------------- summary.json


def write_summary(path: str, meta_: dict, measurements, *, report_only: bool = False) -> None:
  """A study's summary.json: {"meta", "measurements"}. A report rebuilt without training (`report_only`) keeps the
  date, wall time, parallelism and load the training invocation recorded (or says the load was not recorded)."""
  if report_only and os.path.isfile(path):
    with open(path, encoding="utf-8") as fh:
      saved = json.load(fh)["meta"]
    meta_.update({k: saved[k] for k in ("date", "wall_min", "parallel", "load") if k in saved})
  elif report_only:
    meta_["load"] = "not recorded (report rebuilt with --report-only)"
  with open(path, "w", encoding="utf-8") as fh:
    json.dump({"meta": meta_, "measurements": measurements}, fh, indent=1)


def read_summary(path: str) -> tuple[dict, dict]:
  """(meta, measurements) of a study's summary.json, in today's schema: meta["span"] as `span` gives it (an older
  summary may keep it among the measurements, with "points" and "point_minutes" for "runs" and "run_minutes")."""
  with open(path, encoding="utf-8") as fh:
    saved = json.load(fh)
  meta_, m = saved["meta"], saved["measurements"]
  span_ = meta_.get("span") or (m.get("span") if isinstance(m, dict) else None)
  if span_:
    old = {"points": "runs", "point_minutes": "run_minutes"}
    meta_ = dict(meta_, span={old.get(k, k): v for k, v in span_.items()})
  return meta_, m


def summary_or_measure(out: str, report_only: bool, measure) -> tuple[dict, dict, object]:
  """(meta, measurements, runs): with `report_only`, <out>/summary.json's and None (no summary.json: an error, so a
  committed report is never overwritten with an empty one); else `measure()`'s triple. Written back to
  summary.json either way (`write_summary`, which keeps the training's meta on a report-only rebuild)."""
  path = os.path.join(out, "summary.json")
  if report_only:
    if not os.path.exists(path):
      raise SystemExit(f"no {path}: run without --report-only first")
    meta_, m, runs = *read_summary(path), None
  else:
    meta_, m, runs = measure()
  write_summary(path, meta_, m, report_only=report_only)
  return meta_, m, runs


def load_or_measure(args, measure) -> tuple[dict, dict]:
  """(meta, measurements): with --report-only and the runs gone (no args.runs_dir), <args.out>/summary.json's;
  else `measure()`'s (meta, measurements), written to summary.json (`report_only` keeping the training's meta)."""
  path = os.path.join(args.out, "summary.json")
  if args.report_only and not os.path.isdir(args.runs_dir):
    return read_summary(path)
  meta_, m = measure()
  write_summary(path, meta_, m, report_only=args.report_only)
  return meta_, m


# ---------------------------------------------------------------- curves: a run's (x, y, ...) points


def last_per_step(rows: list[dict]) -> list[dict]:
  """One metrics row per step, the last written (a resumed run repeats the steps after its checkpoint)."""
  return [r for _, r in sorted({r["step"]: r for r in rows}.items())]


def smooth(curve, k: int) -> list[tuple]:
  """The curve's y (each point's second item) as a centred mean over k points (fewer at the ends)."""
  y, h = np.array([p[1] for p in curve]), k // 2
  return [(p[0], float(y[max(0, i - h):i + h + 1].mean()), *p[2:]) for i, p in enumerate(curve)]


def first_reach(curve, level: float) -> float | None:
  """The x at which the curve's y first reaches `level` or below (linear interpolation between points), None if it
  never does: the compute (steps, tokens, FLOPs) a run needs for a loss."""
  for (x0, y0, *_), (x1, y1, *_) in zip(curve, curve[1:]):
    if y0 <= level:
      return x0
    if y1 <= level:
      return x0 + (x1 - x0) * (y0 - level) / (y0 - y1)
  return curve[-1][0] if curve and curve[-1][1] <= level else None


def speedup(ref, curve, level: float) -> dict:
  """The speed-up at equal loss of `curve` over `ref` ((compute, loss, ...) curves; Du et al. 2024, "Stacking Your
  Transformers", whose 54.6% at 7B is 300B/194B tokens − 1): {"flops": C(L*), the compute at which `curve` first reaches L* = `level`, "speedup":
  C_ref(L*) / C(L*) − 1 (None when `curve` never reaches it), "loss_at_end": its last loss, "gap_at_end": that
  minus `ref`'s last loss}."""
  c_ref, c = first_reach(ref, level), first_reach(curve, level)
  return {"flops": c, "speedup": (c_ref / c - 1) if c else None, "loss_at_end": curve[-1][1],
          "gap_at_end": curve[-1][1] - ref[-1][1]}


def speedup_cell(ps: list[dict], budget: float | None = None) -> str:
  """`speedup`'s results over seeds as text: mean ± sd of the speed-ups of the seeds that reach L* (as a table cell
  with the compute there, a share of `budget`, when `budget` is given) and how many do not ('< 0': a speed-up we
  cannot size without running past the budget; in a sentence with their loss gap at the end)."""
  gaps = cell([p["gap_at_end"] for p in ps if p["speedup"] is None], "{:+.4f}")
  text = reached([p["speedup"] for p in ps], pct, "< 0 (not reached)" if budget else
                 f"< 0 (does not reach it; {gaps} at the budget)", none="not measured")
  if budget and (hit := [p for p in ps if p["speedup"] is not None]):
    head, sep, tail = text.partition("; ")
    text = f"**{head}** (at {cell([p['flops'] / budget for p in hit], '{:.3f}')} C){sep}{tail}"
  return text


def at(curve, x: float) -> float:
  """The curve's y at x (linear interpolation; its end values beyond its ends)."""
  return float(np.interp(x, [p[0] for p in curve], [p[1] for p in curve]))


def grid_optimum(points, ratio: float = 2.0) -> dict | None:
  """The best point of a sweep over a geometric grid: `points` [(x, y, ok)] (ok: the run finished, y its loss).
  {"x", "y" of the lowest y among the ok points (the first on a tie), "edge": whether x is the grid's first or last
  value (the optimum may lie outside), "fit": the vertex of the parabola in log_ratio(x) through it and its two
  neighbours when they sit one grid step either side (else x), "n_ok", "n"}; None when no point is ok."""
  pts = sorted(points, key=lambda p: p[0])
  ok = [(x, y) for x, y, good in pts if good and y is not None]
  if not ok:
    return None
  i = min(range(len(ok)), key=lambda j: ok[j][1])
  x, y = ok[i]
  fit = x
  if 0 < i < len(ok) - 1 and ok[i - 1][0] * ratio == x and ok[i + 1][0] == x * ratio:
    y0, y2 = ok[i - 1][1], ok[i + 1][1]
    den = y0 - 2 * y + y2
    fit = x * ratio ** (0.5 * (y0 - y2) / den) if den > 0 else x
  return {"x": x, "y": y, "edge": x in (pts[0][0], pts[-1][0]), "fit": fit, "n_ok": len(ok), "n": len(pts)}


# ---------------------------------------------------------------- over seeds


def _values(values) -> list[float]:
  if values is None or isinstance(values, (int, float)):
    values = [values]
  return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_spread(values) -> tuple[float | None, float | None, int]:
  """(mean, sample standard deviation, n) of the values that are not None (nor NaN); sd 0.0 for one value,
  (None, None, 0) for none. A single number counts as one value."""
  vs = _values(values)
  if not vs:
    return None, None, 0
  return statistics.fmean(vs), (statistics.stdev(vs) if len(vs) > 1 else 0.0), len(vs)


def cell(values, fmt="{:.4f}", none: str = NONE) -> str:
  """A table cell over seeds: one value as `fmt` gives it (so a one-seed report reads as it always did), several as
  'mean ± sd (n=3)', none as `none`. `fmt`: a format string or a function of the number; the sd is written
  without a sign ('+12.3% ± 1.0% (n=2)' from "{:+.1%}")."""
  mean, sd, n = mean_spread(values)
  show = fmt if callable(fmt) else fmt.format
  if n == 0:
    return none
  if n == 1:
    return show(mean)
  spread = show(sd)
  return f"{show(mean)} ± {spread[1:] if spread.startswith('+') else spread} (n={n})"


def reached(values, fmt="{:.4f}", missing: str = "not reached", none: str = NONE) -> str:
  """A cell over seeds where None means the seed never got there (a loss not reached, a run that never
  generalized): `cell` of the others, and '; k of n seeds <missing>' when some did not; `missing` alone when none
  did, `none` for no seed at all."""
  values = [values] if values is None or isinstance(values, (int, float)) else list(values)
  hit = [v for v in values if v is not None]
  if not values:
    return none
  if not hit:
    return missing
  return cell(hit, fmt) + (f"; {len(values) - len(hit)} of {len(values)} seeds {missing}" if len(hit) < len(values)
                           else "")


def over_seeds(ms: list, *path) -> dict:
  """{key: [its value in each seed that has it]} of the dict at `path` in each seed's measurements `ms`, keys in
  order of first appearance: each run's (or setting's) measurements side by side over the seeds."""
  out: dict = {}
  for d in pooled(ms, *path):
    for k, v in d.items():
      out.setdefault(k, []).append(v)
  return out


def mean_curves(ms: list, *path, keys=("train", "eval")) -> dict:
  """{key: its first seed's dict with the curves under `keys` averaged over the seeds (`mean_curve`)} for the
  dict of dicts at `path` in each seed's measurements `ms` (each run's curves over seeds, for a plot)."""
  return {k: dict(ds[0], **{c: mean_curve(pooled(ds, c)) for c in keys}) for k, ds in over_seeds(ms, *path).items()}


def mean_rows(rows, key, fields=("final_eval_loss",)) -> list[dict]:
  """Rows of several seeds as one row per `key(row)` (in order of first appearance): the first seed's row with each
  of `fields` averaged over the seeds that have it, "status" "ok" only when every seed's is (else the first other
  status), and "n" the number of seeds: a grid's points over seeds, to pick a best point by its mean."""
  groups: dict = {}
  for r in rows:
    groups.setdefault(key(r), []).append(r)
  return [dict(rs[0], **{f: mean_spread([r.get(f) for r in rs])[0] for f in fields}, n=len(rs),
               status=next((r["status"] for r in rs if r["status"] != "ok"), "ok")) for rs in groups.values()]


def first_last(series, fmt="{:.4f}") -> str:
  """'first → last' of a series over training (each seed's: `series` a list of them), each a `cell`."""
  series = [x for x in series if x]
  return f"{cell([x[0] for x in series], fmt)} → {cell([x[-1] for x in series], fmt)}"


def fp8_cells(fs: list[dict], fmt=pct) -> list[str]:
  """FP8 health over seeds (`fs`: each seed's `jaxtrain.plots.fp8_stats`) as four table cells: the underflow of x,
  w and g 'first → last' diagnostics step (g with its worst linear in parentheses), and the saturation max of
  x / w / g; four '—' without diagnostics."""
  if not fs:
    return [NONE] * 4
  under = lambda t: first_last([f[f"{t}_underflow"] for f in fs], fmt)
  worst = lambda key: cell([max(f[key]) for f in fs], fmt)
  return [under("x"), under("w"), f"{under('g')} ({worst('g_underflow_max')})",
          " / ".join(worst(f"{t}_saturation_max") for t in ("x", "w", "g"))]


def fp8_per_linear(fs: list[dict], fmt=pct) -> str:
  """FP8 health per linear at the last diagnostics step over seeds (`fs` as in `fp8_cells`): the underflow of the
  activations x and of the output gradients g (or 'all zero' where no gradient reaches a linear), and the
  gradients' RMS."""
  f = fs[0]
  item = lambda key, name, fmt: (f"{name} {cell(pooled(fs, key, name), fmt)}" if key != "g_underflow_last"
                                 or f["g_rms_last"].get(name) else f"{name} all zero (no gradient reaches it)")
  return "; ".join(what + " " + ", ".join(item(key, name, form) for name in f[key]) for what, key, form in (
      ("activations x", "x_underflow_last", fmt), ("output gradients g", "g_underflow_last", fmt),
      ("gradient RMS (after ×S or ÷ scale)", "g_rms_last", "{:.3g}")))


def join_seeds(seeds: list, ms: list[dict]) -> dict:
  """A study's measurements over its seeds, for summary.json: one seed's as they are (the one-seed schema), several
  as {"seeds": seeds, "by_seed": ms}; `per_seed` reads either back."""
  return ms[0] if len(ms) == 1 else {"seeds": list(seeds), "by_seed": list(ms)}


def per_seed(m: dict) -> list[dict]:
  """The measurements of each seed, from what `join_seeds` made (a one-seed summary: [m])."""
  return list(m["by_seed"]) if isinstance(m, dict) and "by_seed" in m else [m]


def pooled(ms: list, *path) -> list:
  """The value at `path` (keys, indices, or functions of the node) in each seed's measurements `ms`, those where it
  is missing or None left out: the list `cell`, `mean_spread` and the verdicts take."""
  out = []
  for node in ms:
    for key in path:
      try:
        node = key(node) if callable(key) else node[key]
      except (KeyError, IndexError, TypeError):
        node = None
      if node is None:
        break
    if node is not None:
      out.append(node)
  return out


def statuses(values) -> str:
  """Runs' statuses over seeds: one as it is, several alike as one, mixed as 'ok ×2, failed ×1'."""
  values = list(values)
  counts = {v: values.count(v) for v in dict.fromkeys(values)}
  return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{v} ×{k}" for v, k in counts.items())


def mean_curve(curves) -> list[tuple]:
  """Curves of (x, y, ...) points over seeds as one: y averaged point by point, where every curve has the same xs
  (else the first curve); one curve as it is."""
  curves = [c for c in curves if c]
  if len(curves) <= 1 or any([p[0] for p in c] != [p[0] for p in curves[0]] for c in curves):
    return list(curves[0]) if curves else []
  return [(p[0], float(np.mean([c[i][1] for c in curves])), *p[2:]) for i, p in enumerate(curves[0])]


# ---------------------------------------------------------------- verdicts


class Verdict(NamedTuple):
  """An outcome computed from the data: its label (what the report prints), whether the data agree with the
  prediction (None: not measured), and the comparison in words."""
  label: str
  agrees: bool | None
  text: str

  def __str__(self):
    return self.label


def _describe(values) -> str:
  mean, sd, n = mean_spread(values)
  return f"{mean:.4g}" + (f" ± {sd:.2g} (n={n})" if n > 1 else "")


def verdict(measured, predicted: float, band: float, *, yes: str = "yes", no: str = "no",
            unmeasured: str = "not measured") -> Verdict:
  """Agrees when the measurement (a number, or its values over seeds: their mean) is within `band` of the
  prediction, |mean − predicted| ≤ band."""
  mean, _, n = mean_spread(measured)
  if n == 0:
    return Verdict(unmeasured, None, unmeasured)
  ok = abs(mean - predicted) <= band
  return Verdict(yes if ok else no, ok, f"{_describe(measured)} vs {predicted:.4g} ± {band:.4g}")


def tally(agrees, *, yes: str = "yes", partly: str = "partly", no: str = "no",
          unmeasured: str = "not measured") -> Verdict:
  """Several comparisons (bools) as one verdict: all agree, some do, none does (text: "k of n")."""
  agrees = list(agrees)
  n = sum(map(bool, agrees))
  if not agrees:
    return Verdict(unmeasured, None, "0 of 0")
  return Verdict(yes if n == len(agrees) else partly if n else no, n == len(agrees), f"{n} of {len(agrees)}")


def at_least(measured, threshold: float, *, yes: str = "yes", no: str = "no",
             unmeasured: str = "not measured") -> Verdict:
  """Agrees when the measurement (or its mean over seeds) is ≥ `threshold`."""
  mean, _, n = mean_spread(measured)
  if n == 0:
    return Verdict(unmeasured, None, unmeasured)
  ok = mean >= threshold
  return Verdict(yes if ok else no, ok, f"{_describe(measured)} {'≥' if ok else '<'} {threshold:.4g}")


def at_most(measured, threshold: float, *, yes: str = "yes", no: str = "no",
            unmeasured: str = "not measured") -> Verdict:
  """Agrees when the measurement (or its mean over seeds) is ≤ `threshold`."""
  mean, _, n = mean_spread(measured)
  if n == 0:
    return Verdict(unmeasured, None, unmeasured)
  ok = mean <= threshold
  return Verdict(yes if ok else no, ok, f"{_describe(measured)} {'≤' if ok else '>'} {threshold:.4g}")


# Two-sided 95% quantiles of Student's t, degrees of freedom 1..30 (beyond: the normal's 1.96).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: float) -> float:
  """The two-sided 95% quantile of Student's t with `df` degrees of freedom (rounded down; ≥ 1)."""
  k = max(1, int(df))
  return T975[k - 1] if k <= len(T975) else 1.96


class Difference(NamedTuple):
  """a − b over seeds: the mean difference, its 95% confidence interval (lo, hi; None with fewer than two
  values on a side), the number of seeds (pairs, or the smaller side unpaired) and whether it was paired."""
  mean: float | None
  lo: float | None
  hi: float | None
  n: int
  paired: bool


def difference(a, b, *, paired: bool = True) -> Difference:
  """a − b with a 95% confidence interval over seeds. `paired` (both lists of one value per seed, in the same seed
  order and of equal length, None where a seed is missing): the interval of the mean of the per-seed differences,
  d̄ ± t₀.₉₇₅(n−1)·s_d/√n (the seeds pair runs that share data order; pairing removes what they share); else, or
  when the lengths differ, Welch's interval for the difference of the means."""
  a = [a] if a is None or isinstance(a, (int, float)) else list(a)
  b = [b] if b is None or isinstance(b, (int, float)) else list(b)
  if paired and len(a) == len(b):
    d = _values([None if x is None or y is None else x - y for x, y in zip(a, b)])
    mean, sd, n = mean_spread(d)
    if n < 2:
      return Difference(mean, None, None, n, True)
    half = t975(n - 1) * sd / math.sqrt(n)
    return Difference(mean, mean - half, mean + half, n, True)
  (ma, sa, na), (mb, sb, nb) = mean_spread(a), mean_spread(b)
  if not na or not nb:
    return Difference(None, None, None, 0, False)
  mean = ma - mb
  if na < 2 or nb < 2:
    return Difference(mean, None, None, min(na, nb), False)
  va, vb = sa * sa / na, sb * sb / nb
  se = math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1)) if se > 0 else na + nb - 2
  half = t975(df) * se
  return Difference(mean, mean - half, mean + half, min(na, nb), False)


def compare(a, b, *, names=("a", "b"), fmt: str = "{:+.4f}", paired: bool = True, lower: str = "lower",
            higher: str = "higher", tie: str = "within seed noise", undecided: str = "too few seeds: undecided",
            unmeasured: str = "not measured", min_seeds: int = 3) -> Verdict:
  """Whether a is lower than b over seeds, as a Verdict that can come out three ways: `lower` (agrees: the 95%
  interval of a − b lies below 0), `higher` (it lies above 0) or `tie` (it contains 0: the difference is within
  the seeds' noise); `undecided` with fewer than `min_seeds` seeds (a verdict rests on at least three; the
  interval is still shown from two), `unmeasured` without data. `agrees` is True only for `lower` (None without
  data). A claim "a is higher than b" is compare(b, a). The text: "a − b = d̄ (95% CI lo to hi, paired over n
  seeds)"."""
  d = difference(a, b, paired=paired)
  if d.mean is None:
    return Verdict(unmeasured, None, unmeasured)
  show = fmt.format
  text = f"{names[0]} − {names[1]} = {show(d.mean)}"
  if d.lo is None:
    return Verdict(undecided, False, text + f" ({d.n} seed{'s' if d.n != 1 else ''}: no interval)")
  if d.n < min_seeds:
    return Verdict(undecided, False, text + f" (95% CI {show(d.lo)} to {show(d.hi)} over {d.n} seeds, fewer than "
                                            f"the {min_seeds} a verdict needs)")
  text += (f" (95% CI {show(d.lo)} to {show(d.hi)}, {'paired over' if d.paired else 'Welch,'} {d.n} seeds)")
  if d.hi < 0:
    return Verdict(lower, True, text)
  if d.lo > 0:
    return Verdict(higher, False, text)
  return Verdict(tie, False, text)
