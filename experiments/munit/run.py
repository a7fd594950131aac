"""μnit Scaling at small scale: does η transfer across width (SP against μS), and does FP8 need no scales?

  python experiments/munit/run.py                                   # CPU size: ~16 min on an idle 2-core CPU (est.)
  python experiments/munit/run.py --size smoke --out /tmp/munit_smoke --runs /tmp/munit_smoke/sweeps   # ~3 min
  python experiments/munit/run.py --size gpu --out runs/munit_gpu/results --runs runs/munit_gpu/sweeps   # one GPU

Narayan, Gupta, Paul, Blalock, "μnit Scaling: Simple and Scalable FP8 LLM Training" (ICML 2025, arXiv 2502.05967).
README.md describes the three parts: 1. η transfer across width, μS against SP, each under its own rule (Fig. 6);
2. FP8 at one width, μS static against SP delayed scaling, each at its best η from part 1 (Fig. 7, in small); 3. SP
forced into static FP8, and μS without its static gradient scale (the control). Every run is one point of
`jaxtrain.sweep.run_points` (resumable, a diverged point recorded): part 1's in `<runs>/transfer/points/`, the FP8
runs' in `<runs>/fp8/points/` (config.py: the runs, STUDY: the grids). The report (`<out>/report.md` from
report_template.md, PNG plots, `summary.json` with every number) and each verdict are computed from the runs, never
tuned to match. `--report-only` rebuilds it from finished runs (or from `summary.json` if the runs are gone).
`--parts 1` and `--parts 2,3 --fp8-lr mus=...,sp=...` run part 1 and the FP8 runs side by side (the FP8 runs then
use the given η; the report names part 1's best beside it); a later `--report-only` joins them. `--seeds N`: every
point per seed (`<name>,seed=S`; --report-only needs the same N), tables in mean ± sd (n), FP8 at the best mean η.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain import report, sweep  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")
cfg = report.load_module(CONFIG, "munit_study_config")
PARAMS, NAMES = ("mus", "sp"), {"mus": "μS", "sp": "SP"}
LABELS = {k: lab for k, _, lab, _ in cfg.FP8_RUNS}
LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.wi", "mlp.down")
pct = lambda x: report.pct(x, ".3g", zero="0")
cell, pooled, mean = report.cell, report.pooled, lambda values: report.mean_spread(values)[0]
POINT = lambda r: (r["d_model"], r["lr"])  # a transfer point over seeds


def transfer_points(args, s) -> list[sweep.Point]:
  """Part 1: per parametrization the grid width × η (LO:HI:x2 of `optim.lr`), named `<rule>,<values>`."""
  width = lambda w: ("model.d_model=" + ",".join(map(str, w)) + ";model.num_heads="
                     + ",".join(str(d // s["head_dim"]) for d in w))
  grid = lambda p, w, lr: sweep.grid_points(f"{CONFIG}:{p},{args.size}", [width(w), "optim.lr={!r}:{!r}:x2".format(*lr)])
  name = lambda p, q: dataclasses.replace(q, name=f"{p},{q.name}", values={"parametrization": p, **q.values})
  named = [[name(p, q) for q in grid(p, s["widths"], s["lr"][p])] for p in PARAMS]
  extra = [name(p, q) for p, by_width in s.get("extra", {}).items() for w, lr in by_width.items()
           for q in grid(p, (w,), lr)]
  return sweep.seeded([q for pair in zip(*named) for q in pair] + extra, args.seeds)  # the rules side by side


def fp8_points(args, s, lrs) -> list[sweep.Point]:
  """Parts 2 and 3 at width fp8_width, each run at its parametrization's η; diagnostics only where there is FP8."""
  w = s["fp8_width"]
  return sweep.seeded([sweep.Point(k, f"{CONFIG}:{p},{args.size}", [
      f"model.d_model={w}", f"model.num_heads={w // s['head_dim']}", f"optim.lr={lrs[p]!r}", *ov,
      f"model.fp8_history={cfg.FP8_HISTORY}",
      f"train.diagnostics_every={s['diagnostics_every'] if ov[0] != 'model.fp8=none' else 0}"],
      values={"run": k, "optim.lr": lrs[p]}, steps=cfg.SIZES[args.size]["steps"])
      for k, p, _, ov in cfg.FP8_RUNS if lrs.get(p) is not None], args.seeds)


