"""μnit Scaling at small scale: does η transfer across width (SP against μS), and does FP8 need no scales?

  python experiments/munit/run.py                                   # CPU size: ~16 min on an idle 2-core CPU (est.)
  python experiments/munit/run.py --size smoke --out /tmp/munit_smoke --runs /tmp/munit_smoke/sweeps   # ~3 min
  python experiments/munit/run.py --size gpu --out runs/munit_gpu/results --runs runs/munit_gpu/sweeps   # one GPU

Narayan, Gupta, Paul, Blalock, "μnit Scaling: Simple and Scalable FP8 LLM Training" (ICML 2025, arXiv 2502.05967);
spec: shared/research/munit_fp8.md §2-3 (transfer rules, results), §1.6-1.7 (FP8 formats, E5M2 underflow).
Every run is one point of a sweep (`jaxtrain.sweep`: its own workdir, resumable, a diverged point recorded):

1. Transfer (the paper's Fig. 6): final validation loss against η on a 2^k grid at four widths spanning 8×, for
   μS (`optim.lr_rule=mus`: hidden η·√(d_base/d), the rest η) and SP (`optim.lr_rule=sp`: all η·d_base/d, the
   paper's SP rule, §3.2), d_base the smallest width. `optim.lr` is η at d_base: under each rule the best
   `optim.lr` should stay put if the rule is right. The paper: μS's η* stays put, SP's applied η* falls as 1/width.
2. FP8 at one width (the paper's Fig. 7, in small): μS with static FP8 (no scales; the output gradient ×S = N·d
   before its E5M2 cast, spec §1.7) and without FP8; SP with delayed-scaling FP8 (amax history 16: Transformer
   Engine's recipe as Composer configures it, spec §3.4) and without; each at its own best η from part 1;
   with the FP8 health diagnostics (`layers/fp8/<linear>/<x|w|g>_<underflow|saturation|rms>`).
3. SP forced into static FP8: with no scaling at all (S = 1: every tensor cast as it is) and with the static
   gradient scale jaxtrain applies by default (S = N); and, as the control the paper does not show, μS with S = 1.

The report (`<out>/report.md`, PNG plots, `summary.json` with every number) is computed from the runs; the paper's
claims sit beside our numbers and each verdict is derived from the measurements, never tuned to match.
`--report-only` rebuilds the report from finished sweeps (or from `summary.json` alone if the sweeps are gone).
`--parts 1` and `--parts 2,3 --fp8-lr mus=...,sp=...` run part 1 and the FP8 runs side by side (the FP8 runs then
use the given η; the report names part 1's best beside it); a later `--report-only` joins them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")
PARAMS = ("mus", "sp")
NAMES = {"mus": "μS", "sp": "SP"}

# widths (d_base = the first), head_dim (heads = width/head_dim), η grids per rule (LO:HI:x2 of `optim.lr`, the rate
# at d_base), the FP8 study's width, its diagnostics interval and the delayed recipe's amax history.
SIZES = {
    # η grids centred on single timed pilots at widths 32 and 256 (μS best near 2^-4, SP near 2^-9 at both).
    "cpu": dict(widths=(32, 64, 128, 256), head_dim=16, lr={"mus": (2**-6, 2**-2), "sp": (2**-11, 2**-8)},
                fp8_width=128, diagnostics_every=20),
    "smoke": dict(widths=(16, 32), head_dim=8, lr={"mus": (2**-5, 2**-4), "sp": (2**-9, 2**-8)},
                  fp8_width=16, diagnostics_every=5),
    "gpu": dict(widths=(256, 512, 1024, 2048), head_dim=64, lr={"mus": (2**-9, 2**-1), "sp": (2**-15, 2**-7)},
                fp8_width=1024, diagnostics_every=100),
}
FP8_HISTORY = 16  # Composer's amp_fp8 DelayedScaling(amax_history_len=16), the paper's probable TE baseline (§3.4)

# The FP8 runs: (key, parametrization, label, overrides beyond width and η).
FP8_RUNS = (  # in the order they run: part 2 first, then part 3
    ("mus_static", "mus", "μS, static FP8 (S = N·d)", ["model.fp8=static"]),
    ("sp_delayed", "sp", f"SP, delayed FP8 (history {FP8_HISTORY})", ["model.fp8=delayed"]),
    ("mus_none", "mus", "μS, no FP8", ["model.fp8=none"]),
    ("sp_none", "sp", "SP, no FP8", ["model.fp8=none"]),
    ("sp_static_s1", "sp", "SP, static FP8, no scaling (S = 1)", ["model.fp8=static", "model.fp8_grad_scale=1"]),
    ("mus_static_s1", "mus", "μS, static FP8, S = 1", ["model.fp8=static", "model.fp8_grad_scale=1"]),
    ("sp_static_auto", "sp", "SP, static FP8, S = N", ["model.fp8=static"]),
)
PART2 = ("mus_static", "mus_none", "sp_delayed", "sp_none")
PART3 = ("sp_static_s1", "sp_static_auto", "mus_static_s1")
LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.wi", "mlp.down")


def lr_grid(lo: float, hi: float) -> str:
  return f"optim.lr={lo!r}:{hi!r}:x2"


def width_axis(s) -> str:
  w = s["widths"]
  return "model.d_model=" + ",".join(map(str, w)) + ";model.num_heads=" + ",".join(str(d // s["head_dim"]) for d in w)


def value(row, field):
  """A swept field's value in a result row (keys may be full dotted names or suffixes)."""
  vals = row.get("values", {})
  for k, v in vals.items():
    if k == field or k.endswith("." + field) or field.endswith("." + k):
      return v
  raise KeyError(f"{field} not in {sorted(vals)}")


