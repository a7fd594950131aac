"""Growing a trained small model into the target, against the target from scratch, at equal total FLOPs.

  python experiments/growth/run.py                        # the study (CPU size: 8 runs of ~14 min, 2 at a time)
  python experiments/growth/run.py --size tiny --out /tmp/growth_tiny --runs-dir /tmp/growth_tiny/runs   # smoke
  python experiments/growth/run.py --size gpu             # one GPU: a 16-layer d 512 target (not run yet)
  python experiments/growth/run.py --report-only          # rewrite the report from the finished runs
  python experiments/growth/run.py --runs +copy           # the core runs and G_stack with opt=copy, lr=continue
  python experiments/growth/run.py --seeds 3              # every run with seeds 0, 1, 2: tables give mean ± sd (n)

"Stacking Your Transformers" (Du et al., NeurIPS 2024, arXiv 2405.15319) and "Composable Function-preserving
Expansions for Transformer Architectures" (Gesmundo & Maile 2023, arXiv 2308.06103). Every run (README.md lists
them; config.py: `<size>,<run>`) is one point of `jaxtrain.sweep.run_points`, a `python -m jaxtrain` in
`<runs-dir>/points/<run>`, and ends at the same total FLOPs (the metrics' `total_flops`, base training included).
Speed-up at equal loss, the paper's definition: speedup(L*) = C_scratch(L*) / C_grow(L*) - 1, C(L*) the FLOPs at
which a run's loss first reaches L* (linear interpolation between evaluations; a grown run's curve from its last
growth event on). The report gives it on the evaluation loss (fixed validation batches) and on the smoothed
training loss, at the scratch run's final loss and at its losses after 50% and 75% of the budget. --seeds N runs
each run per seed (`<run>,seed=S`; --report-only needs the same N), each grown run against the scratch run of its
seed. Verdicts are computed from the measurements, never tuned to match. A finished run is reused; a killed one
resumes.
"""

from __future__ import annotations

import os
import sys
import time

CHILD_PLATFORMS = os.environ.get("JAX_PLATFORMS")  # the runs get the platform the caller chose (or JAX's default)
os.environ["JAX_PLATFORMS"] = "cpu"  # this process only does FLOP arithmetic: it must not hold the accelerator
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import growth, report, sweep  # noqa: E402
from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")
cfg = report.load_module(CONFIG, "growth_study_config")
SMOOTH = 5  # the training-loss curve: a centred mean over this many logged rows (each already a mean of log_every)
pct, cell, pooled = report.pct, report.cell, report.pooled


# After seed 0, the paper's comparison first (scratch, G↑random, G_stack, G↑zero) seed by seed, then the unmasked
# fresh layers, then the width path: a study cut short loses the runs that carry the fewest of the paper's claims.
LATER = {"random4_x25_nomask": 1, "width_x25": 2}


def points(args, runs) -> list[sweep.Point]:
  """Every run once per seed, in the order a study cut short loses least (LATER)."""
  ps = sweep.seeded([sweep.Point(r, f"{CONFIG}:{args.size},{r}", values={"run": r},
                                 steps=cfg.get_config(f"{args.size},{r}").train.steps) for r in runs], args.seeds)
  seed = lambda p: p.values.get("seed") or 0
  first = ("scratch", "random4_x25", "stack4_x25", "zero4_x25")
  return sorted(ps, key=lambda p: (seed(p) > 0 and LATER.get(p.values["run"], 0), seed(p),
                                   first.index(p.values["run"]) if p.values["run"] in first else len(first)))


def workdir(args, run, seed=None):
  return os.path.join(args.runs_dir, "points", sweep.seed_name(run, seed))