def read(args, part):
  return sweep.read_results(os.path.join(args.runs_dir, part))


def transfer_rows(points):
  """Part 1's finished points per rule: width, η, status, losses."""
  keep = ("status", "final_eval_loss", "final_train_loss", "initial_loss", "wall_s", "error")
  return {p: [{"d_model": sweep.value(r, "d_model"), "lr": sweep.value(r, "lr"), **{k: r.get(k) for k in keep}}
              for r in points if r["values"]["parametrization"] == p] for p in PARAMS}


def measure_seed(s, transfer, fp8):
  """One seed's measurements from its finished points of both parts."""
  m = {"transfer": transfer_rows(transfer), "fp8": {}}
  for r in fp8:
    rows = read_metrics(r["workdir"])
    m["fp8"][r["values"]["run"]] = {
        "status": r["status"], "final_eval_loss": r["final_eval_loss"], "lr": sweep.value(r, "lr"),
        "width": s["fp8_width"], "wall_s": r.get("wall_s"), "error": r.get("error"),
        "loss": [(x["step"], x["loss"]) for x in rows if "loss" in x and "eval_loss" not in x],
        "fp8": jplots.fp8_stats(rows, LINEARS), "g": grad_series(rows)}
  return m


def grad_series(rows) -> dict | None:
  """Each linear's output-gradient casts over training: {"steps", linear: {stat: [mean over layers per step]}},
  stat one of jaxtrain.fp8.STATS (rms, underflow, saturation, zero, lost, amax_underflow, amax); None without."""
  diag = [r for r in rows if any(k.startswith("layers/fp8/") for k in r)]
  if not diag:
    return None
  out = {"steps": [r["step"] for r in diag]}
  for name in LINEARS:
    stats = [k.rsplit("/g_", 1)[1] for k in diag[0] if k.startswith(f"layers/fp8/{name}/g_")]
    out[name] = {st: [float(np.mean(r[f"layers/fp8/{name}/g_{st}"])) for r in diag] for st in stats}
  return out


def measure(args, s, t0, load0):
  """(meta, measurements) from the finished points of both parts, per seed."""
  seeds, transfer, fp8 = sweep.study_seeds(args.seeds), read(args, "transfer"), read(args, "fp8")
  per = [measure_seed(s, *([r for r in rows if r["values"].get("seed") == seed] for rows in (transfer, fp8)))
         for seed in seeds]
  c = cfg.get_config(f"mus,{args.size}")
  model = (f"{c.model.num_layers} layers, widths {', '.join(map(str, s['widths']))}, head_dim {s['head_dim']}, vocab "
           f"{c.model.vocab_size} (bytes), {c.train.steps} steps of {c.train.global_batch}×{c.data.seq_len} tokens "
           f"({c.train.steps * c.train.global_batch * c.data.seq_len / 1e3:.0f}k tokens), {c.model.compute_dtype}; "
           f"validation loss on {c.train.eval_batches} batches")
  meta = report.meta(t0, load0, args.parallel, gpu=args.size == "gpu", model=model,
                     span=report.span(r["workdir"] for r in transfer + fp8))
  # One wall time, the report's: the runs' span across every invocation (the study ran in parts), not this
  # invocation's, which summary.json used to give as wall_min beside a report giving the span.
  meta["invocation_min"] = meta["wall_min"]
  if meta["span"]:
    meta["wall_min"] = meta["span"]["minutes"]
  return meta, report.join_seeds(seeds, per)


def transfer_table(rows, widths):
  """Per width: best η (grid), edge flag, loss, and a parabola-in-log2(η) estimate of the optimum."""
  out = []
  for w in widths:
    pts = sorted((r["lr"], r) for r in rows if r["d_model"] == w)
    o = report.grid_optimum([(lr, r["final_eval_loss"], r["status"] == "ok") for lr, r in pts])
    out.append({"d_model": w, "best_lr": None} if o is None else {
        "d_model": w, "best_lr": o["x"], "best_loss": o["y"], "edge": o["edge"], "fit_lr": o["fit"], "n_ok": o["n_ok"],
        "n": o["n"], "bad": [(lr, r["status"]) for lr, r in pts if r["status"] != "ok"]})
  return out