def row_workdir(row, sweep_dir):
  return row.get("workdir") or os.path.join(sweep_dir, "points", row["name"])


# ---------------------------------------------------------------- running


def run_transfer(args, s):
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  out = {}
  for p in PARAMS:
    d = os.path.join(args.runs, f"transfer_{p}")
    grid = [width_axis(s), lr_grid(*s["lr"][p])]
    t0 = time.time()
    sweep.run(f"{CONFIG}:{p},{args.size}", grid, d, overrides=[], parallel=args.parallel)
    print(f"transfer {p}: {time.time() - t0:.0f} s", flush=True)
    out[p] = [dict(r, workdir=row_workdir(r, d)) for r in sweep.read_results(d)]
  return out


def read_transfer(args):
  """Part 1's finished points, from its sweeps (empty where a sweep has not run)."""
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  out = {}
  for p in PARAMS:
    d = os.path.join(args.runs, f"transfer_{p}")
    out[p] = [dict(r, workdir=row_workdir(r, d)) for r in sweep.read_results(d)] if os.path.isdir(d) else []
  return out


def best_lr(rows, width):
  """(η at the lowest final eval loss, its loss, whether it sits at a grid edge) among the finished points."""
  pts = sorted((value(r, "lr"), r) for r in rows if value(r, "d_model") == width)
  ok = [(lr, r["final_eval_loss"]) for lr, r in pts if r["status"] == "ok" and r["final_eval_loss"] is not None]
  if not ok:
    return None, None, None
  lr, loss = min(ok, key=lambda t: t[1])
  grid = [lr_ for lr_, _ in pts]
  return lr, loss, lr in (grid[0], grid[-1])


def fp8_key(row):
  """Which of FP8_RUNS a point of the FP8 sweep is (by parametrization, fp8 mode and gradient scale)."""
  got = (str(value(row, "parametrization")), str(value(row, "fp8")), float(value(row, "fp8_grad_scale")))
  for key, p, _, ov in FP8_RUNS:
    kv = dict(o.split("=") for o in ov)
    if got == (p, kv["model.fp8"], float(kv.get("model.fp8_grad_scale", 0))):
      return key
  return None


def run_fp8(args, s, transfer):
  """Parts 2 and 3: one sweep at width fp8_width, each run at its parametrization's best η from part 1.

  One zipped axis carries each run's own settings (the SP runs override the μS config's parametrization,
  placement and η rule, the only fields `config.py` sets differently), so the points flow through the
  `--parallel` slots in FP8_RUNS' order: part 2 first, then part 3. Diagnostics only where there is FP8.
  """
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  w = s["fp8_width"]
  lrs = {p: best_lr(transfer.get(p, []), w)[0] for p in PARAMS}
  lrs |= args.fp8_lr or {}
  runs = [r for r in FP8_RUNS if lrs[r[1]] is not None]
  if not runs:
    print(f"fp8: no finished transfer point at width {w}; skipped", flush=True)
    return {}
  cols = {k: [] for k in ("model.parametrization", "model.norm.placement", "optim.lr_rule", "optim.lr", "model.fp8",
                          "model.fp8_grad_scale", "model.fp8_history", "train.diagnostics_every")}
  for _, p, _, ov in runs:
    kv = dict(o.split("=") for o in ov)
    cols["model.parametrization"].append(p)
    cols["model.norm.placement"].append("res_post" if p == "mus" else "pre")
    cols["optim.lr_rule"].append(p)
    cols["optim.lr"].append(repr(lrs[p]))
    cols["model.fp8"].append(kv["model.fp8"])
    cols["model.fp8_grad_scale"].append(kv.get("model.fp8_grad_scale", "0"))
    cols["model.fp8_history"].append(str(FP8_HISTORY))
    cols["train.diagnostics_every"].append(str(s["diagnostics_every"] if kv["model.fp8"] != "none" else 0))
  grid = [";".join(f"{k}=" + ",".join(v) for k, v in cols.items())]
  overrides = [f"model.d_model={w}", f"model.num_heads={w // s['head_dim']}"]
  d = os.path.join(args.runs, "fp8")
  t0 = time.time()
  sweep.run(f"{CONFIG}:mus,{args.size}", grid, d, overrides=overrides, parallel=args.parallel)
  print(f"fp8: {time.time() - t0:.0f} s", flush=True)
  return read_fp8(d, w)