def measure_run(args, run, seed=None) -> dict | None:
  d = workdir(args, run, seed)
  try:
    rows = read_metrics(d)
  except FileNotFoundError:
    return None
  c = cfg.get_config(f"{args.size},{run}")
  phases = growth.plan(c)
  F = lambda s: growth.total_flops(phases, s)
  train = report.last_per_step([r for r in rows if "loss" in r and "eval_loss" not in r])
  evals = report.last_per_step([r for r in rows if "eval_loss" in r])
  events = report.last_per_step([r for r in rows if "growth/event" in r])
  grown_at = phases[-1].start  # the target's curve starts at the end of the last event's step
  ev_curve = [(F(r["step"]), r["eval_loss"], r["step"]) for r in evals]
  if events:  # the grown model's own evaluation, at the event's FLOPs
    ev_curve.append((F(events[-1]["step"]), events[-1]["growth/eval_loss_after"], events[-1]["step"]))
  ev_curve.sort()
  res = sweep.read_result(d) or {}
  return {
      "run": run, "label": cfg.LABELS.get(run, run), "status": res.get("status", "unfinished"),
      "wall_s": res.get("wall_s"), "started": res.get("started"), "finished": res.get("finished"),
      "steps": c.train.steps, "done_steps": max((r["step"] for r in rows), default=0),
      "base": {k: c.model[k] for k in ("num_layers", "d_model", "num_heads", "mlp_dim")},
      "base_steps": grown_at if phases[1:] else 0, "base_share": cfg.RUNS[run][1],
      "base_flops": F(phases[1].start) if phases[1:] else 0.0, "total_flops": F(c.train.steps),
      "tokens": c.train.steps * c.train.global_batch * c.data.seq_len,
      "events": [{"step": e["step"], "op": phases[e["growth/event"]].event["op"],
                  "ramp_steps": phases[e["growth/event"]].event["ramp_steps"],
                  "params": e["growth/parameters"], "before": e["growth/eval_loss_before"],
                  "after": e["growth/eval_loss_after"]} for e in events],
      "train": [(F(r["step"]), r["loss"], r["step"]) for r in train],
      "eval": ev_curve, "grown_at": grown_at,
      "final_eval_loss": evals[-1]["eval_loss"] if evals and evals[-1]["step"] == c.train.steps else None,
  }


def smoothed_train(m, grown=False):
  """The training curve smoothed within each stretch (base, grown model): the jump at growth is kept."""
  g = m["grown_at"]
  return ([] if grown else report.smooth([p for p in m["train"] if p[2] <= g], SMOOTH)) + report.smooth(
      [p for p in m["train"] if p[2] > g], SMOOTH)


def target_curve(m, which):
  """The run's (FLOPs, loss) from its last growth event on: the training curve smoothed within that stretch."""
  return [p for p in m["eval"] if p[2] >= m["grown_at"]] if which == "eval" else smoothed_train(m, grown=True)


def jump(e):
  return e["after"] - e["before"]


def speedups(ms, budget):
  """Per curve kind (eval, train) the levels L* (scratch at 50%, 75%, 100% of the budget) and each run's
  C_run(L*) and speed-up C_scratch(L*) / C_run(L*) - 1 (None where the run does not reach L* within the budget)."""
  out, sc = {}, ms.get("scratch")
  if not sc or sc["status"] != "ok":
    return out
  for which in ("eval", "train"):
    ref = target_curve(sc, which)
    levels = [(frac, report.at(ref, frac * budget)) for frac in (0.5, 0.75, 1.0)]
    if which == "eval":
      levels[-1] = (1.0, ref[-1][1])  # the final evaluation itself
    curves = {run: cur for run, m in ms.items()  # none: stopped before its grown model was evaluated
              if run != "scratch" and m["status"] == "ok" and (cur := target_curve(m, which))}
    out[which] = [{"frac": frac, "level": L, "scratch_flops": report.first_reach(ref, L),
                   "runs": {run: report.speedup(ref, cur, L) for run, cur in curves.items()}} for frac, L in levels]
  return out