# The applied hidden η* ∝ d^e each rule predicts: μS's 1/√fan_in (Table 2), SP's 1/d (§3.2).
RULE_EXPONENTS = {"μS": -0.5, "SP": -1.0}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interior_widths(mean_tab) -> list[int]:
  """The widths that enter the exponent fit: those whose curve of mean loss over the seeds has its minimum inside
  the η grid (at an edge the optimum may lie outside it, and the estimate would be the edge)."""
  return [r["d_model"] for r in mean_tab if r.get("best_lr") and not r["edge"]]


def exponent_fit(per_seed: list[dict]) -> dict | None:
  """The exponent e of η* ∝ d^e with a 95% confidence interval over seeds.

  per_seed: each seed's {width: applied η*} (the same widths in every seed). Each seed gives the least-squares
  slope of log η* against log d; the interval is mean ± t(0.975, n−1)·sd/√n over the seeds (Student's t: with
  3 seeds, t = 4.30). None with fewer than 2 widths; one seed gives no interval (lo = hi = None).
  """
  per_seed = [ps for ps in per_seed if len(ps) >= 2]
  if not per_seed:
    return None
  slopes = [float(np.polyfit(np.log2(list(ps)), np.log2(list(ps.values())), 1)[0]) for ps in per_seed]
  m, sd, n = report.mean_spread(slopes)
  half = T975.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else None
  return {"slopes": slopes, "mean": m, "sd": sd, "n": n, "lo": None if half is None else m - half,
          "hi": None if half is None else m + half, "widths": sorted(per_seed[0])}


def exponent_verdict(fit, rules=None) -> report.Verdict:
  """Which rule's exponent the fit's confidence interval holds: one alone (its label: "<rule>'s rule"), both
  ("cannot tell"), neither ("neither"); "not measured" without an interval (one seed, < 2 widths)."""
  rules = RULE_EXPONENTS if rules is None else rules
  if not fit or fit["lo"] is None:
    return report.Verdict("not measured", None, "no interval (one seed or fewer than 2 widths)")
  inside = [name for name, e in rules.items() if fit["lo"] <= e <= fit["hi"]]
  text = f"d^{fit['mean']:.2f} [{fit['lo']:.2f}, {fit['hi']:.2f}] (95%, n={fit['n']})"
  if len(inside) == 1:
    return report.Verdict(f"{inside[0]}'s rule", True, text)
  return report.Verdict("cannot tell" if inside else "neither", False, text)


def transfer_fits(tabs, mean_tabs, d_base) -> dict:
  """Per parametrization: the exponent fit over the seeds on the widths with an interior optimum (`interior_widths`)
  whose grid finished in every seed, each seed's η* its parabola estimate at each of those widths, and the widths
  dropped."""
  out = {}
  for p in PARAMS:
    rows_at = lambda w: [r for t in tabs for r in t[p] if r["d_model"] == w]
    done = lambda w: (len(rows_at(w)) == len(tabs)  # every seed ran that width's whole grid
                      and all(r.get("n_ok") == max(x.get("n", 0) for x in rows_at(w)) for r in rows_at(w)))
    keep = [w for w in interior_widths(mean_tabs[p]) if done(w)]  # every seed's grid finished at that width
    per_seed = [{r["d_model"]: cfg.applied(p, r["fit_lr"], r["d_model"], d_base) for r in t[p]
                 if r["d_model"] in keep and r.get("best_lr")} for t in tabs]
    fit = exponent_fit([ps for ps in per_seed if len(ps) == len(keep)])
    dropped = [r["d_model"] for r in mean_tabs[p] if r["d_model"] not in keep]
    out[p] = {"fit": fit, "verdict": exponent_verdict(fit), "dropped": dropped}
  return out


