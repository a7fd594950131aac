"""Plots of runs, for notebooks and the studies' reports: one function per kind of figure the studies draw.

  curves(runs, "eval_loss", x="tokens")          a metric of several runs against steps, tokens or FLOPs
  by_depth(run, "layers/grad_norm")              per-layer diagnostics against depth (or a dict name -> values_L)
  heatmap(run, "layers/resid_var")               per-layer diagnostics over training: layer × step
  sweep(points, "optim.lr", by="d_model")        final losses against a swept hyperparameter, diverged runs marked
  save(fig, "out.png")                           tight layout, written atomically, closed

A run is anything with metrics: a `jaxtrain.run.Run` (`jt.load_run(workdir)`), a workdir path (its
`metrics.jsonl`), or a pandas DataFrame of metrics lines; several runs come as a list, or as a dict
{label: run} to name them. A dict's value may also be an (x, y) pair of arrays, for a series a study
computed itself (smoothed, rescaled, from its own saved results). Each function draws on `ax` (new axes
when None) and returns it, so they compose into multi-panel figures. matplotlib is imported when a function
is called, never by `import jaxtrain` (it is the `plots` extra: pip install -e '.[plots]').
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

X_LABELS = {"step": "step", "tokens": "tokens", "total_flops": "total FLOPs"}
FAILED = ("diverged", "failed", "error")  # the sweep statuses of a point without a usable final loss


def _plt():
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _integer_ticks():
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  return MaxNLocator(integer=True)


def _axes(ax):
  return _plt().subplots()[1] if ax is None else ax


# ---------------------------------------------------------------- runs as metrics tables


def _is_pair(v) -> bool:
  return isinstance(v, tuple) and len(v) == 2 and not isinstance(v[0], str)


def _frame(run) -> tuple[str | None, Any, Any]:
  """(its name, its metrics as a DataFrame, its config or None) for a Run, a workdir or a DataFrame."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  if isinstance(run, pd.DataFrame):
    return run.attrs.get("name"), run, None
  if isinstance(run, (str, os.PathLike)):
    from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
    path = os.fspath(run)
    try:
      rows = read_metrics(path)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: no metrics.jsonl there; pass a run's workdir") from None
    return os.path.basename(os.path.normpath(path)), pd.DataFrame(rows), None
  if hasattr(run, "metrics"):
    return getattr(run, "name", None), run.metrics, getattr(run, "config", None)
  raise TypeError(f"cannot plot a {type(run).__name__}: pass a Run (jt.load_run), a workdir path, a DataFrame of "
                  "metrics, or in a dict an (x, y) pair")


def _named(runs) -> list[tuple[str, Any]]:
  """[(label, run or (x, y))] from one run, a list of runs or a dict {label: run or (x, y)}."""
  if isinstance(runs, dict):
    return list(runs.items())
  import pandas as pd  # pylint: disable=import-outside-toplevel
  if isinstance(runs, (str, os.PathLike, pd.DataFrame)) or hasattr(runs, "metrics"):
    runs = [runs]
  out = []
  for i, r in enumerate(runs):
    if _is_pair(r):
      raise TypeError("an (x, y) pair needs a label: pass a dict {label: (x, y)}")
    out.append((_frame(r)[0] or f"run {i}", r))
  return out


def _rows(df, key: str, label: str):
  """The lines of `df` that carry `key`, one per step (the last written: a resumed run repeats steps)."""
  if key not in df.columns:
    have = sorted(c for c in df.columns if c != "step")
    raise KeyError(f"{label}: no metric {key!r}; it has {', '.join(have[:30])}{' ...' if len(have) > 30 else ''}")
  rows = df[df[key].notna()]
  return rows.drop_duplicates("step", keep="last").sort_values("step")


def _x_of(df, rows, x: str, config, label: str) -> np.ndarray:
  """The x coordinate of `rows`: the column itself where a line has it, else from the lines that do (evaluation
  lines carry no tokens or FLOPs: interpolated in the step between training lines), else tokens from the config."""
  steps = rows["step"].to_numpy(float)
  if x == "step":
    return steps
  if x in df.columns:
    known = df[df[x].notna()].drop_duplicates("step", keep="last").sort_values("step")
    if len(known):
      own = rows[x].to_numpy(float)
      fill = np.interp(steps, known["step"].to_numpy(float), known[x].to_numpy(float))
      return np.where(np.isfinite(own), own, fill)
  if x == "tokens" and config is not None:
    return steps * config.train.global_batch * config.data.seq_len
  raise KeyError(f"{label}: its metrics have no {x!r}; plot against 'step'" + (
      ", or pass a Run whose config gives the tokens per step" if x == "tokens" else ""))