def measure(args, runs, t0, load0):
  """(meta, measurements) of the runs asked for and of any other run found in the runs' directory, per seed."""
  from jaxtrain import model as model_lib  # pylint: disable=import-outside-toplevel
  budget, c, per, dirs = cfg.budget(args.size), cfg.get_config(f"{args.size},scratch"), [], []
  for seed in (seeds := sweep.study_seeds(args.seeds)):
    ms = {r: m for r in cfg.RUNS
          if (r in runs or os.path.isdir(workdir(args, r, seed))) and (m := measure_run(args, r, seed))}
    per.append({"budget": budget, "runs": ms, "speedups": speedups(ms, budget)})
    dirs += [workdir(args, r, seed) for r in ms]
  meta = report.meta(t0, load0, args.parallel, gpu=args.size == "gpu", span=report.span(dirs),
                     target_params=f"{model_lib.count_params(model_lib.abstract(c.model)[1]) / 1e6:.2f}M")
  return meta, report.join_seeds(seeds, per)


def plots(m, out_dir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  budget, ms, sc = m["budget"], m["runs"], m["runs"].get("scratch")
  curve = lambda r, which: smoothed_train(r) if which == "train" else r["eval"]
  fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
  for row, zoom in ((0, False), (1, True)):
    for col, which in enumerate(("train", "eval")):
      ax = axes[row][col]
      for run, r in ms.items():
        if cur := curve(r, which):
          jplots.curves({r["label"]: (np.array([p[0] for p in cur]) / budget, [p[1] for p in cur])}, ax=ax,
                        colors=cfg.COLORS.get(run, "gray"), lw=2.2 if run == "scratch" else 1.3,
                        marker=None if which == "train" else ".", legend=False,
                        xlabel="total FLOPs / budget (base training included)",
                        ylabel=f"{'training loss (smoothed)' if which == 'train' else 'validation loss'} (nats/byte)")
          if r["events"]:  # the growth event: where the target's curve starts
            ax.axvline(r["base_flops"] / budget, color=cfg.COLORS.get(run, "gray"), lw=0.6, ls=":")
      ax.grid(alpha=0.3)
      if zoom and sc and sc["eval"]:
        lo = min(min(p[1] for p in curve(r, which)) for r in ms.values() if r["eval"] and r["train"])
        ax.set_xlim(0.35, 1.02)
        ax.set_ylim(lo - 0.03, report.at(sc["eval"], 0.4 * budget) + 0.15)
        ax.set_title(f"{which}: the last 65% of the budget")
      else:
        ax.set_title(f"{which} loss against total FLOPs")
  axes[0][1].legend(fontsize=8)
  jplots.save(fig, os.path.join(out_dir, "loss_vs_flops.png"))


MIN_SEEDS = 3  # a verdict rests on at least this many seeds; with fewer it is not given


def _enough(values):
  """None when `values` (one per seed, None for missing) has MIN_SEEDS or more, else the Verdict saying it has not."""
  n = report.mean_spread(values)[2]
  return None if n >= MIN_SEEDS else report.Verdict(f"not judged ({n} seed{'s' * (n != 1)}, needs {MIN_SEEDS})",
                                                   None, f"n={n}")


def below(values, threshold: float = 0.0, *, yes="yes", no="no", unresolved="within seed noise") -> report.Verdict:
  """Whether the mean over seeds is below `threshold`: yes when the 95% t-interval of the mean (each value a per-seed
  paired difference, so this is `report.compare`'s rule) lies below it, no when it lies above, else unresolved;
  so it can come out every way."""
  if (short := _enough(values)) is not None:
    return short
  d = report.difference(values, [threshold] * len(values))
  text = f"mean {d.mean + threshold:+.4f} (95% CI {d.lo + threshold:+.4f} to {d.hi + threshold:+.4f}, {d.n} seeds)"
  if d.hi < 0:
    return report.Verdict(yes, True, text)
  if d.lo > 0:
    return report.Verdict(no, False, text)
  return report.Verdict(unresolved, None, text)


def verdicts(per):
  """(claim, what we measured, verdict) rows from each seed's measurements: every verdict on >= MIN_SEEDS seeds.

  The evidence per seed: a grown run against the scratch run of its seed at the budget, its validation-loss gap
  (grown − scratch, always defined) and its speed-up at the scratch run's final validation loss (None where not
  reached). "Beats scratch" means the 95% interval of the gap's mean over seeds lies below 0; "worse" means it lies
  above 0; else the two are within seed noise (`below`).
  """
  final = [x["speedups"]["eval"][-1]["runs"] for x in per if x["speedups"].get("eval")]
  if not final:
    return []
  gaps = lambda r: [f[r]["gap_at_end"] for f in final if r in f]
  sps = lambda r: [f[r]["speedup"] for f in final if r in f]  # None: not reached within the budget
  desc = lambda r: (f"speed-up {report.speedup_cell([f[r] for f in final if r in f])}, val-loss gap at the budget "
                    f"{cell(gaps(r), '{:+.4f}')}")
  out = []
  stacks = [r for r in ("stack4_x10", "stack4_x25", "stack4_x50") if gaps(r)]
  if stacks:  # one d/D: its verdict; several: how many beat scratch beyond the spread
    vs = [below(gaps(r)) for r in stacks]
    short = next((v for v in vs if v.label.startswith("not judged")), None)
    out.append((cfg.CLAIMS["stack"], "; ".join(f"d/D={100 * cfg.RUNS[r][1]:.0f}%: {desc(r)}" for r in stacks),
                vs[0] if len(vs) == 1 else short or report.tally(v.agrees is True for v in vs)))
  if gaps("zero4_x25") and gaps("stack4_x25"):  # both: G↑zero beats scratch, and its speed-up is G_stack's ± 10 points
    diffs = [None if f["zero4_x25"]["speedup"] is None or f["stack4_x25"]["speedup"] is None else
             f["zero4_x25"]["speedup"] - f["stack4_x25"]["speedup"] for f in final
             if "zero4_x25" in f and "stack4_x25" in f]
    close, beats = report.verdict(diffs, 0.0, cfg.SPEEDUP_BAND), below(gaps("zero4_x25"))
    v = _enough(diffs) or report.tally([close.agrees is True, beats.agrees is True])
    out.append((cfg.CLAIMS["zero"], f"G↑zero {desc('zero4_x25')}; G_stack {desc('stack4_x25')}; G↑zero − G_stack "
                f"speed-up {cell(diffs, lambda x: pct(x, '+.1f'))} (≈ means within {100 * cfg.SPEEDUP_BAND:.0f} points)", v))
  if gaps("random4_x25"):
    nomask = (f"; the same fresh layers without the mask: {desc('random4_x25_nomask')}, "
              f"{below(gaps('random4_x25_nomask'), yes='better than scratch', no='worse than scratch')}"
              if gaps("random4_x25_nomask") else "")
    T = {e.get("ramp_steps") for mm in pooled(per, "runs", "random4_x25") for e in mm["events"]}
    out.append((cfg.CLAIMS["random"], f"G↑random with MSG's mask (T = {'/'.join(map(str, sorted(T)))} steps): "
                f"{desc('random4_x25')}{nomask}",
                below([-g for g in gaps("random4_x25")])))  # the paper: worse, so the gap is above 0
  if gaps("width_x25"):  # "≈ or worse": refuted only when the width path beats scratch beyond the spread
    v = below(gaps("width_x25"))
    if not v.label.startswith("not judged"):
      v = report.Verdict({True: "no", False: "yes", None: "yes (within seed noise)"}[v.agrees], v.agrees is not True,
                         v.text)
    out.append((cfg.CLAIMS["width"], f"Gesmundo FP width path {desc('width_x25')}", v))
  if len(stacks) == 3:  # the IsoFLOP curve: loss at the budget against d, per seed: is 25% the lowest?
    end = {r: [f[r]["loss_at_end"] for f in final if r in f] for r in stacks}
    best = min(stacks, key=lambda r: report.mean_spread(end[r])[0])
    interior = [min(stacks, key=lambda r, f=f: f[r]["loss_at_end"]) == "stack4_x25" for f in final
                if all(r in f for r in stacks)]
    out.append((cfg.CLAIMS["isoflop"], "val loss at the budget for d/D = 10/25/50%: "
                + " / ".join(cell(end[r]) for r in stacks) + f"; lowest mean at {100 * cfg.RUNS[best][1]:.0f}%",
                _enough(interior or None) or report.tally(interior)))
  if gaps("stack2_x25") and gaps("stack4_x25"):
    d = [f["stack4_x25"]["gap_at_end"] - f["stack2_x25"]["gap_at_end"] for f in final
         if "stack4_x25" in f and "stack2_x25" in f]
    out.append((cfg.CLAIMS["g"], f"g=4 {desc('stack4_x25')}; g=2 {desc('stack2_x25')} (d/D=25%); g=4 − g=2 loss "
                f"{cell(d, '{:+.4f}')}", below(d)))
  out.append(fp_verdict(per))
  return [row for row in out if row is not None]


FP_OPS = ("g_zero", "expand_d_model", "add_heads", "expand_mlp")


def fp_verdict(per):
  """The function-preservation row: every G_stack event's jump above 1e-3, every FP event's (and every masked
  event's, m = 0 at growth) below 1e-4 in absolute value, over all seeds."""
  events = [(mm, e) for x in per for mm in x["runs"].values() for e in mm["events"] if mm["status"] == "ok"]
  fp = [jump(e) for mm, e in events if e["op"] in FP_OPS or cfg.RUNS[mm["run"]][2].get("ramp")]
  st_j = [jump(e) for _, e in events if e["op"] == "stack"]
  if not fp and not st_j:
    return None
  seeds = sum(any(mm["events"] and mm["status"] == "ok" for mm in x["runs"].values()) for x in per)
  st_cells = [f"{rs[0]['label']} {cell([jump(x['events'][i]) for x in rs], '{:+.3f}')}"
              for rs in report.over_seeds(per, "runs").values() for i, e in enumerate(rs[0]["events"])
              if e["op"] == "stack"]
  measured = (f"jump at the event: {', '.join(st_cells) or 'G_stack not run'}; FP operators and MSG's mask at m = 0: "
              f"largest jump in "
              f"absolute value {report.num(max(map(abs, fp), default=None), '{:.1e}')} ({len(fp)} events)")
  if seeds < MIN_SEEDS:
    return cfg.CLAIMS["fp"], measured, _enough([0.0] * seeds)
  checks = [j > 1e-3 for j in st_j] + [abs(j) < 1e-4 for j in fp]
  return cfg.CLAIMS["fp"], measured, report.tally(checks)


def write_report(per, args, meta):
  budget, s, n, runs_of = per[0]["budget"], cfg.SIZES[args.size], len(per), report.over_seeds(per, "runs")
  runs = []
  for rs in runs_of.values():
    r = rs[0]
    runs.append([r["label"], "{num_layers}L d{d_model} h{num_heads} mlp{mlp_dim}".format(**r["base"]),
                 f"{r['base_steps']} ({100 * r['base_share']:.0f}%)", f"{r['base_flops'] / budget:.3f}", r["steps"],
                 f"{r['tokens'] / 1e6:.2f}M", f"{r['total_flops'] / budget:.5f}", cell(pooled(rs, "final_eval_loss")),
                 cell([tr[-1][1] for x in rs if (tr := smoothed_train(x))]),
                 report.statuses(x["status"] + ("" if x["done_steps"] >= x["steps"] else f" at step {x['done_steps']}")
                                 for x in rs), cell(pooled(rs, "wall_s", lambda w: w / 60), "{:.1f} min")])
  tables = ""
  for which, title in (("eval", "validation loss (primary)"), ("train", "smoothed training loss (check)")):
    if sps := pooled(per, "speedups", which):
      lines = []
      for run in (r for r in runs_of if r != "scratch"):
        cells = [("—" if not (ps := pooled(sps, i, "runs", run)) else report.speedup_cell(ps, budget))
                 for i in range(len(sps[0]))]
        ps = pooled(sps, -1, "runs", run)
        lines.append([cfg.LABELS.get(run, run), *cells, "—" if not ps else
                      f"{cell(pooled(ps, 'loss_at_end'))} ({cell(pooled(ps, 'gap_at_end'), '{:+.4f}')})"])
      head = [f"L* = {cell(pooled(sps, i, 'level'))} (scratch at {100 * row['frac']:.0f}%)"
              for i, row in enumerate(sps[0])]
      sc_end = cell([target_curve(x["runs"]["scratch"], which)[-1][1] for x in per if x["speedups"].get(which)])
      tables += f"On the {title}:\n\n" + "\n".join(report.table(
          ["run", *head, f"loss at the budget (scratch {sc_end})"], lines)) + "\n\n"
  events = [[rs[0]["label"], e["step"], f"`{e['op']}`", f"{e['params'] / 1e6:.3f}M",
             *(cell([f(x["events"][i]) for x in rs], fmt) for f, fmt in (
                 (lambda e: e["before"], "{:.6f}"), (lambda e: e["after"], "{:.6f}"), (jump, "{:+.2e}")))]
            for rs in runs_of.values() for i, e in enumerate(rs[0]["events"])]
  report.render(
      os.path.join(HERE, "report_template.md"), os.path.join(args.out, "report.md"), size=args.size, meta=meta, s=s,
      budget=budget, smooth=SMOOTH, size_flag=("" if args.size == "cpu" else " --size " + args.size)
      + (f" --seeds {n}" if n > 1 else ""), head_dim=s["d_model"] // s["heads"],
      span=meta.get("span"), runs_table="\n".join(report.rows(runs)), runs_dir=args.runs_dir,
      missing=", ".join(f"{cfg.LABELS[r]} (`{r}`)" for r in cfg.CORE if r not in runs_of),
      speedup_tables=tables, claims="\n".join(report.claims(verdicts(per))),
      events_table="\n".join(report.rows(events)),
      one_seed=n == 1, n=n, last_seed=n - 1, ramp_steps=cfg.ramp_steps(args.size), min_seeds=MIN_SEEDS,
      band=f"{100 * cfg.SPEEDUP_BAND:.0f}",
      target_params=meta.get("target_params", "?"), tokens=s["scratch_steps"] * s["batch"] * s["seq_len"] / 1e6)


def main():
  parser = report.study_parser(__doc__, "growth", cfg.SIZES, seeds=True)
  parser.add_argument("--runs", default="core", help="comma-separated run names (config.RUNS), 'core' (default: "
                      "config.CORE, the committed study's), 'all' (core, the d/D sweep and g=2) or '+copy' (core and "
                      "stack4_x25_copy)")
  args = report.study_args(parser, "growth", HERE)
  runs = ([*cfg.CORE, *{"core": (), "+copy": ("stack4_x25_copy",), "all": cfg.SWEEP}[args.runs]]
          if args.runs in ("core", "+copy", "all") else args.runs.split(","))
  if bad := [r for r in runs if r not in cfg.RUNS]:
    parser.error(f"unknown run(s) {bad}; choose from {list(cfg.RUNS)}")
  t0, load0 = time.time(), os.getloadavg()[0]
  if not args.report_only:
    sweep.run_points(points(args, runs), args.runs_dir, parallel=args.parallel, env={"JAX_PLATFORMS": CHILD_PLATFORMS})
  meta, m = report.load_or_measure(args, lambda: measure(args, runs, t0, load0))
  per = report.per_seed(m)
  try:  # several seeds: each run's mean curves
    plots(per[0] if len(per) == 1 else {"budget": per[0]["budget"], "runs": report.mean_curves(per, "runs")}, args.out)
  except ImportError:
    print("matplotlib missing: no plot (pip install matplotlib)", flush=True)
  write_report(per, args, meta)
  print(f"report: {os.path.join(args.out, 'report.md')} ({(time.time() - t0) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
  main()