def transfer_verdicts(tab, d_base):
  """Per rule: how far the best `optim.lr` moves over the widths, and the slope of log applied η* against log d."""
  out = {}
  for p in PARAMS:
    good = [r for r in tab[p] if r.get("best_lr")]
    if len(good) >= 2:
      steps = [math.log2(r["best_lr"]) for r in good]
      fit = [cfg.applied(p, r["fit_lr"], r["d_model"], d_base) for r in good]
      out[p] = {"spread_steps": max(steps) - min(steps), "edges": [r["d_model"] for r in good if r["edge"]],
                "slope_applied": float(np.polyfit(np.log2([r["d_model"] for r in good]), np.log2(fit), 1)[0]),
                "shift_steps": math.log2(good[-1]["best_lr"] / good[0]["best_lr"])}
  return out


def plots(per, s, out_dir):  # the transfer points' mean loss over seeds, the FP8 runs' curves of the first seed
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  widths, d_base, rules, best, fp8 = s["widths"], s["d_base"], {}, {}, per[0]["fp8"]
  transfer = {p: report.mean_rows([r for m in per for r in m["transfer"].get(p, [])], POINT) for p in PARAMS}
  for p, mk in (("mus", "o"), ("sp", "s")):
    rules[NAMES[p]] = {"points": [dict(r, applied=cfg.applied(p, r["lr"], r["d_model"], d_base))
                                  for r in transfer[p]],
                       "xlabel": "η (optim.lr: the rate at d_base, transferred by "
                                 + ("μS's rule)" if p == "mus" else "SP's rule η·d_base/d)")}
    if t := [r for r in transfer_table(transfer[p], widths) if r.get("best_lr")]:
      best[NAMES[p]] = {"widths": [r["d_model"] for r in t], "marker": mk, "exponent": 0.5 if p == "mus" else 1,
                        **{k: [cfg.applied(p, r[f"{k}_lr"], r["d_model"], d_base) for r in t] for k in ("best", "fit")}}
  out = lambda name: os.path.join(out_dir, name)
  jplots.save(jplots.lr_transfer(rules, widths, plt.subplots(2, 2, figsize=(11, 8))[1])[0][0].figure,
              out("transfer.png"))
  jplots.save(jplots.best_vs_width(best, plt.subplots(figsize=(6, 4.2))[1]).figure, out("best_lr.png"))
  for fname, keys, refs in (("fp8.png", cfg.PART2, ()), ("sp_static.png", cfg.PART3, ("sp_none", "mus_none"))):
    axes = jplots.fp8_health({LABELS[k]: {
        "loss": tuple(zip(*r["loss"])), "health": r["fp8"], "ref": k in refs,
        "caption": f"{LABELS[k]} ({r['status']}; val {report.num(r['final_eval_loss'], '{:.3f}')})"}
        for k in keys + refs if (r := fp8.get(k)) and r["loss"]})
    jplots.save(axes[0].figure, out(fname))


def over_seeds(verdicts, p):
  """A rule's transfer verdicts over seeds: (its value of a key in each seed, the widths at a grid edge in any)."""
  return (lambda k: [v[p][k] for v in verdicts if p in v]), list(dict.fromkeys(
      e for v in verdicts if p in v for e in v[p]["edges"]))


def entries_lost(g, name) -> list[float]:
  """A linear's share of output-gradient entries that are 0 after the E5M2 cast, per diagnostics step: exact zeros
  (no gradient reached it) plus the non-zeros that underflow, so an all-zero gradient counts as 100% lost."""
  z, u = g[name].get("zero"), g[name]["underflow"]
  return list(u) if z is None else [zi + (1 - zi) * ui for zi, ui in zip(z, u)]