def read_fp8(d, width):
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  out = {}
  for r in sweep.read_results(d):
    key = fp8_key(r)
    if key:
      out[key] = dict(r, workdir=row_workdir(r, d), lr=value(r, "lr"), width=width)
  return out


# ---------------------------------------------------------------- measurements


def curves(workdir):
  """Training loss by step, final eval loss, and the FP8 diagnostics rows of one run."""
  try:
    rows = read_metrics(workdir)
  except FileNotFoundError:
    return {"loss": [], "eval": [], "diag": []}
  return {"loss": [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval_loss" not in r],
          "eval": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
          "diag": [{k: v for k, v in r.items() if k == "step" or k.startswith("layers/fp8/")}
                   for r in rows if any(k.startswith("layers/fp8/") for k in r)]}


def fp8_summary(diag):
  """Per tensor (x, w, g) and stat: the mean over linears and layers at each diagnostics step, and per linear at the
  first and last diagnostics step (mean over layers)."""
  if not diag:
    return None
  out = {"steps": [d["step"] for d in diag]}
  for t in ("x", "w", "g"):
    for stat in ("underflow", "saturation", "rms"):
      keys = [f"layers/fp8/{l}/{t}_{stat}" for l in LINEARS if f"layers/fp8/{l}/{t}_{stat}" in diag[0]]
      out[f"{t}_{stat}"] = [float(np.mean([np.mean(d[k]) for k in keys])) for d in diag]
      out[f"{t}_{stat}_max"] = [float(np.max([np.max(d[k]) for k in keys])) for d in diag]
      for which, d in (("first", diag[0]), ("last", diag[-1])):
        out[f"{t}_{stat}_{which}"] = {k.split("/")[2]: float(np.mean(d[k])) for k in keys}
  return out


def measure(transfer, fp8):
  m = {"transfer": {}, "fp8": {}}
  for p, rows in transfer.items():
    m["transfer"][p] = [{"d_model": value(r, "d_model"), "lr": value(r, "lr"), "status": r["status"],
                         "final_eval_loss": r["final_eval_loss"], "final_train_loss": r["final_train_loss"],
                         "initial_loss": r.get("initial_loss"), "wall_s": r.get("wall_s"), "error": r.get("error")}
                        for r in rows]
  for key, r in fp8.items():
    c = curves(r["workdir"])
    m["fp8"][key] = {"status": r["status"], "final_eval_loss": r["final_eval_loss"], "lr": r["lr"],
                     "width": r["width"], "wall_s": r.get("wall_s"), "error": r.get("error"),
                     "loss": c["loss"], "fp8": fp8_summary(c["diag"])}
  return m


def transfer_table(rows, widths):
  """Per width: best η (grid), edge flag, loss, and a parabola-in-log2(η) estimate of the optimum."""
  out = []
  for w in widths:
    pts = sorted((r["lr"], r) for r in rows if r["d_model"] == w)
    ok = [(lr, r["final_eval_loss"]) for lr, r in pts if r["status"] == "ok" and r["final_eval_loss"] is not None]
    if not ok:
      out.append({"d_model": w, "best_lr": None})
      continue
    i = min(range(len(ok)), key=lambda j: ok[j][1])
    lr, loss = ok[i]
    edge = lr in (pts[0][0], pts[-1][0])
    fit = lr
    if 0 < i < len(ok) - 1 and ok[i - 1][0] * 2 == lr and ok[i + 1][0] == lr * 2:  # vertex of the parabola
      y0, y1, y2 = ok[i - 1][1], loss, ok[i + 1][1]
      den = y0 - 2 * y1 + y2
      fit = lr * 2 ** (0.5 * (y0 - y2) / den) if den > 0 else lr
    out.append({"d_model": w, "best_lr": lr, "best_loss": loss, "edge": edge, "fit_lr": fit,
                "n_ok": len(ok), "n": len(pts), "bad": [(lr_, r["status"]) for lr_, r in pts if r["status"] != "ok"]})
  return out


def applied(p, lr, w, d_base):
  """The learning rate the hidden matrices get: μS η·√(d_base/d), SP η·d_base/d."""
  return lr * (math.sqrt(d_base / w) if p == "mus" else d_base / w)


def span(workdirs) -> dict:
  """When the points ran, from their files: the first point's start (its log's first `=== sweep:` line) to the
  last result.json written, across every invocation (a resumed study included), and the points' summed wall time."""
  starts, ends, total = [], [], 0.0
  for d in workdirs:
    try:
      with open(os.path.join(d, "log.txt")) as fh:
        first = fh.readline()
      starts.append(time.mktime(time.strptime(first.split("=== sweep: ")[1][:19], "%Y-%m-%d %H:%M:%S")))
      ends.append(os.path.getmtime(os.path.join(d, "result.json")))
      with open(os.path.join(d, "result.json")) as fh:
        total += json.load(fh).get("wall_s") or 0.0
    except (OSError, IndexError, ValueError):
      continue
  if not starts:
    return {}
  fmt = lambda t: time.strftime("%H:%M", time.localtime(t))
  return {"start": fmt(min(starts)), "end": fmt(max(ends)), "minutes": (max(ends) - min(starts)) / 60,
          "points": len(starts), "point_minutes": total / 60}


# ---------------------------------------------------------------- plots


def plots(m, s, out_dir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  widths, d_base = s["widths"], s["widths"][0]
  colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.9, len(widths)))))
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for col, p in enumerate(PARAMS):
    rows = m["transfer"].get(p, [])
    for coord, ax in ((0, axes[0][col]), (1, axes[1][col])):
      points = [dict(r, eta=applied(p, r["lr"], r["d_model"], d_base) if coord else r["lr"]) for r in rows]
      rule = "η (optim.lr: the rate at d_base, transferred by " + (
          "μS's rule)" if p == "mus" else "SP's rule η·d_base/d)")
      jplots.sweep(points, "eta", ax=ax, by="d_model", best=True, base=2, label=lambda key: f"d = {key[0]}",
                   colors=lambda key: colors[key[0]], xlabel=("hidden matrices' applied η" if coord else rule),
                   ylabel="final validation loss",
                   title=f"{NAMES[p]}" + (": loss vs applied hidden η" if coord else ": loss vs transferred η"))
  fig.suptitle("width transfer: ★ = best η per width (d_base = %d)" % d_base)
  jplots.save(fig, os.path.join(out_dir, "transfer.png"))

  # best applied η against width, with the two rules' predictions
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for p, mk in (("mus", "o"), ("sp", "s")):
    t = [r for r in transfer_table(m["transfer"].get(p, []), widths) if r.get("best_lr")]
    if not t:
      continue
    ws = [r["d_model"] for r in t]
    ax.plot(ws, [applied(p, r["best_lr"], r["d_model"], d_base) for r in t], marker=mk, label=f"{NAMES[p]} best (grid)")
    ax.plot(ws, [applied(p, r["fit_lr"], r["d_model"], d_base) for r in t], marker=mk, ls=":", mfc="none",
            label=f"{NAMES[p]} best (parabola)")
    e0 = applied(p, t[0]["best_lr"], t[0]["d_model"], d_base)
    ax.plot(ws, [e0 * (ws[0] / w) ** (0.5 if p == "mus" else 1) for w in ws], ls="--", color="gray", lw=0.8)
  ax.set(xscale="log", yscale="log", xlabel="width d_model", ylabel="best applied hidden η",
         title="best η vs width (gray: the rules, 1/√d μS, 1/d SP)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.legend(fontsize=8)
  jplots.save(fig, os.path.join(out_dir, "best_lr.png"))

  labels = {k: lab for k, _, lab, _ in FP8_RUNS}

  for fname, keys, ref in (("fp8.png", PART2, ()), ("sp_static.png", PART3, ("sp_none", "mus_none"))):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for k in keys + tuple(ref):
      r = m["fp8"].get(k)
      if not r or not r["loss"]:
        continue
      jplots.curves({f"{labels[k]} ({r['status']}; val {_f(r['final_eval_loss'])})": tuple(zip(*r["loss"]))},
                    ax=axes[0], smooth=5, ls=":" if k in ref else "-", legend=False)
      line = axes[0].lines[-1]
      c = line.get_color()  # one colour per run; the tensor by marker and line style
      f = r["fp8"]
      if f and k not in ref:
        axes[1].plot(f["steps"], np.array(f["g_underflow"]) * 100, color=c, marker="o", ms=3,
                     label=f"{labels[k]}: g (E5M2)")
        axes[1].plot(f["steps"], np.array(f["x_underflow"]) * 100, color=c, marker="^", ms=3, ls="--",
                     label="x (E4M3)")
        axes[1].plot(f["steps"], np.array(f["w_underflow"]) * 100, color=c, marker="s", ms=3, ls=":", label="w (E4M3)")
        for t, mk, ls_ in (("g", "o", "-"), ("x", "^", "--"), ("w", "s", ":")):
          axes[2].plot(f["steps"], np.array(f[f"{t}_saturation_max"]) * 100, color=c, marker=mk, ms=3, ls=ls_,
                       label=f"{labels[k]}: {t}" if t == "g" else t)
    axes[0].set(xlabel="step", ylabel="training loss (5-point mean)", title="loss")
    axes[1].set(xlabel="step", ylabel="% of non-zeros cast to 0", title="FP8 underflow (mean over linears)")
    axes[2].set(xlabel="step", ylabel="% clipped at max", title="FP8 saturation (max over linears)")
    for ax in axes[1:]:
      ax.set_yscale("symlog", linthresh=0.01)  # linear below 0.01%, so 0 shows
      ax.set_ylim(bottom=0)
    for ax in axes:
      ax.legend(fontsize=6)
    jplots.save(fig, os.path.join(out_dir, fname))


def _f(x, fmt="{:.3f}"):
  return "—" if x is None else fmt.format(x)


def _pct(x):
  return "—" if x is None else (f"{100 * x:.3g}%" if x else "0")


# ---------------------------------------------------------------- report


def report(m, s, args, meta):
  widths, d_base = s["widths"], s["widths"][0]
  tab = {p: transfer_table(m["transfer"].get(p, []), widths) for p in PARAMS}
  sp = m.get("span") or {}
  L = [f"# μnit Scaling at small scale: width transfer and FP8 ({args.size} size)", "",
       f"Generated by `python experiments/munit/run.py{'' if args.size == 'cpu' else ' --size ' + args.size}` on "
       f"{meta['date']}: {meta['machine']}, {meta.get('parallel', 1)} point(s) at a time. "
       + (f"Wall time {sp['minutes']:.1f} min ({sp['start']}-{sp['end']} UTC, {sp['points']} runs, "
          f"{sp['point_minutes']:.0f} run-minutes in all)" if sp else f"Wall time {meta['wall_min']:.1f} min")
       + f". Machine state: {meta['load']}.", "",
       f"Model (`experiments/munit/config.py`, size `{args.size}`): {meta['model']}. Data: the embedded corpus "
       "(Python standard library, bytes). One seed, the same data order for every run. Both parametrizations use "
       "what the paper uses for every model: Lion (β = 0.9, 0.99), fully decoupled weight decay λ = 2⁻¹³, cosine "
       "to 10% after 10% warmup, GELU, LayerNorm, untied head; no gradient clipping. SP: N(0, 0.02²) init, "
       "Pre-LN. μS: unit init, 1/√fan_in multipliers, head 1/fan_in, Res-Post-LN with τ = 0.4. "
       "Computed in float32 on CPU (FP8 emulated there: numerics faithful, no speed-up).", "",
       "## 1. Does the best learning rate transfer across width? (the paper's Fig. 6)", "",
       f"Final validation loss against `optim.lr` on a 2^k grid at widths {', '.join(map(str, widths))} "
       f"({widths[-1] // widths[0]}×; head_dim {s['head_dim']}, heads scaled with width), d_base = {d_base}. "
       "Each parametrization uses its own transfer rule: μS (`lr_rule=mus`) gives hidden matrices "
       "η·√(d_base/d) and everything else η; SP (`lr_rule=sp`, the paper's SP rule of §3.2) gives every "
       "parameter η·d_base/d. So under each rule the best `optim.lr` should stay put if the rule is right, and the "
       "applied η* of SP then falls as 1/width (the paper's Fig. 6 top row plots the applied η).", "",
       "![](transfer.png)", "", "![](best_lr.png)", "",
       "| rule | width | best `optim.lr` (grid) | at grid edge? | val loss there | parabola estimate "
       "| applied hidden η* "
       "| points ok / run |", "|---|---|---|---|---|---|---|---|"]
  verdict = {}
  for p in PARAMS:
    for r in tab[p]:
      if r.get("best_lr") is None:
        L.append(f"| {NAMES[p]} | {r['d_model']} | no finished point | | | | | |")
        continue
      bad = "; ".join(f"{lr:g} {st}" for lr, st in r["bad"])
      L.append(f"| {NAMES[p]} | {r['d_model']} | 2^{math.log2(r['best_lr']):.0f} = {r['best_lr']:g} | "
               f"{'**yes**' if r['edge'] else 'no'} | {r['best_loss']:.4f} | {r['fit_lr']:.3g} | "
               f"{applied(p, r['best_lr'], r['d_model'], d_base):.3g} | {r['n_ok']} / {r['n']}"
               + (f" ({bad})" if bad else "") + " |")
    good = [r for r in tab[p] if r.get("best_lr")]
    if len(good) >= 2:
      steps = [math.log2(r["best_lr"]) for r in good]
      ws = np.log2([r["d_model"] for r in good])
      eta_applied = np.log2([applied(p, r["fit_lr"], r["d_model"], d_base) for r in good])
      slope = float(np.polyfit(ws, eta_applied, 1)[0]) if len(good) >= 2 else float("nan")
      verdict[p] = {"spread_steps": max(steps) - min(steps), "edges": [r["d_model"] for r in good if r["edge"]],
                    "slope_applied": slope,
                    "shift_steps": math.log2(good[-1]["best_lr"] / good[0]["best_lr"])}
  L.append("")
  for p in PARAMS:
    if p in verdict:
      v = verdict[p]
      L.append(f"- {NAMES[p]}: the best `optim.lr` spans {v['spread_steps']:.0f} grid step(s) over the widths "
               f"(from d = {widths[0]} to d = {widths[-1]}: {v['shift_steps']:+.0f} steps); the applied hidden η* "
               f"scales as d^{v['slope_applied']:.2f} (least squares on the parabola estimates; μS's rule is d^-0.5, "
               f"SP's d^-1)." + (f" **Optimum at a grid edge for width(s) {v['edges']}**: the true optimum may lie "
                                  "outside the grid there." if v["edges"] else " Every optimum is interior."))
  L += ["", "## 2. FP8 at one width (the paper's Fig. 7, in small)", ""]
  f8 = m["fp8"]
  w = s["fp8_width"]
  if f8:
    lr_of = {p: next((r["lr"] for k, r in f8.items() if k.startswith(p)), None) for p in PARAMS}
    best1 = {p: next((r["best_lr"] for r in tab[p] if r["d_model"] == w and r.get("best_lr")), None) for p in PARAMS}
    L += [f"Width {w}. η: μS `optim.lr` = {_f(lr_of['mus'], '{:g}')} (part 1's best at this width: "
          f"{_f(best1['mus'], '{:g}')}), SP `optim.lr` = {_f(lr_of['sp'], '{:g}')} (part 1's best: "
          f"{_f(best1['sp'], '{:g}')}). FP8 health: the share of non-zero entries that the cast "
          "rounds to 0 (underflow) and of entries clipped at the format's max (saturation), for the activations x "
          "and weights w (E4M3) and the output gradients g (E5M2, after ×S or ÷ its delayed scale), averaged over "
          "the six hidden linears and the layers (max: the worst linear and layer).", "",
          "![](fp8.png)", "",
          "| run | status | final val loss | x underflow first → last | w underflow first → last | "
          "g underflow first → last (max) | saturation max (x / w / g) | wall |", "|---|---|---|---|---|---|---|---|"]
    for k in PART2 + PART3:
      r = f8.get(k)
      if not r:
        continue
      lab = next(lab for kk, _, lab, _ in FP8_RUNS if kk == k)
      f = r["fp8"]
      if f:
        cells = [f"{_pct(f[t + '_underflow'][0])} → {_pct(f[t + '_underflow'][-1])}" for t in ("x", "w")]
        cells.append(f"{_pct(f['g_underflow'][0])} → {_pct(f['g_underflow'][-1])} ({_pct(max(f['g_underflow_max']))})")
        cells.append(" / ".join(_pct(max(f[f"{t}_saturation_max"])) for t in ("x", "w", "g")))
      else:
        cells = ["—"] * 4
      L.append(f"| {lab} | {r['status']} | {_f(r['final_eval_loss'], '{:.4f}')} | " + " | ".join(cells)
               + f" | {_f(r['wall_s'], '{:.0f} s')} |")
    for k in ("mus_static", "sp_delayed", "sp_static_s1", "mus_static_s1", "sp_static_auto"):
      if k in f8 and f8[k]["fp8"]:
        f = f8[k]["fp8"]
        lab = next(lab for kk, _, lab, _ in FP8_RUNS if kk == k)
        L += ["", f"{lab}, underflow per linear at the last diagnostics step (step {f['steps'][-1]}, mean over "
              "layers): activations x " + ", ".join(f"{n} {_pct(v)}" for n, v in f["x_underflow_last"].items())
              + "; output gradients g " + ", ".join(
                  f"{n} {_pct(v)}" if f["g_rms_last"].get(n) else f"{n} all zero (no gradient reaches it)"
                  for n, v in f["g_underflow_last"].items())
              + f"; gradient RMS (after ×S or ÷ scale) " + ", ".join(f"{n} {v:.3g}" for n, v in f["g_rms_last"].items())
              + "."]
    L += ["", "## 3. SP forced into static FP8: the failure μS avoids", "",
          "`model.fp8=static` on the SP model: x and W cast to E4M3 as they are (SP's weights have RMS ≈ 0.02, "
          "near E4M3's smallest normal 2⁻⁶ ≈ 0.016), the output gradient cast to E5M2 after ×S. With S = 1 nothing "
          "is scaled at all (a mean loss's output gradients are of order 1/N and sit at the bottom of E5M2's range, "
          "whose smallest subnormal is 1.5e-5: the table above gives how much of them underflows); "
          "S = N (tokens per microbatch) is the static gradient scale jaxtrain applies to SP by default. The "
          "control: μS with S = 1, i.e. without the static gradient scale that μS itself needs (spec §1.7: the "
          "paper does not say how it keeps gradients in E5M2's range). Dotted: the runs without FP8.", "",
          "![](sp_static.png)", ""]
  L += ["## The paper's claims beside our numbers", "", "| the paper says | we measured | agrees? |", "|---|---|---|"]
  L += [f"| {a} | {b} | **{c}** |" for a, b, c in claims(m, tab, verdict, s)]
  L += ["", "Scale: the paper's transfer models are 4 layers at widths 256-8192 trained 10k steps on 655M tokens; "
        "ours are tiny and short (see the model line above), so only directions and orderings compare, not "
        "absolute losses. One seed: differences of a few hundredths in loss are within seed noise, so a best η "
        "that moves by one grid step between two widths is not evidence either way.", ""]
  with open(os.path.join(args.out, "report.md"), "w") as fh:
    fh.write("\n".join(L) + "\n")


def claims(m, tab, verdict, s):
  out = []
  widths = s["widths"]
  if "mus" in verdict:
    v = verdict["mus"]
    ok = v["spread_steps"] <= 1 and not v["edges"]
    out.append(("μS: optimal η stable across widths 256→8192 (32×) (§3.1, Fig. 6)",
                f"best `optim.lr` spans {v['spread_steps']:.0f} grid step(s) over {widths[0]}→{widths[-1]} "
                f"({widths[-1] // widths[0]}×)" + (f"; edge at {v['edges']}" if v["edges"] else ""),
                "yes" if ok else ("not shown (optimum at a grid edge)" if v["edges"] else "no")))
  if "sp" in verdict:
    v = verdict["sp"]
    moved = -1.5 <= v["slope_applied"] <= -0.5
    out.append(("SP: η* decreases as the inverse of the width (§3.1, Fig. 6)",
                f"applied η* ∝ d^{v['slope_applied']:.2f}; best `optim.lr` under the 1/d rule moves "
                f"{v['shift_steps']:+.0f} step(s) over {widths[-1] // widths[0]}×"
                + (f"; edge at {v['edges']}" if v["edges"] else ""),
                "not shown (optimum at a grid edge)" if v["edges"] else ("yes" if moved else "no")))
  best = {p: min((r["best_loss"] for r in tab[p] if r.get("best_lr")), default=None) for p in PARAMS}
  if all(best[p] is not None for p in PARAMS):
    per_w = []
    for a, b in zip(tab["mus"], tab["sp"]):
      if a.get("best_lr") and b.get("best_lr"):
        per_w.append(f"d={a['d_model']}: μS {a['best_loss']:.3f} / SP {b['best_loss']:.3f}")
    wins = sum(a["best_loss"] <= b["best_loss"] for a, b in zip(tab["mus"], tab["sp"])
               if a.get("best_lr") and b.get("best_lr"))
    out.append(("μS reaches equal or better quality than SP (Table 5, 1B-13B)", "best val loss per width: "
                + "; ".join(per_w), f"{'yes' if wins == len(per_w) else 'partly' if wins else 'no'} "
                f"({wins} of {len(per_w)} widths)"))
  f8 = m["fp8"]
  if "mus_static" in f8 and "mus_none" in f8:
    a, b = f8["mus_static"]["final_eval_loss"], f8["mus_none"]["final_eval_loss"]
    if a is not None and b is not None:
      out.append(("μS trains in FP8 with static scales to the loss of its BF16 twin (Fig. 7, 1B-13B)",
                  f"val loss static FP8 {a:.4f} vs float32 {b:.4f} ({a - b:+.4f})",
                  ("yes" if a - b < 0.02 else "close" if a - b < 0.05 else "no")
                  + (" (FP8 ends lower: one seed, not a gain to claim)" if b - a > 0.02 else "")))
  if "sp_delayed" in f8 and "sp_none" in f8:
    a, b = f8["sp_delayed"]["final_eval_loss"], f8["sp_none"]["final_eval_loss"]
    if a is not None and b is not None:
      out.append(("SP trains in FP8 with TE's delayed scaling at 1B-7B; at 13B it spikes and does not converge "
                  "(Fig. 7)",
                  f"val loss delayed FP8 {a:.4f} vs float32 {b:.4f} ({a - b:+.4f}); at this size nothing can "
                  "show the 13B failure", ("yes (small scale only)" if a - b < 0.05 else "no")
                  + (" (FP8 ends lower: one seed)" if b - a > 0.02 else "")))
  for k, claim in (("sp_static_s1", "SP cannot use static FP8 without scales (the premise of μS; the paper shows "
                                    "no such run: spec §3.4)"),
                   ("mus_static_s1", "(no claim: control) μS without a static gradient scale")):
    r = f8.get(k)
    ref = f8.get("sp_none" if k.startswith("sp") else "mus_none")
    if r and r["fp8"]:
      g = r["fp8"]["g_underflow"]
      w_u = r["fp8"]["w_underflow"]
      loss = r["final_eval_loss"]
      txt = (f"{r['status']}; val loss {_f(loss, '{:.4f}')} "
             f"(without FP8 {_f(ref and ref['final_eval_loss'], '{:.4f}')}); "
             f"g underflow {_pct(g[0])} → {_pct(g[-1])}, w underflow {_pct(w_u[0])} → {_pct(w_u[-1])}")
      fails = r["status"] != "ok" or (loss is not None and ref and ref["final_eval_loss"] is not None
                                      and loss - ref["final_eval_loss"] > 0.05)
      out.append((claim, txt, ("yes: it fails" if fails else "no: it trains") if k.startswith("sp")
                  else ("fails too" if fails else "trains")))
  if "mus_static" in f8 and f8["mus_static"]["fp8"]:
    f = f8["mus_static"]["fp8"]
    worst = {t: max(f[f"{t}_underflow"]) for t in ("x", "w", "g")}
    sat = max(max(f[f"{t}_saturation_max"]) for t in ("x", "w", "g"))
    out.append(("μS: weights, activations and gradients cast to FP8 directly, no dynamic scaling (§3.3)",
                f"static casts, no scale state; saturation max {_pct(sat)}; underflow over training, mean over "
                "linears, "
                f"at worst: x {_pct(worst['x'])}, w {_pct(worst['w'])}, g {_pct(worst['g'])} (worst single linear "
                f"g {_pct(max(f['g_underflow_max']))}); the gradients need the static scale S = N·d the paper does not "
                "give (spec §1.7)",
                "yes" if max(worst.values()) < 0.05 and sat == 0 else "partly"))
    xd = f8["mus_static"]["fp8"]["x_underflow_last"].get("mlp.down")
    out.append(("GELU's FFN-down input underflows FP8 heavily during unit-scaled training: up to 30% (A.7)",
                f"μS static, mlp.down x underflow at the last diagnostics step: {_pct(xd)} (mean over layers)",
                "yes" if xd is not None and xd > 0.1 else "not at this size"))
  return out


# ---------------------------------------------------------------- main


def machine_state(t0_load, t1_load):
  cores = os.cpu_count()
  busy = max(t0_load[0], t1_load[0]) > 0.5 * cores
  return (f"load average {t0_load[0]:.1f} at start, {t1_load[0]:.1f} at the end ({cores} CPU threads): "
          + ("**busy** (other processes shared the CPU; an idle machine is faster)" if busy else "idle"))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=tuple(SIZES), default="cpu")
  parser.add_argument("--out", default=None, help="report and plots (default experiments/munit/results, "
                      "or runs/munit_<size>/results for other sizes)")
  parser.add_argument("--runs", default=None, help="the sweeps' directories (default runs/munit_<size>)")
  parser.add_argument("--parallel", type=int, default=None, help="points run at once (jaxtrain.sweep --parallel; "
                      "default: 2 on a CPU with 2+ cores, each point pinned to its own core, 1 on a GPU)")
  parser.add_argument("--parts", default="1,2,3", help="1: transfer; 2,3: FP8 (needs part 1's best η)")
  parser.add_argument("--fp8-lr", default="", help="parts 2-3: fix η instead of part 1's best at the FP8 width, "
                      "e.g. mus=0.0625,sp=0.001953125 (to run them beside part 1; the report names both)")
  parser.add_argument("--report-only", action="store_true", help="no training: the report from finished sweeps "
                      "(or from <out>/summary.json)")
  args = parser.parse_args()
  args.fp8_lr = {k: float(v) for k, v in (kv.split("=") for kv in args.fp8_lr.split(",") if kv)}
  args.out = args.out or (os.path.join(HERE, "results") if args.size == "cpu" else f"runs/munit_{args.size}/results")
  args.runs = args.runs or f"runs/munit_{args.size}"
  if args.parallel is None:  # on CPU the per-point start-up (imports, data, compiles) is single-threaded: overlap it
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    args.parallel = 1 if args.size == "gpu" else max(1, min(2, cores))
  os.makedirs(args.out, exist_ok=True)
  s = SIZES[args.size]
  t0, load0 = time.time(), os.getloadavg()
  summary_path = os.path.join(args.out, "summary.json")
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  if args.report_only and not os.path.isdir(args.runs):
    with open(summary_path) as fh:
      saved = json.load(fh)
    m, meta = saved["measurements"], saved["meta"]
  else:
    if args.report_only:
      transfer = read_transfer(args)
      d = os.path.join(args.runs, "fp8")
      fp8 = read_fp8(d, s["fp8_width"]) if os.path.isdir(d) else {}
    else:
      parts = set(args.parts.split(","))
      transfer = run_transfer(args, s) if "1" in parts else read_transfer(args)
      fp8 = run_fp8(args, s, transfer) if parts & {"2", "3"} else {}
    m = measure(transfer, fp8)
    m["span"] = span([r["workdir"] for rows in transfer.values() for r in rows] + [r["workdir"] for r in fp8.values()])
    from jaxtrain import config as cfg_lib  # pylint: disable=import-outside-toplevel
    c = cfg_lib.load(f"{CONFIG}:mus,{args.size}")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} threads" if args.size != "gpu" else "GPU",
            "wall_min": (time.time() - t0) / 60, "parallel": args.parallel,
            "load": machine_state(load0, os.getloadavg()),
            "model": (f"{c.model.num_layers} layers, widths {', '.join(map(str, s['widths']))}, head_dim "
                      f"{s['head_dim']}, vocab {c.model.vocab_size} (bytes), {c.train.steps} steps of "
                      f"{c.train.global_batch}×{c.data.seq_len} tokens "
                      f"({c.train.steps * c.train.global_batch * c.data.seq_len / 1e3:.0f}k tokens), "
                      f"{c.model.compute_dtype}; validation loss on {c.train.eval_batches} batches")}
    sweep.write_summary(summary_path, meta, m, report_only=args.report_only)
  plots(m, s, args.out)
  report(m, s, args, meta)
  print(f"report: {os.path.join(args.out, 'report.md')} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
  main()