def series(run, key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
  """(x_N, y_N) of one run's metric `key` against "step", "tokens", "total_flops" (or any column)."""
  label, df, config = _frame(run)
  rows = _rows(df, key, label or "the run")
  return _x_of(df, rows, x, config, label or "the run"), rows[key].to_numpy(float)


def smoothed(y, k: int) -> np.ndarray:
  """A centred mean over k points (over fewer at the ends, so the curve keeps its end values' level)."""
  y = np.asarray(y, float)
  if k <= 1 or not len(y):
    return y
  c = np.concatenate([[0.0], np.cumsum(y)])
  i = np.arange(len(y))
  lo, hi = np.maximum(0, i - k // 2), np.minimum(len(y), i + k // 2 + 1)
  return (c[hi] - c[lo]) / (hi - lo)


def _color(colors, label, i):
  from matplotlib.colors import is_color_like  # pylint: disable=import-outside-toplevel
  if colors is None:
    return None
  if is_color_like(colors):  # one color for every line: a name, "C3", an RGB(A) tuple
    return colors
  if isinstance(colors, dict):
    return colors.get(label)
  if callable(colors):
    return colors(label)
  return colors[i % len(colors)]


def _label(label_fn, label):
  if label_fn is True:
    return label
  if not label_fn:
    return "_nolegend_"
  return label_fn(label) if callable(label_fn) else label_fn


# ---------------------------------------------------------------- the figures


def curves(runs, key: str = "loss", x: str = "step", ax=None, *, smooth: int = 1, max_points: int | None = None,
           colors=None, label: bool | str | Callable = True, mark_end=(), logx: bool = False, logy: bool = False,
           xlabel: str | None = None, ylabel: str | None = None, title: str | None = None, legend: bool = True,
           **line_kw):
  """`key` (a metric: "loss", "eval_loss", "grad_norm", ...) of several runs against `x`, one line each.

  runs: a Run, workdir or DataFrame, a list of them, or a dict {label: run or (x, y)}.
  x: "step", "tokens" or "total_flops" (equal compute across runs of different sizes and across growth), or
    any other column. smooth: a centred mean over that many points; max_points: thin long series.
  colors: one color, a list, a dict {label: color} or a function of the label; label: True (the run's label),
    False (no legend entry), a string, or a function of the label. mark_end: labels (or a bool for all) whose
    last point gets a black ×, where a diverged run stopped. xlabel, ylabel: default `x` and `key`, left alone
    when every series is an (x, y) pair. Further keywords go to `ax.plot`.
  """
  ax = _axes(ax)
  runs = _named(runs)
  for i, (name, run) in enumerate(runs):
    if _is_pair(run):
      xs, ys = (np.asarray(v, float) for v in run)
    else:
      xs, ys = series(run, key, x)
    ys = smoothed(ys, smooth)
    if max_points and len(xs) > max_points:
      stride = len(xs) // max_points
      xs, ys = xs[::stride], ys[::stride]
    ax.plot(xs, ys, label=_label(label, name), color=_color(colors, name, i), **line_kw)
    if len(xs) and (mark_end if isinstance(mark_end, bool) else name in mark_end):
      ax.plot(xs[-1], ys[-1], "kx")
  from_metrics = any(not _is_pair(run) for _, run in runs)  # (x, y) pairs: their units are the caller's
  if xlabel is not None or from_metrics:
    ax.set_xlabel(X_LABELS.get(x, x) if xlabel is None else xlabel)
  if ylabel is not None or from_metrics:
    ax.set_ylabel(key if ylabel is None else ylabel)
  if title is not None:
    ax.set_title(title)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  if legend and any(not l.startswith("_") for l in ax.get_legend_handles_labels()[1]):
    ax.legend(fontsize=8)
  return ax


def _per_layer_row(run, key: str, step) -> tuple[int, np.ndarray]:
  """(step, values_L) of a per-layer metric at `step`: "last" (None), "first", or a step number."""
  label, df, _ = _frame(run)
  rows = _rows(df, key, label or "the run")
  if not len(rows):
    raise ValueError(f"{label or 'the run'}: no {key!r} line (diagnostics run every train.diagnostics_every steps)")
  if step in (None, "last"):
    r = rows.iloc[-1]
  elif step == "first":
    r = rows.iloc[0]
  else:
    hit = rows[rows["step"] == step]
    if not len(hit):
      raise ValueError(f"{label or 'the run'}: no {key!r} at step {step}; it has steps {rows['step'].tolist()}")
    r = hit.iloc[-1]
  return int(r["step"]), np.asarray(r[key], float)


def by_depth(values, key: str | None = None, ax=None, *, step=None, start: int = 1, colors=None, logy: bool = False,
             xlabel: str = "layer", ylabel: str | None = None, title: str | None = None, legend: bool = True,
             **line_kw):
  """Per-layer values against depth (layer 1..L, or from `start`: 0 for [L+1] values that begin at the
  embeddings, as a logit lens), one line per entry.

  values: an array [L], a dict {name: values_L}, or with `key` runs as `curves` takes them, drawn at diagnostics
  step `step` ("last" or None, "first", or a step number; the legend names it). Keywords go to `ax.plot`.
  """
  ax = _axes(ax)
  if key is None:
    items = list(values.items()) if isinstance(values, dict) else [(None, values)]
  else:
    items = []
    for name, run in _named(values):
      s, v = _per_layer_row(run, key, step)
      items.append((f"{name} (step {s})", v))
  line_kw = {"marker": "o", "ms": 3, **line_kw}
  for i, (name, v) in enumerate(items):
    v = np.asarray(v, float)
    ax.plot(np.arange(start, start + len(v)), v, label=name, color=_color(colors, name, i), **line_kw)
  ax.set(xlabel=xlabel, ylabel=(key or "") if ylabel is None else ylabel)
  ax.xaxis.set_major_locator(_integer_ticks())  # layers are whole numbers
  if title is not None:
    ax.set_title(title)
  if logy:
    ax.set_yscale("log")
  if legend and any(name is not None for name, _ in items):
    ax.legend(fontsize=8)
  return ax


def heatmap(values, key: str | None = None, ax=None, *, x=None, y=None, normalize: str | None = None,
            logscale: bool = False, cmap: str = "viridis", colorbar: bool = True, xlabel: str | None = None,
            ylabel: str | None = None, title: str | None = None):
  """A matrix as an image: with `key`, a run's per-layer metric over training (layer on y, step on x); else a
  2-D array [rows, cols] at coordinates `y` [rows] and `x` [cols] (default 1..n each).

  normalize: "row" or "col" min-max scales each row or column to [0, 1] (shape, not level, compared);
  logscale: a logarithmic color scale.
  """
  ax = _axes(ax)
  if key is not None:
    label, df, _ = _frame(values)
    rows = _rows(df, key, label or "the run")
    m = np.array([np.asarray(v, float) for v in rows[key]]).T  # [L, S]
    x = rows["step"].to_numpy(float) if x is None else x
    xlabel, ylabel, title = xlabel or "step", ylabel or "layer", key if title is None else title
  else:
    m = np.asarray(values, float)
  if m.ndim != 2 or not m.size:
    raise ValueError(f"heatmap needs a non-empty 2-D array, got shape {m.shape}")
  if normalize in ("row", "col"):
    a = 1 if normalize == "row" else 0
    lo, hi = np.nanmin(m, a, keepdims=True), np.nanmax(m, a, keepdims=True)
    m = (m - lo) / (hi - lo + 1e-12)
  elif normalize is not None:
    raise ValueError(f"normalize={normalize!r}: use 'row', 'col' or None")
  x = np.arange(1, m.shape[1] + 1) if x is None else np.asarray(x, float)
  y = np.arange(1, m.shape[0] + 1) if y is None else np.asarray(y, float)
  norm = None
  if logscale:
    from matplotlib.colors import LogNorm  # pylint: disable=import-outside-toplevel
    norm = LogNorm()
  mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(m), shading="nearest", cmap=cmap, norm=norm)  # nan: blank
  if colorbar:
    ax.figure.colorbar(mesh, ax=ax)
  for axis, c in ((ax.xaxis, x), (ax.yaxis, y)):
    if np.all(c == np.round(c)):  # layers, steps: whole numbers
      axis.set_major_locator(_integer_ticks())
  ax.set(xlabel=xlabel or "", ylabel=ylabel or "")
  if title is not None:
    ax.set_title(title)
  return ax


def _field(point: dict, name: str):
  """A point's value of `name`: its own key, or in its "values" (jaxtrain.sweep's result rows), by dotted suffix."""
  if name in point:
    return point[name]
  vals = point.get("values") or {}
  for k, v in vals.items():
    if k == name or k.endswith("." + name) or name.endswith("." + k):
      return v
  raise KeyError(f"a sweep point has no {name!r}; it has {sorted(set(point) | set(vals))}")


def _ratio_two(xs) -> bool:
  xs = sorted(set(xs))
  return len(xs) > 1 and all(math.isclose(b / a, 2.0, rel_tol=1e-6) for a, b in zip(xs, xs[1:]))


def sweep(points, x: str, y: str = "final_eval_loss", ax=None, *, by=None, label=None, colors=None,
          marker: str = "o", ms: float = 4, cap: float | None = None, failed=FAILED, failed_color=None,
          best: bool = False, logx: bool = True, base: int | None = None, xlabel: str | None = None,
          ylabel: str | None = None, title: str | None = None, legend: bool = True, **line_kw):
  """Final losses against a swept field `x`, one line per value of the fields `by`; runs that failed are × marks.

  points: dicts (or a DataFrame's rows) with `x`, `y` and "status" ("ok", "diverged", ...: jaxtrain.sweep's
  result rows; a field is found in the row or in its "values", by dotted suffix). The points with status in
  `failed` are drawn as × at `cap` if given, else on the top edge (the highest loss drawn); with `cap` (a loss at
  initialization, as LR sensitivity counts a diverged run) every loss is capped there and the × joins the line.
  label: a string (one curve) or a function of the `by` values' tuple; default "field=value, ...".
  best: a ★ at each curve's lowest loss. logx: a log axis, base 2 for a ×2 grid unless `base` says.
  """
  import pandas as pd  # pylint: disable=import-outside-toplevel
  ax = _axes(ax)
  points = points.to_dict("records") if isinstance(points, pd.DataFrame) else list(points)
  by = [] if by is None else [by] if isinstance(by, str) else list(by)
  groups: dict[tuple, list[dict]] = {}
  for p in points:
    groups.setdefault(tuple(_field(p, f) for f in by), []).append(p)

  def ok(p):
    v = p.get(y) if y in p else None
    return p.get("status", "ok") == "ok" and v is not None and np.isfinite(v)

  top = max((p[y] for p in points if ok(p)), default=1.0) if cap is None else cap
  for i, (key, group) in enumerate(groups.items()):
    if callable(label):
      name = label(key)
    elif label is not None:
      name = label
    else:
      name = ", ".join(f"{f.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{f.split('.')[-1]}={v}"
                       for f, v in zip(by, key)) or None
    color = _color(colors, key if by else name, i)
    color = color if color is not None or not by else f"C{i % 10}"
    good = sorted((_field(p, x), min(p[y], cap) if cap is not None else p[y]) for p in group if ok(p))
    bad = sorted(_field(p, x) for p in group if p.get("status") in failed)
    line = good if cap is None else sorted(good + [(b, cap) for b in bad])
    drawn = None
    if line:
      drawn, = ax.plot(*zip(*line), marker=marker, ms=ms, color=color, label=name, **line_kw)
      color = drawn.get_color()
    if bad:
      ax.plot(bad, [top] * len(bad), "x", ms=8, mew=1.5, color=failed_color or color, clip_on=False, zorder=5,
              label=None if drawn is not None else name)
    if best and good:
      bx, byv = min(good, key=lambda t: t[1])
      ax.plot([bx], [byv], marker="*", ms=14, color=color, markeredgecolor="k", zorder=6)
  if logx:
    xs = [float(_field(p, x)) for p in points]
    ax.set_xscale("log", base=base or (2 if _ratio_two(xs) else 10))
  ax.set(xlabel=x if xlabel is None else xlabel, ylabel=y if ylabel is None else ylabel)
  if title is not None:
    ax.set_title(title)
  if legend and any(not l.startswith("_") for l in ax.get_legend_handles_labels()[1]):
    ax.legend(fontsize=8)
  return ax


def save(fig, path: str, dpi: int = 110) -> str:
  """Lays `fig` out, writes it to `path` (atomically: a reader never sees half a PNG) and closes it."""
  fig.tight_layout()
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{ext or '.png'}"
  fig.savefig(tmp, dpi=dpi)
  _plt().close(fig)
  os.replace(tmp, path)
  return path