def grad_range(gs) -> dict:
  """Whether a run's output gradients stayed in E5M2's range, over its seeds (`gs`: each seed's `grad_series`):
  per linear the worst over steps and seeds of saturation, lost squared-norm share, and the excess of underflow
  over the floor an amax scale would leave (`amax_underflow`: no per-tensor scale without clipping goes below);
  "mass": no saturation and < 1e-6 of the squared norm lost anywhere; "count": also every excess < 5 points."""
  per = {}
  for name in LINEARS:
    rs = [g[name] for g in gs if g and name in g]
    if not rs or "lost" not in rs[0]:
      continue
    per[name] = {"saturation": max(max(r["saturation"]) for r in rs), "lost": max(max(r["lost"]) for r in rs),
                 "excess": max(max(u - f for u, f in zip(r["underflow"], r["amax_underflow"])) for r in rs),
                 "amax": max(max(r["amax"]) for r in rs)}
  mass = bool(per) and all(v["saturation"] == 0 and v["lost"] < 1e-6 for v in per.values())
  return {"per": per, "mass": mass, "count": mass and all(v["excess"] < 0.05 for v in per.values())}


def grad_table(f8) -> list[str]:
  """Per run with gradient diagnostics and per linear: E5M2 casts of the output gradient over training, over seeds."""
  out = []
  for k in ("mus_static", "mus_static_pl", "mus_static_s1", "sp_static_s1"):
    gs = [r["g"] for r in f8.get(k, []) if r.get("g") and "lost" in r["g"].get(LINEARS[0], {})]
    for name in LINEARS if gs else ():
      col = lambda st, i: [g[name][st][i] for g in gs]
      fl = lambda st, fmt=pct: f"{cell(col(st, 0), fmt)} → {cell(col(st, -1), fmt)}"
      lost = [entries_lost(g, name) for g in gs]
      out.append([LABELS[k], name, fl("rms", "{:.3g}"), fl("underflow"), cell(col("amax_underflow", -1), pct),
                  f"{cell([x[0] for x in lost], pct)} → {cell([x[-1] for x in lost], pct)}",
                  cell([max(g[name]["lost"]) for g in gs], "{:.1e}"),
                  cell([fp8_max / max(max(g[name]["amax"]), 1e-30) for g in gs], "{:.3g}×"),
                  cell([max(g[name]["saturation"]) for g in gs], pct)])
  return out


fp8_max = 57344.0  # E5M2's largest finite value


