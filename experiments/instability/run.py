"""Small-scale proxies for instabilities (Wortsman et al., ICLR 2024): LR sweeps with and without qk-norm (and z-loss),
AdamW against Muon, over seeds.

  python experiments/instability/run.py                      # the study: 3 settings × 3 LRs × 3 seeds, d_model 128
  python experiments/instability/run.py --report-only        # rewrite the report from results/summary.json

Seed after seed, for each width in `--widths` it runs the model in `config.py:<width>` for each setting of
`--settings` (measure.SETTINGS: AdamW without and with qk-norm and z-loss, and Muon) over the learning rates
`--lrs`: the points through `jaxtrain.sweep`'s runner, in `<workdir>/d<width>` (rerunning resumes: finished points
are skipped). A run whose loss or gradient becomes non-finite stops with status "diverged". Then it measures each
run (`measure.py`: final loss, attention logits, log Z), keeps the measurements in `<out>/summary.json` (the grid
in its meta), computes each setting's LR sensitivity per seed (the paper's definition, `jaxtrain.proxies`; a
diverged run counts as the loss at initialization), and writes `<out>/report.md` with plots: final loss against
learning rate per setting, the max attention logit per layer and log Z over training for the runs that diverge or
come close. `--report-only` rebuilds report.md from summary.json alone (the plots need the sweeps),
`--measure-only` measures what finished. The verdicts on the paper's claims are computed from the measurements
over the seeds (`checks`), not written in advance.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import measure  # noqa: E402  (this study's measurements)
from jaxtrain import config as cfg_lib, proxies, report, sweep  # noqa: E402
from measure import CLOSE, GAP, SATURATED, SETTINGS  # noqa: E402

CONFIG = os.path.join(HERE, "config.py")
_spec = importlib.util.spec_from_file_location("instability_config", CONFIG)
inst_config = importlib.util.module_from_spec(_spec)  # this study's config.py (min_lr_ratio)
_spec.loader.exec_module(inst_config)
# What fits three seeds on a 2-core CPU: one width (the one where qk-norm mattered in the one-seed study of both),
# every other of the paper's learning rates from 3e-3 (a decade apart), AdamW with and without qk-norm, and Muon.
WIDTHS = (128,)
LRS = (3e-3, 3e-2, 3e-1)
DEFAULT_SETTINGS = ("baseline", "qk-norm", "muon")


def non_embedding_params(m):
  """Attention and MLP matrices of all layers (the paper counts parameters without the embeddings)."""
  d, f = m.d_model, cfg_lib.mlp_dim(m)
  return m.num_layers * (4 * d * d + 2 * d * f)


def grid(lrs, setting=None):
  """z-loss × qk-norm × learning rate, the last fastest; the cosine ends at 1e-5 for every peak, as in the paper.
  With `setting` (a name of measure.SETTINGS) only that setting's z-loss, qk-norm and optimizer, over the rates.

  In this order a sweep stopped early has compared qk-norm with the baseline first (the paper's Fig. 1).
  """
  lr_axis = ("optim.lr=" + ",".join(f"{x:g}" for x in lrs) + ";optim.min_lr_ratio="
             + ",".join(f"{inst_config.min_lr_ratio(x):.12g}" for x in lrs))
  if setting is None:
    return [f"train.z_loss=0,{proxies.Z_LOSS}", "model.qk_norm=false,true", lr_axis]
  _, qk, z = next(x for x in SETTINGS if x[0] == setting)
  return [f"optim.name={measure.OPTIMIZER.get(setting, 'adamw')}", f"train.z_loss={z:g}",
          f"model.qk_norm={str(qk).lower()}", lr_axis]


def run_sweeps(args):
  """Each seed's points (every setting at every width) through the runner (resuming), seed after seed, so a study
  stopped part-way has whole seeds; the minutes it took."""
  t0 = time.time()
  seeds = [int(x) for x in args.only_seeds.split(",")] if args.only_seeds else sweep.study_seeds(args.seeds)
  for seed in seeds:
    for w in args.widths:
      t = time.time()
      points = [p for n in args.settings for p in sweep.grid_points(f"{CONFIG}:{w}", grid(args.lrs, n),
                                                                    args.overrides)]
      points = points if seed is None else sweep.with_seeds(points, [seed])
      sweep.run_points(points, os.path.join(args.workdir, f"d{w}"), parallel=args.parallel)
      print(f"width {w}, seed {seed}: sweep done in {time.time() - t:.0f} s", flush=True)
  return (time.time() - t0) / 60


# ---------------------------------------------------------------- the paper's claims


def checks(datas, widths):
  """(claim, paper, ours, evidence) computed from the measurements: {seed: derived data}. A comparison of two
  settings is `report.compare` of their per-seed numbers, paired by seed (agrees when the 95% interval of the mean
  difference excludes zero on the claim's side; the opposite, or within seed noise); a claim about the unstable runs
  counts them over every seed (`report.tally`)."""
  out, ds = [], list(datas.values())
  tagged = [(f" seed {seed}" if len(datas) > 1 else "", d) for seed, d in datas.items()]
  per_seed = lambda key, field: [d[key][field] if key in d else None for d in ds]

  def compare(claim, paper, a, b, field, names, yes="agrees", no="no: the opposite", fmt="{:+.3f}", show="{:.3f}",
              log=False):
    """The claim "setting a's `field` is lower than b's" (a, b: (width, setting) keys); `log`: compared as log10
    (numbers that span decades across seeds, as attention-logit peaks)."""
    va, vb = per_seed(a, field), per_seed(b, field)
    if all(x is None for x in va) or all(x is None for x in vb):
      return
    tr = (lambda vs: [None if x is None or not x > 0 else math.log10(x) for x in vs]) if log else (lambda vs: vs)
    v = report.compare(tr(va), tr(vb), names=tuple(f"log10 {n}" for n in names) if log else names, fmt=fmt,
                       lower=yes, higher=no)
    out.append((claim, paper, f"**{v.label}**", f"{names[0]} {report.cell(va, show)}, {names[1]} "
                                               f"{report.cell(vb, show)}; {v.text}"))

  few = "" if len(ds) >= 3 else f" ({len(ds)} seed{'s' if len(ds) > 1 else ''}: fewer than the three a verdict needs)"

  keys = {k for d in ds for k in d}
  for w in widths:
    for without, with_ in (("baseline", "qk-norm"), ("z-loss", "qk-norm + z-loss")):
      if {(w, without), (w, with_)} <= keys:
        compare(f"qk-norm lowers LR sensitivity (d={w}, {without} → {with_})",
                "yes, considerably, and more so as models grow (Fig. 1)", (w, with_), (w, without), "sens",
                (with_, without))
  for a, b in zip(widths, widths[1:]):
    if {(a, "baseline"), (b, "baseline")} <= keys:
      compare(f"without qk-norm, LR sensitivity grows with width (d={a} → {b})", "yes (Fig. 1)", (a, "baseline"),
              (b, "baseline"), "sens", (f"d={a}", f"d={b}"))
  adamw = lambda n: n not in measure.OPTIMIZER
  rows = []
  for tag, d in tagged:
    for (w, n), s in sorted(d.items()):
      for lr, r in sorted(s["runs"].items()):
        a = r["attn"]
        if r["unstable"] and a and not n.startswith("qk-norm") and adamw(n):
          rows.append((w, n, f"{lr:g}{tag}", r, a))
  if rows:
    early = [x for x in rows if x[4]["saturated_at"] is not None
             and (x[3]["status"] != "diverged" or x[4]["saturated_at"] < x[3]["last_step"])]
    ev = "; ".join(f"d={w} {n} lr {lr} ({r['status']}"
                   + (f" at {r['last_step']}" if r["status"] == "diverged"
                      else f", {100 * r['given_back']:.0f}% back to ℓ0")
                   + f"): max logit {a['first']:.3g} at step {a['first_step']} → {a['last']:.3g} at {a['last_step']}"
                   + (f", >{SATURATED:g} from step {a['saturated_at']}" if a["saturated_at"] is not None else "")
                   for w, n, lr, r, a in rows)
    control = [f"d={w} {n} lr {s['best_lr']:g}{tag}: {s['runs'][s['best_lr']]['attn']['peak']:.3g}"
               for tag, d in tagged for (w, n), s in sorted(d.items()) if not n.startswith("qk-norm") and adamw(n)
               and s["best_lr"] is not None and s["runs"][s["best_lr"]]["attn"]]
    ev += ". For comparison, the peak max logit of the best-LR runs: " + "; ".join(control)
    v = report.tally([x in early for x in rows], yes="agrees", no="does not agree")
    out.append(("without qk-norm, attention logits grow large in the runs that diverge (or come close), "
                "before they do",
                "yes: logits grow to where attention is one-hot (§3.1.1)",
                f"**{v.label}**{few} ({len(early)} of {len(rows)} unstable AdamW runs without qk-norm, over "
                f"{len(ds)} seed(s), had a logit > {SATURATED:g} before they stopped or ended)", ev))
  timing = []
  for tag, d in tagged:
    for (w, n), s in sorted(d.items()):
      partner = measure.PARTNER.get(n)
      if partner is None or (w, partner) not in d:
        continue
      for lr, r in sorted(s["runs"].items()):
        q = d[(w, partner)]["runs"].get(lr)
        a, apart = r["attn"], r["apart"]
        if r["unstable"] and q is not None and a:
          first = a["saturated_at"] is not None and (apart is None or a["saturated_at"] < apart)
          timing.append((first, f"d={w} {n} lr {lr:g}{tag}: max logit > {SATURATED:g} from step "
                                f"{a['saturated_at']}, loss behind {partner}'s by > {GAP:g} (10-step means) from "
                                f"step {apart}"))
  if timing:
    v = report.tally([f for f, _ in timing], yes="agrees", no="does not agree")
    out.append(("the attention-logit growth shows before the loss suffers", "yes (the logits grow first)",
                f"**{v.label}**{few} ({v.text} runs over {len(ds)} seed(s): logits large before the loss fell behind the "
                "same run with qk-norm)", "; ".join(t for _, t in timing)))
  for w in widths:
    for without, with_ in (("baseline", "qk-norm"), ("z-loss", "qk-norm + z-loss")):
      if {(w, without), (w, with_)} <= keys:
        compare(f"qk-norm keeps attention logits bounded (d={w}: the largest max attention logit of any run, "
                f"{with_} against {without}, compared in log10)", "yes", (w, with_), (w, without), "attn_peak",
                (with_, without), fmt="{:+.2f}", show="{:.3g}", log=True)
  for w in widths:
    for without, with_ in (("baseline", "z-loss"), ("qk-norm", "qk-norm + z-loss")):
      if {(w, without), (w, with_)} <= keys:
        compare(f"z-loss keeps log Z near 0 (d={w}, {without} → {with_}: mean over the learning rates of |log Z| "
                "over the last 10% of steps)", "yes (the drift it prevents comes late in training, in long runs)",
                (w, with_), (w, without), "log_z_abs_tail", (with_, without), no="no: further from 0")
  for w in widths:
    if {(w, "baseline"), (w, "muon")} <= keys:
      compare(f"Muon against AdamW, LR sensitivity (d={w}, no qk-norm): lower means a wider basin",
              "— (a measurement: Muon, Jordan et al. 2024 and Liu et al. 2025, arXiv 2502.16982, with the "
              "Moonlight update scale, so the same learning rates are comparable)", (w, "muon"), (w, "baseline"),
              "sens", ("Muon", "AdamW"), yes="Muon less sensitive", no="Muon more sensitive")
      compare(f"Muon against AdamW, best final loss over the learning rates (d={w})", "—", (w, "muon"),
              (w, "baseline"), "best", ("Muon", "AdamW"), yes="Muon lower", no="Muon higher")
  return out


def write_report(datas, meta, args):
  """report.md from the derived measurements of each seed ({seed: `measure.derive`'s}) and the summary's meta."""
  names = [n for n, _, _ in SETTINGS]
  data, ds = measure.mean_view(datas), list(datas.values())
  over = lambda key: [d[key] for d in ds if key in d]  # a setting's derived data, per seed
  lrs = sorted({lr for d in ds for s in d.values() for lr in s["runs"]})
  wall = meta.get("sweeps_min")
  seeds = "One seed." if len(ds) == 1 else f"Seeds {', '.join(map(str, datas))}: cells are mean ± sd over them."
  lines = ["# Small-scale proxies for instabilities: LR sensitivity with and without qk-norm and z-loss, AdamW "
           "and Muon", "",
           f"Generated by `python experiments/instability/run.py` on {meta['date_day']}"
           + (f"; the sweeps took {wall:.1f} min" if wall else "") + f", {meta['cpus']} CPU threads"
           + (f" ({meta['machine']}; the {meta['span']['runs']} runs from {meta['span']['start']} to "
              f"{meta['span']['end']} UTC, {meta['span']['minutes']:.0f} min of wall time, "
              f"{meta['span']['run_minutes']:.0f} run-minutes; {meta['load']})" if meta.get("span") else "") + ". "
           "Model and training: `experiments/instability/config.py` (the paper's default setup shrunk to a CPU; "
           f"what differs is listed there and in the README). {seeds} The paper is Wortsman et al., "
           "\"Small-scale proxies for large-scale Transformer training instabilities\", ICLR 2024 (arXiv 2309.14322).",
           "", "LR sensitivity = mean over the learning rates of min(ℓ(η), ℓ0) − ℓ*, where ℓ(η) is the final "
           "validation loss, ℓ0 the loss at initialization (the first training step's cross-entropy) and ℓ* the "
           "best final loss; a diverged run counts as ℓ0. `jaxtrain.proxies.lr_sensitivity`.", "",
           "## LR sensitivity", "", "| setting | " + " | ".join(f"d_model={w}" for w in args.widths) + " |",
           "|---|" + "---|" * len(args.widths)]
  for n in (n for n in names if any((w, n) in data for w in args.widths)):  # the settings measured
    lines.append(f"| {n} | " + " | ".join(measure.fmt_sens(over((w, n)), high=True) if (w, n) in data else "not run"
                                         for w in args.widths) + " |")
  lines += ["", "In brackets: the part of it from the learning rates above the best one, where the instabilities "
            "act; the rest comes from the low end of the grid, where runs are too slow to converge in the budget.",
            "", "| width | setting | ℓ0 | best LR | ℓ* | diverged (LR) | came close (LR) |",
            "|---|---|---|---|---|---|---|"]

  for (w, n) in sorted(data, key=lambda k: (k[0], names.index(k[1]))):
    ss = over((w, n))
    lines.append(f"| {w} | {n} | {report.cell([s['l0'] for s in ss], '{:.3f}')} | "
                 f"{'/'.join(dict.fromkeys(str(s['best_lr'] or '—') for s in ss))} | "
                 f"{report.cell([s['best'] for s in ss], '{:.3f}')} | "
                 f"{measure.lrs_where(ss, lrs, lambda r: r['status'] == 'diverged')} | "
                 f"{measure.lrs_where(ss, lrs, lambda r: r['unstable'] and r['status'] != 'diverged')} |")
  missing = [f"d={w} {n} lr {lr:g}{'' if len(ds) == 1 else f' seed {seed}'} ({s['runs'][lr]['status']})"
             for seed, d in datas.items() for (w, n), s in sorted(d.items()) for lr in s["missing"]]
  if missing:
    lines += ["", "**Incomplete grid**: these points did not finish and are left out of the sensitivities: "
              + ", ".join(missing) + "."]

  def lr_table(cell):
    """A markdown table, a row per (width, setting), a column per learning rate: cell(its runs over the seeds) or
    — if not run."""
    rows = ["| width | setting | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|---|" + "---|" * len(lrs)]
    for (w, n) in sorted(data, key=lambda k: (k[0], names.index(k[1]))):
      runs = [[s["runs"][lr] for s in over((w, n)) if lr in s["runs"]] for lr in lrs]
      rows.append(f"| {w} | {n} | " + " | ".join(cell(rs) if rs else "—" for rs in runs) + " |")
    return rows

  lines += ["", f"\"Came close\": above the best learning rate, and its final loss gave back at least {CLOSE:.0%} "
            "of the way from ℓ* to ℓ0.", "",
            "## Final validation loss", "", "Diverged runs: the step at which the loss or gradient norm became "
            "non-finite (the run stopped there).", "",
            *lr_table(measure.final_cell)]
  lines += ["", "## Attention logits and log Z", "",
            "Max attention logit = max over layers and causal pairs of |q·k|/√d_h (`layers/attn_max_logit`, every "
            "`train.diagnostics_every` steps); log Z = mean logsumexp of the output logits (`log_z`, every step); "
            "both the mean over the last 10% of the run's steps.", "",
            *lr_table(measure.attn_cell)]
  lines += ["", "(each cell: max attention logit / log Z)", "",
            "## The paper's claims, checked against what we measured", "",
            "| claim | paper | ours | evidence |", "|---|---|---|---|"]
  lines += [f"| {c} | {p} | {o} | {e} |" for c, p, o, e in checks(datas, args.widths)]
  c = cfg_lib.load(f"{CONFIG}:{args.widths[-1]}", args.overrides)
  t = c.train
  lines += ["", "The paper's models (about 1e7 to 1e9 parameters) train for 1e5 steps of 256×512 tokens of C4 with a "
            f"32k vocabulary; ours are byte-level, the largest with {non_embedding_params(c.model) / 1e6:.2f}M "
            f"non-embedding parameters, and train for {t.steps} steps of {t.global_batch}×{c.data.seq_len} tokens. "
            "Only the directions of the effects are comparable.", "",
            "## Plots", "",
            "- ![](loss_vs_lr.png) final loss against learning rate, one panel per setting, one curve per width",
            "- ![](loss_vs_lr_by_width.png) the same, one panel per width, one curve per setting",
            "- ![](attn_logit.png) max attention logit during training, every run",
            "- ![](log_z.png) log Z during training, every run",
            "- ![](train_loss.png) training cross-entropy, every run",
            "- ![](unstable_runs.png) the runs that diverged or came close: max attention logit per layer, and log Z"]
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=os.path.join(HERE, "results"), help="where report.md and the plots go")
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "instability"), help="the sweeps' directories")
  parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="d_model values (multiples of 32)")
  parser.add_argument("--lrs", default=",".join(f"{x:g}" for x in LRS), help="peak learning rates (the paper's: "
                      + ",".join(f"{x:g}" for x in proxies.PAPER_LRS) + ")")
  parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                      help=f"of {', '.join(n for n, _, _ in SETTINGS)} (names of measure.SETTINGS)")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (mean ± sd)")
  parser.add_argument("--parallel", type=int, default=2, help="points run at once (each pinned to its own core)")
  parser.add_argument("--report-only", action="store_true", help="rewrite report.md from summary.json")
  parser.add_argument("--only-seeds", default="", help="train only these of the seeds (e.g. 1,2: several "
                      "invocations on one workdir share the work; --measure-only then reports them all)")
  parser.add_argument("--measure-only", action="store_true", help="no training: measure the points that finished "
                      "in --workdir (a study stopped part-way) and write summary.json and report.md from them")
  parser.add_argument("--config", action="append", default=[], dest="overrides", metavar="FIELD=VALUE",
                      help="a fixed override for every run (e.g. train.steps=50 for a smoke test); repeatable")
  args = parser.parse_args()
  args.widths = [int(w) for w in args.widths.split(",")]
  args.lrs = [float(x) for x in args.lrs.split(",")]
  args.settings = args.settings.split(",")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "summary.json")
  if args.report_only:
    if not os.path.exists(path):  # never overwrite a committed report with an empty one
      raise SystemExit(f"no {path}: run without --report-only first")
    meta, m = report.read_summary(path)
    args.widths, args.lrs = meta.get("widths", args.widths), meta.get("lrs", args.lrs)  # the grid it measured
    datas = measure.from_measurements(m, args.lrs)
  else:
    # Points with the same model and learning rate-free programs (init, eval) share compiled code across processes.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.workdir, "xla_cache"))
    t0, load0 = time.time(), os.getloadavg()[0]
    try:
      minutes = None if args.measure_only else run_sweeps(args)
    except sweep.Interrupted as e:  # Ctrl-C / SIGTERM: the points saved their checkpoints
      sys.exit(f"stopped by {e}: rerun the same command to resume, or --measure-only to report what finished")
    datas = measure.collect(measure.rows_by_width(args.workdir, args.widths), args.lrs)
    meta = report.meta(t0, load0, args.parallel, date_day=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(),
                       sweeps_min=minutes, widths=args.widths, lrs=args.lrs, settings=args.settings,
                       span=report.span([r["workdir"] for rows in measure.rows_by_width(args.workdir,
                                                                                       args.widths).values()
                                         for r in rows if float(r["values"]["optim.lr"]) in args.lrs]))
    m = measure.measurements(datas)
    try:
      from plots import draw  # pylint: disable=import-outside-toplevel  (matplotlib: only with the sweeps)
      draw(datas[min(datas)], args, measure.fmt_sens)  # the first seed's curves
    except Exception as e:  # pylint: disable=broad-except  (the figures must not cost the measurements)
      print(f"plots failed: {e!r}", flush=True)
  report.write_summary(path, meta, m, report_only=args.report_only)
  write_report(datas, meta, args)
  print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
