"""Plots of runs, for notebooks and the studies' reports: one function per kind of figure the studies draw.

  curves(runs, "eval_loss", x="tokens")          a metric of several runs against steps, tokens or FLOPs
  by_depth(run, "layers/grad_norm")              per-layer diagnostics against depth (or a dict name -> values_L)
  heatmap(run, "layers/resid_var")               per-layer diagnostics over training: layer × step
  sweep(points, "optim.lr", by="d_model")        final losses against a swept hyperparameter, diverged runs marked
  lr_transfer(rules, widths), best_vs_width(rules)   does the best η transfer across width (μS, SP, ...)
  fp8_health({label: {"loss", "health"}})        FP8 underflow and saturation over training beside the loss
  fp8_stats(rows, linears)                       a run's FP8 diagnostics reduced for fp8_health and reports
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


def lr_transfer(rules: dict, widths, axes=None):
  """Does the best learning rate transfer across width? One column per rule: the final loss against the η a run
  was given (top) and against the η its hidden matrices got (bottom), a curve per width, ★ at each best.

  rules: {name: {"points": sweep points with "d_model", "lr", "applied" (the hidden matrices' η),
  "final_eval_loss", "status"; "xlabel": the top panel's x label}}. axes: 2 × len(rules) (default a new figure's).
  """
  plt = _plt()
  axes = plt.subplots(2, len(rules), figsize=(5.5 * len(rules), 8))[1] if axes is None else axes
  colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.9, len(widths)))))
  for col, (name, rule) in enumerate(rules.items()):
    for row, x in enumerate(("lr", "applied")):
      sweep([dict(r, eta=r[x]) for r in rule["points"]], "eta", ax=axes[row][col], by="d_model", best=True, base=2,
            label=lambda key: f"d = {key[0]}", colors=lambda key: colors[key[0]],
            xlabel="hidden matrices' applied η" if row else rule["xlabel"], ylabel="final validation loss",
            title=f"{name}: loss vs {'applied hidden' if row else 'transferred'} η")
  axes[0][0].figure.suptitle(f"width transfer: ★ = best η per width (d_base = {widths[0]})")
  return axes


def best_vs_width(rules: dict, ax=None):
  """The best η per width, from the grid and from a parabola through its neighbours, against the rule's own
  prediction (gray dashes: η ∝ d^-exponent from the first width), both axes log2.

  rules: {name: {"widths", "best", "fit" (the applied η at each width), "exponent", "marker"}}.
  """
  ax = _axes(ax)
  for name, r in rules.items():
    ws, mk = r["widths"], r["marker"]
    ax.plot(ws, r["best"], marker=mk, label=f"{name} best (grid)")
    ax.plot(ws, r["fit"], marker=mk, ls=":", mfc="none", label=f"{name} best (parabola)")
    ax.plot(ws, [r["best"][0] * (ws[0] / w) ** r["exponent"] for w in ws], ls="--", color="gray", lw=0.8)
  ax.set(xscale="log", yscale="log", xlabel="width d_model", ylabel="best applied hidden η",
         title="best η vs width (gray: the rules, 1/√d μS, 1/d SP)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.legend(fontsize=8)
  return ax


FP8_TENSORS = (("g", "o", "-", "E5M2"), ("x", "^", "--", "E4M3"), ("w", "s", ":", "E4M3"))  # tensor, marker, line


def fp8_stats(rows, linears) -> dict | None:
  """A run's FP8 diagnostics (metrics rows with `layers/fp8/<linear>/<x|w|g>_<underflow|saturation|rms>`, one
  value per layer) reduced for `fp8_health` and reports: per tensor t and stat, "<t>_<stat>" the mean over the
  `linears` and layers at each diagnostics step, "<t>_<stat>_max" the max, and "<t>_<stat>_first" / "_last"
  {linear: mean over layers} at the first and last diagnostics step; "steps". None without diagnostics."""
  diag = [r for r in rows if any(k.startswith("layers/fp8/") for k in r)]
  if not diag:
    return None
  out = {"steps": [d["step"] for d in diag]}
  for t in ("x", "w", "g"):
    for stat in ("underflow", "saturation", "rms"):
      keys = [f"layers/fp8/{l}/{t}_{stat}" for l in linears if f"layers/fp8/{l}/{t}_{stat}" in diag[0]]
      out[f"{t}_{stat}"] = [float(np.mean([np.mean(d[k]) for k in keys])) for d in diag]
      out[f"{t}_{stat}_max"] = [float(np.max([np.max(d[k]) for k in keys])) for d in diag]
      for which, d in (("first", diag[0]), ("last", diag[-1])):
        out[f"{t}_{stat}_{which}"] = {k.split("/")[2]: float(np.mean(d[k])) for k in keys}
  return out


def fp8_health(runs: dict, axes=None, *, smooth: int = 5):
  """FP8 casts over training, three panels: the training loss, the share of non-zeros cast to 0 (underflow) and of
  entries clipped at the format's max (saturation), per run; the tensor by marker and line style, the run by colour.

  runs: {label: {"loss": (steps, losses), "health": ..., "caption": the loss curve's legend (default the label),
  "ref": True for a run drawn on the loss panel only, dotted (one without FP8)}}. "health": `fp8_stats` of its
  metrics (None for a run without FP8). axes: three axes (default a new 16 × 4.4 figure's); returns them.
  """
  axes = _plt().subplots(1, 3, figsize=(16, 4.4))[1] if axes is None else axes
  for label, r in runs.items():
    curves({r.get("caption", label): r["loss"]}, ax=axes[0], smooth=smooth, ls=":" if r.get("ref") else "-",
           legend=False)
    c = axes[0].lines[-1].get_color()  # one colour per run
    f = r.get("health")
    if f and not r.get("ref"):
      for t, mk, ls, fmt in FP8_TENSORS:
        axes[1].plot(f["steps"], np.array(f[f"{t}_underflow"]) * 100, color=c, marker=mk, ms=3, ls=ls,
                     label=f"{label}: {t} ({fmt})" if t == "g" else f"{t} ({fmt})")
      for t, mk, ls, _ in FP8_TENSORS:
        axes[2].plot(f["steps"], np.array(f[f"{t}_saturation_max"]) * 100, color=c, marker=mk, ms=3, ls=ls,
                     label=f"{label}: {t}" if t == "g" else t)
  axes[0].set(xlabel="step", ylabel=f"training loss ({smooth}-point mean)", title="loss")
  axes[1].set(xlabel="step", ylabel="% of non-zeros cast to 0", title="FP8 underflow (mean over linears)")
  axes[2].set(xlabel="step", ylabel="% clipped at max", title="FP8 saturation (max over linears)")
  for ax in axes[1:]:
    ax.set_yscale("symlog", linthresh=0.01)  # linear below 0.01%, so 0 shows
    ax.set_ylim(bottom=0)
  for ax in axes:
    ax.legend(fontsize=6)
  return axes


def save(fig, path: str, dpi: int = 110) -> str:
  """Lays `fig` out, writes it to `path` (atomically: a reader never sees half a PNG) and closes it."""
  fig.tight_layout()
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{ext or '.png'}"
  fig.savefig(tmp, dpi=dpi)
  _plt().close(fig)
  os.replace(tmp, path)
  return path