def claims(per, tabs, verdicts, s, fits=None):
  """(claim, measured, verdict) rows; over seeds from the per-seed values (cells mean ± sd, verdicts on the mean)."""
  out, widths, C = [], s["widths"], cfg.CLAIMS
  (mus, mus_edges), (sp, sp_edges) = (over_seeds(verdicts, p) for p in PARAMS)
  for p, key, want in (("mus", "mus_transfer", "μS's rule"), ("sp", "sp_transfer", "SP's rule")):
    f = (fits or {}).get(p)
    if not f or not f["fit"]:
      continue
    got = (mus if p == "mus" else sp)
    v = f["verdict"]
    out.append((C[key], f"applied hidden η* ∝ {v.text} on widths {f['fit']['widths']}"
                + (f" (dropped: {f['dropped']}: optimum at a grid edge of the mean curve, or a grid unfinished)"
                   if f["dropped"] else "")
                + f"; best `optim.lr` spans {cell(got('spread_steps'), '{:.0f}')} grid step(s) per seed",
                ("yes" if v.label == want else "no") + f": {v.label}" if v.agrees is not None else v.label))
  best = lambda p, w: [r["best_loss"] for t in tabs for r in t[p] if r["d_model"] == w and r.get("best_lr")]
  if pairs := [w for w in widths if best("mus", w) and best("sp", w)]:
    wins = report.tally(mean(best("mus", w)) <= mean(best("sp", w)) for w in pairs)
    out.append((C["quality"], "best val loss per width: " + "; ".join(
        f"d={w}: μS {cell(best('mus', w), '{:.3f}')} / SP {cell(best('sp', w), '{:.3f}')}" for w in pairs),
        f"{wins} ({wins.text} widths)"))
  loss = lambda m, k: (m["fp8"].get(k) or {}).get("final_eval_loss")
  val = lambda k: pooled(per, lambda m: loss(m, k))
  diffs = lambda a, b: pooled(per, lambda m: None if None in (x := (loss(m, a), loss(m, b))) else x[0] - x[1])
  pair = lambda a, b: (ds := diffs(a, b)) and (  # "<FP8> vs float32 <without> (<difference>)", paired by seed
      f"{cell(val(a))} vs float32 {cell(val(b))} ({cell(ds, '{:+.4f}')})", mean(ds))
  lower = " (FP8 ends lower: " + ("one seed" if len(per) == 1 else "mean over seeds")
  if d := pair("mus_static", "mus_none"):
    label = "yes" if d[1] < 0.02 else "close" if d[1] < 0.05 else "no"
    out.append((C["mus_fp8"], f"val loss static FP8 {d[0]}", label + (lower + ", not a gain to claim)" if -d[1] > 0.02
                                                                      else "")))
  if d := pair("sp_delayed", "sp_none"):
    out.append((C["sp_fp8"], f"val loss delayed FP8 {d[0]}; at this size nothing can show the 13B failure",
                ("yes (small scale only)" if d[1] < 0.05 else "no") + (lower + ")" if -d[1] > 0.02 else "")))
  for k, ref in (("sp_static_s1", "sp_none"), ("mus_static_s1", "mus_none")):
    if ms := [m for m in per if (m["fp8"].get(k) or {}).get("fp8")]:
      rs = [m["fp8"][k] for m in ms]
      fails = report.tally(r["status"] != "ok" or None not in (loss(m, k), loss(m, ref)) and loss(m, k) - loss(m, ref)
                           > 0.05 for m, r in zip(ms, rs))
      fl = lambda t: report.first_last([r["fp8"][f"{t}_underflow"] for r in rs], pct)
      gs = [r["g"] for r in rs if r.get("g") and "zero" in r["g"].get(LINEARS[0], {})]
      lost = [[float(np.mean([entries_lost(g, n)[i] for n in LINEARS])) for i in range(len(g["steps"]))] for g in gs]
      dead = [sum(g[n]["zero"][-1] > 0.99 for n in LINEARS) for g in gs]
      gtext = (f"g entries 0 after the cast (all-zero gradients counted as lost), mean over linears "
               f"{report.first_last(lost, pct)}; linears with an all-zero gradient at the end {cell(dead, '{:.1f}')} "
               f"of {len(LINEARS)}; " if gs else "") + f"g underflow of the non-zeros {fl('g')}"
      out.append((C[k], f"{report.statuses(r['status'] for r in rs)}; val loss {cell(pooled(rs, 'final_eval_loss'))} "
                  f"(without FP8 {cell(val(ref))}); {gtext}, w underflow {fl('w')}",
                  {"yes": "yes: it fails" if k.startswith("sp") else "fails too", "no": "no: it trains" if k.startswith(
                      "sp") else "trains"}.get(fails.label, f"fails in {fails.text} seeds")))
  if fs := [f for m in per if (f := (m["fp8"].get("mus_static") or {}).get("fp8"))]:
    worst = {t: [max(f[f"{t}_underflow"]) for f in fs] for t in ("x", "w", "g")}
    sat = [max(max(f[f"{t}_saturation_max"]) for t in ("x", "w", "g")) for f in fs]
    fine = all(max(w[i] for w in worst.values()) < 0.05 and sat[i] == 0 for i in range(len(fs)))
    out.append((C["mus_static"], f"static casts, no scale state; saturation max {cell(sat, pct)}; underflow over "
                f"training, mean over linears, at worst: x {cell(worst['x'], pct)}, w {cell(worst['w'], pct)}, g "
                f"{cell(worst['g'], pct)} (worst single linear g {cell([max(f['g_underflow_max']) for f in fs], pct)}"
                "); the gradients need a static scale S = N·d the paper does not give (it says only that gradients "
                "'can be directly cast', §3.3)", "yes" if fine else "partly"))
    xd = [v for f in fs if (v := f["x_underflow_last"].get("mlp.down")) is not None]
    out.append((C["gelu"], f"μS static, mlp.down x underflow at the last diagnostics step: {cell(xd, pct)} (mean over "
                "layers)", "yes" if xd and mean(xd) > 0.1 else "not at this size"))
  for k in ("mus_static", "mus_static_pl"):
    gs = [g for m in per if (g := (m["fp8"].get(k) or {}).get("g")) and "lost" in g.get(LINEARS[0], {})]
    if not gs:
      continue
    rng = grad_range(gs)
    worst = max(rng["per"], key=lambda n: rng["per"][n]["excess"])
    d = pair(k, "mus_none")
    text = (f"{LABELS[k]}: over {len(gs)} seed(s), every linear and diagnostics step: saturation max "
            f"{pct(max(v['saturation'] for v in rng['per'].values()))}, squared norm lost to underflow at most "
            f"{max(v['lost'] for v in rng['per'].values()):.1e}, amax at most 1/"
            f"{fp8_max / max(v['amax'] for v in rng['per'].values()):.3g} of E5M2's max; underflow above the "
            f"amax-scale floor at most {pct(rng['per'][worst]['excess'])} ({worst})"
            + (f"; val loss {d[0]}" if d else ""))
    label = ("yes" if rng["count"] else "in norm, not in count" if rng["mass"] else "no")
    out.append((C["mus_static_pl"] if k == "mus_static_pl" else "(control) the same criteria for one S = N·d",
                text, label))
  return out


