"""A sweep's results: each point's result.json, the tables (results.csv, results.md), the plot, grouping over seeds.

Nothing here starts a process or imports JAX: a finished sweep's directory is read back with `read_results(DIR)`.
"""

from __future__ import annotations

import csv
import io
import json
import os

from jaxtrain import config as cfg_lib
from jaxtrain.sweep import grid as grid_lib

STATUSES = ("ok", "diverged", "error", "failed")


def _print(line: str) -> None:
  print(line, flush=True)  # a sweep's log is read while it runs, often from a file


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: str, text: str) -> None:
  """Written whole or not at all: a kill mid-write leaves the old file."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def read_result(point_workdir: str) -> dict | None:
  """A point's result.json (None if it has not finished), with "workdir" added."""
  try:
    with open(os.path.join(point_workdir, "result.json"), encoding="utf-8") as f:
      row = json.load(f)
  except (OSError, ValueError):
    return None
  return dict(row, workdir=os.path.abspath(point_workdir))


def read_results(workdir: str) -> list[dict]:
  """The result.json rows of all finished points of the sweep in `workdir`, in its order (sweep.json's, then the
  other points' names sorted); each with "workdir"."""
  points = os.path.join(workdir, "points")
  try:
    with open(os.path.join(workdir, "sweep.json"), encoding="utf-8") as f:
      order = json.load(f)["points"]
  except (OSError, ValueError, KeyError):
    order = []
  names = order + sorted(n for n in listdir(points) if n not in order)
  rows = [read_result(os.path.join(points, n)) for n in names]
  return [r for r in rows if r is not None]


def value(row: dict, field: str):
  """A result row's value of `field`, named in full or by its dotted suffix ('lr' for optim.lr)."""
  vals = row.get("values", {})
  hits = [v for k, v in vals.items() if k == field or k.endswith("." + field)]
  if not hits:
    raise KeyError(f"{field} is not among the point's values {sorted(vals)}")
  return hits[0]


def group(rows: list[dict], over: str = "seed") -> list[tuple[dict, list[dict]]]:
  """[(the values without `over`, the rows that share them)] in order of first appearance: the seeds of one
  setting together. `over` is a field named in full or by its dotted suffix ('seed', 'lr')."""
  out: dict[str, tuple[dict, list[dict]]] = {}
  for r in rows:
    values = r.get("values", {})
    rest = {k: v for k, v in values.items() if not (k == over or k.endswith("." + over))}
    key = json.dumps(rest, sort_keys=True, default=str)
    out.setdefault(key, (rest, []))[1].append(r)
  return list(out.values())


# ---------------------------------------------------------------- the tables and the plot


def table_rows(points, results: dict[str, dict], running=()) -> list[dict]:
  """One row per point in order: its values and result, "pending" (or "running") where it has none yet."""
  rows = []
  fields = list(dict.fromkeys(f for p in points for f in p.values))
  for p in points:
    r = results.get(p.name) or {"status": "running" if p.name in running else "pending"}
    rows.append({**{f: p.values.get(f) for f in fields}, "status": r["status"],
                 "final_train_loss": r.get("final_train_loss"), "final_eval_loss": r.get("final_eval_loss"),
                 "steps": r.get("steps"), "wall_s": r.get("wall_s"), "error": r.get("error")})
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
    return (grid_lib.format_value(v) if k in shorts else str(v)).replace("|", "\\|")

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
              label=lambda key: ", ".join(f"{shorts[f]}={grid_lib.format_value(v)}" for f, v in zip(others, key))
              or None,
              title=f"final eval loss against {shorts[x]}" + ("  (x: diverged)" if any(
                  r["status"] == "diverged" for r in rows) else ""))
  ax.grid(alpha=0.3)
  plots.save(fig, path, dpi=120)


def has_matplotlib() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("matplotlib") is not None


class Reporter:
  """Rewrites DIR/results.csv, results.md (and the plot) from the points' results.

  `points`: objects with `.name` and `.values`; `geometric`: the fields swept by a LO:HI:xK axis (a log x axis).
  """

  def __init__(self, points, workdir: str, plot_spec: str | None, log=_print, geometric=()):
    self.points, self.workdir, self.log = list(points), workdir, log
    fields = list(dict.fromkeys(f for p in self.points for f in p.values))
    self.shorts = grid_lib.short_names(fields)
    self.x = self.curve = None
    if plot_spec:
      x, _, curve = plot_spec.partition(",")
      self.x = grid_lib.resolve_field(x.strip(), fields, "--plot")
      self.curve = grid_lib.resolve_field(curve.strip(), fields, "--plot's curve") if curve.strip() else None
      if self.curve == self.x:
        raise cfg_lib.ConfigError(f"--plot {plot_spec}: the curve field must differ from the x field")
      xs = [p.values.get(self.x) for p in self.points]
      numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in xs)
      # A log axis for a LO:HI:xK axis, and for positive values spanning a decade or more written out by hand.
      self.log_x = self.x in geometric or (numeric and max(xs) >= 10 * min(xs))
      self.matplotlib = has_matplotlib()
      if not self.matplotlib:
        log("sweep: matplotlib is not installed, so no plot (pip install -e '.[plots]'); the tables are written")

  def write(self, results: dict[str, dict], running=()) -> None:
    rows = table_rows(self.points, results, running)
    write_text(os.path.join(self.workdir, "results.csv"), to_csv(rows))
    write_text(os.path.join(self.workdir, "results.md"), to_markdown(rows, self.shorts))
    if self.x and self.matplotlib and any(r["status"] in ("ok", "diverged") for r in rows):
      try:
        plot(rows, self.x, self.curve, self.shorts, self.plot_path, self.log_x)
      except Exception as e:  # pylint: disable=broad-except  # a plot is not worth stopping the sweep for
        self.log(f"sweep: the plot failed ({type(e).__name__}: {e}); the tables are written")

  @property
  def plot_path(self) -> str:
    return os.path.join(self.workdir, f"loss_vs_{self.shorts[self.x]}.png")


def describe(row: dict) -> str:
  """One finished point in a line: 'ok  train 4.0000  eval 4.5000  10 steps, 3 s'."""
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