def write_report(per, s, args, meta):
  widths, d_base, w, n = s["widths"], s["d_base"], s["fp8_width"], len(per)
  tabs = [{p: transfer_table(m["transfer"].get(p, []), widths) for p in PARAMS} for m in per]
  verdicts = [transfer_verdicts(tab, d_base) for tab in tabs]
  mean_tabs = {p: transfer_table(report.mean_rows([r for m in per for r in m["transfer"].get(p, [])], POINT), widths)
               for p in PARAMS}
  fits = transfer_fits(tabs, mean_tabs, d_base)
  rows = []
  for p in PARAMS:
    for i, width in enumerate(widths):
      rs = [tab[p][i] for tab in tabs]
      good, bad = [r for r in rs if r["best_lr"]], "; ".join(f"{lr:g} {st}" for r in rs for lr, st in r.get("bad", ()))
      lrs, edges = [r["best_lr"] for r in good], sum(r["edge"] for r in good)
      rows.append(f"| {NAMES[p]} | {width} | no finished point | | | | | |" if not good else
                  f"| {NAMES[p]} | {width} | " + (f"2^{math.log2(lrs[0]):.0f} = {lrs[0]:g}" if n == 1 else
                                                  f"2^({cell([math.log2(x) for x in lrs], '{:.1f}')})")
                  + f" | {('**yes**' + (f' ({edges} of {len(good)})' if n > 1 else '')) if edges else 'no'} | "
                  f"{cell(pooled(good, 'best_loss'))} | {cell(pooled(good, 'fit_lr'), '{:.3g}')} | "
                  f"{cell([cfg.applied(p, x, width, d_base) for x in lrs], '{:.3g}')} | "
                  f"{sum(r['n_ok'] for r in good)} / {sum(r['n'] for r in good)}" + (f" ({bad})" if bad else "") + " |")
  bullets = ""
  for (got, edges), p in ((over_seeds(verdicts, p), p) for p in PARAMS if any(p in v for v in verdicts)):
    bullets += (
        f"- {NAMES[p]}: the best `optim.lr` spans {cell(got('spread_steps'), '{:.0f}')} grid step(s) over the widths "
        f"(from d = {widths[0]} to d = {widths[-1]}: {cell(got('shift_steps'), '{:+.0f}')} steps)."
        + (f" **Optimum at a grid edge in some seed for width(s) {edges}**: the true optimum may lie "
                                    "outside the grid there." if edges else " Every optimum is interior.")
        + (f" Exponent over the seeds, on the widths whose mean curve has an interior optimum: {v.text}: "
           f"**{v.label}**." if (v := fits[p]["verdict"]).agrees is not None else "") + "\n")
  f8 = report.over_seeds(per, "fp8")
  health = {k: [r["fp8"] for r in rs if r["fp8"]] for k, rs in f8.items()}  # each run's FP8 diagnostics over seeds
  fp8_rows = [[LABELS[k], report.statuses(r["status"] for r in f8[k]), cell(pooled(f8[k], "final_eval_loss")),
               *report.fp8_cells(health[k], pct), cell(pooled(f8[k], "wall_s"), "{:.0f} s")]
              for k in cfg.PART2 + cfg.PART3 if k in f8]
  per_linear = "".join(f"\n\n{LABELS[k]}, underflow per linear at the last diagnostics step (step {fs[0]['steps'][-1]},"
                       f" mean over layers): {report.fp8_per_linear(fs, pct)}." for k in (
                           "mus_static", "sp_delayed", "sp_static_s1", "mus_static_s1", "sp_static_auto")
                       if (fs := health.get(k)))
  lr_of = {p: next((rs[0]["lr"] for k, rs in f8.items() if k.startswith(p)), None) for p in PARAMS}
  best1 = {p: [r["best_lr"] for tab in tabs for r in tab[p] if r["d_model"] == w and r.get("best_lr")] for p in PARAMS}
  sp, hm = meta.get("span") or {}, lambda t: t[11:16] if len(t) > 5 else t  # older summaries kept only HH:MM
  report.render(
      os.path.join(HERE, "report_template.md"), os.path.join(args.out, "report.md"), size=args.size, meta=meta,
      size_flag=("" if args.size == "cpu" else " --size " + args.size) + (f" --seeds {n}" if n > 1 else ""),
      parallel=meta.get("parallel", 1), one_seed=n == 1, n=n, last_seed=n - 1,
      span=sp, start=hm(sp.get("start", "")), end=hm(sp.get("end", "")),
      widths=", ".join(map(str, widths)), ratio=widths[-1] // widths[0], s=s, d_base=d_base,
      transfer_table="\n".join(rows), bullets=bullets, fp8=bool(f8), w=w,
      **{f"lr_{p}": report.num(v, "{:g}") for p, v in lr_of.items()},
      **{f"best_{p}": cell(v, "{:g}") for p, v in best1.items()},
      fp8_table="\n".join(report.rows(fp8_rows)),
      per_linear=per_linear, grad_table="\n".join(report.rows(grad_table(f8))),
      claims="\n".join(report.claims(claims(per, tabs, verdicts, s, fits))))


def main():
  parser = report.study_parser(__doc__, "munit", cfg.STUDY, runs_flag="--runs", seeds=True)
  parser.add_argument("--parts", default="1,2,3", help="1: transfer; 2,3: FP8 (needs part 1's best η)")
  parser.add_argument("--fp8-lr", default="", help="parts 2-3: fix η instead of part 1's best at the FP8 width, "
                      "e.g. mus=0.0625,sp=0.001953125 (to run them beside part 1; the report names both)")
  args = report.study_args(parser, "munit", HERE)
  s, parts, t0, load0 = cfg.STUDY[args.size], set(args.parts.split(",")), time.time(), os.getloadavg()[0]
  if not args.report_only and "1" in parts:
    sweep.run_points(transfer_points(args, s), os.path.join(args.runs_dir, "transfer"), parallel=args.parallel)
  if not args.report_only and parts & {"2", "3"}:
    seeds = sweep.study_seeds(args.seeds)  # the η best on the mean over the seeds
    done = transfer_rows([r for r in read(args, "transfer") if r["values"].get("seed") in seeds])
    lrs = {p: transfer_table(report.mean_rows(done[p], POINT), [s["fp8_width"]])[0]["best_lr"] for p in PARAMS}
    lrs |= {k: float(v) for k, v in (kv.split("=") for kv in args.fp8_lr.split(",") if kv)}
    if points := fp8_points(args, s, lrs):
      sweep.run_points(points, os.path.join(args.runs_dir, "fp8"), parallel=args.parallel)
    else:
      print(f"fp8: no finished transfer point at width {s['fp8_width']}; skipped", flush=True)
  meta, m = report.load_or_measure(args, lambda: measure(args, s, t0, load0))
  per = report.per_seed(m)
  plots(per, s, args.out)
  write_report(per, s, args, meta)
  print(f"report: {os.path.join(args.out, 'report.md')} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
  main()
