"""Where the norm goes, at small scale: train Pre-LN, Mix-LN, Peri-LN and LNS (and Post-LN on request) alike, over
several seeds, then compare.

  python experiments/norm_placement/run.py                     # the study: 4 placements × 3 seeds, ~1 h, 2-core CPU
  python experiments/norm_placement/run.py --size small --seeds 1 --placements pre,post,mix,peri,lns
  python experiments/norm_placement/run.py --size gpu          # on a GPU
  python experiments/norm_placement/run.py --report-only       # from results/summary.json

Each placement and seed trains the config in `config.py` (the same data order and budget for every placement at a
seed) as a point of `jaxtrain.sweep`'s runner, `python -m jaxtrain` in `<runs-dir>/points/<placement>,seed=<s>`
(rerunning resumes, or skips finished runs). The seeds go one after the other (every placement of seed 0, then of
seed 1, ...), and after each seed the study measures its runs' final checkpoints (the angular distance between
layers' inputs and the validation-loss increase when each layer is skipped, `measure.py`, kept in each run's
`study_measurement.json`), then writes `<out>/summary.json` and `<out>/report.md`: a study stopped part-way
reports the seeds it finished. `--report-only` rebuilds report.md from summary.json alone (the plots need the
runs). The verdicts are computed from the measurements over the seeds (`jaxtrain.report.compare`: a difference
counts only when its paired 95% confidence interval excludes zero), not written in advance.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from jaxtrain import report, sweep  # noqa: E402

PLACEMENTS = ("pre", "post", "mix", "peri", "lns")
STUDIED = ("pre", "mix", "peri", "lns")  # the default: Pre-LN against the three the issue names
NAMES = {"pre": "Pre-LN", "post": "Post-LN", "mix": "Mix-LN", "peri": "Peri-LN", "lns": "LNS"}
# C4 validation perplexity of LLaMA-130M (12 layers), as published: Mix-LN (arXiv 2412.13795 v1, Table 1), Peri-LN
# (arXiv 2502.02732), LNS (arXiv 2502.05795, Table 1; lmsdss/LayerNorm-Scaling images/results.png).
PAPER_PPL_130M = {"pre": 26.73, "post": 26.95, "mix": 26.07, "peri": "26.51 (Sandwich-LN)", "lns": 25.76}
CONFIG = os.path.join(HERE, "config.py")
CACHE = "study_measurement.json"  # in each run's workdir: measure.analyse's result, so a rerun measures once


def _jsonable(x):
  import numpy as np  # pylint: disable=import-outside-toplevel
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def analysed(row, config):
  """measure.analyse of one finished run, cached in its workdir."""
  import measure  # pylint: disable=import-outside-toplevel  (this study's measurements: JAX)
  path = os.path.join(row["workdir"], CACHE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as fh:
      return json.load(fh)
  r = _jsonable(measure.analyse(row, config))
  with open(path, "w", encoding="utf-8") as fh:
    json.dump(r, fh)
  return r


def train_and_measure(args):
  """Trains every placement through the runner (resuming), seed after seed; after each seed, measures its finished
  runs and writes summary.json and report.md (so a study stopped part-way reports the seeds it finished)."""
  import jax  # pylint: disable=import-outside-toplevel
  import measure  # pylint: disable=import-outside-toplevel
  t0, load0 = time.time(), os.getloadavg()[0]
  configs = {p: measure.load_config(CONFIG, p, args.size, args.steps) for p in args.placements}
  points = [sweep.Point(name=p, config=spec, overrides=overrides, values={"placement": p}, steps=c.train.steps)
            for p, (spec, overrides, c) in configs.items()]
  seeds = sweep.study_seeds(args.seeds)
  if args.only_seeds:  # one of several invocations sharing the runs' directory, each training some seeds
    seeds = [int(x) for x in args.only_seeds.split(",")]
  done, results, workdirs = [], [], []
  c0 = next(iter(configs.values()))[2]
  if args.measure_only:  # what finished, seed by seed (the study stopped part-way)
    finished = [r for r in sweep.read_results(args.runs_dir)
                if r["values"]["placement"] in configs and r["status"] in ("ok", "diverged")]
    seeds = sorted({r["values"].get("seed", 0) for r in finished})
  for s in seeds:
    group = points if s is None else sweep.with_seeds(points, [s])
    try:
      rows = ([r for r in finished if r["values"].get("seed", 0) == s] if args.measure_only
              else sweep.run_points(group, args.runs_dir, parallel=args.parallel))
    except sweep.Interrupted as e:
      sys.exit(f"stopped by {e}: rerun the same command to resume, or --measure-only to report what finished")
    workdirs += [row["workdir"] for row in rows]
    results += [analysed(row, configs[row["values"]["placement"]][2]) for row in rows
                if row["status"] in ("ok", "diverged")]
    done.append(0 if s is None else s)
    meta = report.meta(t0, load0, args.parallel, date_day=time.strftime("%Y-%m-%d"),
                       device=jax.devices()[0].device_kind, devices=jax.device_count(), cpus=os.cpu_count(),
                       size=args.size, span=report.span(workdirs), seeds_planned=len(seeds),
                       model={k: c0.model[k] for k in ("num_layers", "d_model", "num_heads", "mlp_dim")},
                       train={"steps": c0.train.steps, "global_batch": c0.train.global_batch,
                              "seq_len": c0.data.seq_len, "lr": c0.optim.lr})
    measured = {"seeds": list(done), "runs": [measure.measurement(r) for r in results]}
    report.write_summary(os.path.join(args.out, "summary.json"), meta, measured)
    try:  # the report of the seeds so far; its failure must not stop the training of the next seed
      write_report(meta, measured, args.out)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("report after seed %s failed: %s", s, e)
  return meta, measured, results


# ---------------------------------------------------------------- report


def by_placement(runs):
  """{placement: its runs' measurements over the seeds, in seed order} (placements in run order)."""
  out = {}
  for r in sorted(runs, key=lambda r: r["seed"]):
    out.setdefault(r["placement"], []).append(r)
  return {p: out[p] for p in PLACEMENTS if p in out}


def values(rs, key, seeds=None):
  """One number per seed (None where a run did not finish or has no diagnostics); with `seeds`, one per seed of
  that list in its order (None where the placement has no run of it), so that two placements pair by seed."""
  got = {r["seed"]: (r.get(key) if r["status"] == "finished" else None) for r in rs}
  return [got.get(s) for s in seeds] if seeds is not None else list(got.values())


def mean_list(rs, key):
  """A per-layer list's mean over the seeds."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  return [float(x) for x in np.mean([r[key] for r in rs], axis=0)]


def claims(by):
  """The papers' claims, each a comparison over seeds that can come out either way: rows (claim, paper, verdict
  label, evidence). Each is `report.compare` of per-seed numbers, paired by seed: the claim holds when the 95%
  confidence interval of the mean difference excludes zero in its direction, is contradicted when it excludes
  zero the other way, and is within seed noise otherwise."""
  out = []
  cell = lambda rs, k, f="{:.4f}": report.cell(values(rs, k), f)
  seeds = sorted({r["seed"] for rs in by.values() for r in rs})

  def lower(claim, paper, a, b, key, fmt="{:+.4f}", show="{:.4f}", yes="agrees", no="no: the opposite"):
    """The claim "a's `key` is lower than b's" (a, b placements, or (name, values) pairs)."""
    (na, va), (nb, vb) = [(NAMES[x], values(by[x], key, seeds)) if isinstance(x, str) else x for x in (a, b)]
    v = report.compare(va, vb, names=(na, nb), fmt=fmt, lower=yes, higher=no)
    out.append((claim, paper, v.label, f"{na} {report.cell(va, show)}, {nb} {report.cell(vb, show)}; {v.text}"))

  have = lambda *ps: all(p in by for p in ps)
  for p, paper in (("mix", "Mix-LN (arXiv 2412.13795) Table 1: 26.07 vs 26.73 PPL, LLaMA-130M"),
                   ("lns", "LNS (arXiv 2502.05795) Table 1: 25.76 vs 26.73 PPL, LLaMA-130M"),
                   ("peri", "Peri-LN (arXiv 2502.02732): lower loss than Pre-LN at 400M-3.2B")):
    if have("pre", p):
      lower(f"{NAMES[p]} reaches a lower validation loss than Pre-LN", paper, p, "pre", "final_loss")
  if have("pre"):
    pre = by["pre"]
    lower("Pre-LN's deep layers change the representation little: d(x^ℓ, x^ℓ+1) smaller in the last third of the "
          "layers than in the first", "Mix-LN Fig. 1, LNS Fig. 2 (Gromov et al.'s angular distance)",
          ("last third", values(pre, "angular_deep_mean", seeds)),
          ("first third", values(pre, "angular_first_mean", seeds)),
          "angular_deep_mean", show="{:.3f}")
    for p in ("mix", "lns", "peri"):
      if p in by:
        lower(f"Deep layers change the representation less under Pre-LN than under {NAMES[p]} (angular distance "
              "to the next layer, mean of the last third)", "Mix-LN Fig. 1; LNS Fig. 2" if p != "peri" else "—",
              "pre", p, "angular_deep_mean", show="{:.3f}")
    for p in ("mix", "lns", "peri"):
      if p in by:
        lower(f"Skipping a deep layer costs less under Pre-LN than under {NAMES[p]} (loss increase, mean over the "
              "last third of the layers)", "Mix-LN Fig. 2; LNS Fig. 1 (performance drop per pruned layer)"
              if p != "peri" else "—", "pre", p, "skip_deep_mean")
  if have("pre", "lns") and all(r["diagnostics"] for r in by["pre"] + by["lns"]):
    lower("LNS keeps the residual variance from growing with depth as Pre-LN's does (variance after the last "
          "block / after the first)", "LNS §3 and Fig. 3", "lns", "pre", "resid_var_growth", fmt="{:+.2f}",
          show="{:.2f}×")
    g = values(by["pre"], "grad_early_ratio", seeds)
    lower(f"Pre-LN's deep layers get smaller gradients early in training (grad norm of layer L / layer 1 at step "
          f"{by['pre'][0].get('grad_early_step')}, against 1)", "Mix-LN §3 (Fig. 3)", ("Pre-LN L/1", g),
          ("1", [1.0 if x is not None else None for x in g]), "grad_early_ratio", fmt="{:+.3f}", show="{:.3f}")
  if have("pre", "mix") and all(r["diagnostics"] for r in by["pre"] + by["mix"]):
    lower("Mix-LN's per-layer gradient norms are more uniform than Pre-LN's (coefficient of variation over the "
          "layers, mean over the diagnostics steps)", "Mix-LN §4 (Fig. 4)", "mix", "pre", "grad_cv", fmt="{:+.3f}",
          show="{:.3f}")
  if have("pre", "post"):
    post = by["post"]
    if any(r["status"] != "finished" for r in post):
      out.append(("Post-LN is unstable at depth at a learning rate Pre-LN tolerates", "Mix-LN §2, Table 1",
                  "agrees", f"Post-LN: {report.statuses(r['status'] for r in post)}; Pre-LN "
                            f"{cell(by['pre'], 'final_loss')}"))
    else:
      lower("Post-LN ends above Pre-LN (it trained stably: no divergence)", "Mix-LN Table 1: 26.95 vs 26.73 PPL",
            "pre", "post", "final_loss")
  return out


def write_report(meta, m, out):
  """report.md from the measurements (summary.json's: a run per placement and seed) and its meta."""
  by, seeds = by_placement(m["runs"]), m["seeds"]
  model, train = meta.get("model"), meta.get("train")
  span = meta.get("span") or {}
  size = (f"{model['num_layers']} layers, d_model {model['d_model']}, {model['num_heads']} heads, MLP "
          f"{model['mlp_dim']}; {train['steps']} steps of {train['global_batch']}×{train['seq_len']} bytes, peak "
          f"learning rate {train['lr']:g}" if model and train else "the config's size")
  lines = ["# Where the norm goes: Pre-LN against Mix-LN, Peri-LN and LNS, over seeds", "",
           f"Generated by `python experiments/norm_placement/run.py --size {meta['size']}` on {meta['date_day']}, "
           f"{meta.get('machine', meta['device'])}. Model: `experiments/norm_placement/config.py` "
           f"(`{meta['size']}` size: {size}), the embedded corpus (Python standard library, bytes), "
           + (f"seeds {', '.join(map(str, seeds))} (cells: mean ± sd over them)" if len(seeds) > 1 else "one seed")
           + "; at a seed every placement sees the same data order."
           + (f" Wall time {span['minutes']:.0f} min for {span['runs']} runs ({span['start']} to {span['end']} UTC; "
              f"{meta['parallel']} at a time), {meta['load']}." if span else ""), "",
           "## Final validation loss", ""]
  lines += report.table(
      ["placement", "status", "steps", "val loss", "val perplexity", "train time", "paper: LLaMA-130M C4 PPL"],
      [[NAMES[p], report.statuses(r["status"] for r in rs), rs[0]["step"],
        report.cell(values(rs, "final_loss"), "{:.4f}"), report.cell(values(rs, "final_ppl"), "{:.3f}"),
        report.cell([r["seconds"] / 60 for r in rs], "{:.1f} min"), PAPER_PPL_130M[p]] for p, rs in by.items()])
  lines += ["", "The papers' numbers are for 130M-parameter models on 2.2B C4 tokens; ours are byte-level, "
            "tiny and short. Only orderings and the per-layer shapes are comparable, not absolute values.", "",
            "## The papers' claims, checked against what we measured", "",
            "Each verdict compares per-seed numbers paired by seed (`jaxtrain.report.compare`): **agrees** when the "
            "95% confidence interval of the mean difference (Student's t over the seeds) lies on the claim's side "
            "of zero, **no: the opposite** when it lies on the other side, **within seed noise** when it contains "
            "zero (one seed: undecided).", "",
            "| claim | paper | ours | evidence |", "|---|---|---|---|"]
  lines += [f"| {c} | {p} | **{v}** | {e} |" for c, p, v, e in claims(by)]
  lines += ["", "## Plots", "",
            "- ![](eval_loss.png) validation loss against steps (first seed)",
            "- ![](grad_norm_early.png) per-layer gradient norm at the first diagnostics step (first seed)",
            "- ![](grad_norm_final.png) per-layer gradient norm at the last diagnostics step (first seed)",
            "- ![](resid_var.png) residual-stream variance against depth (first seed)",
            "- ![](resid_max_abs.png) max |activation| against depth (first seed)",
            "- ![](angular_distance.png) angular distance heatmaps (rows n = 1..L, columns ℓ; first seed)",
            "- ![](angular_next.png) angular distance between each layer's input and output (mean over seeds)",
            "- ![](skip_drop.png) validation-loss increase when one layer is skipped (mean over seeds)", "",
            "## Per-layer numbers" + ("" if len(seeds) == 1 else " (means over the seeds)"), "",
            "Angular distance d(x^ℓ, x^ℓ+1) = arccos(cos)/π between the residual stream entering layer ℓ and leaving "
            "it, at the last token of each eval sequence; skip drop = validation loss with layer ℓ replaced by the "
            "identity minus the full model's (`jaxtrain.analysis`).", ""]
  lines += report.table(["placement", "measure"] + [str(i + 1) for i in range(len(next(iter(by.values()))[0]
                                                                                    ["skip_drop"]))],
                        [row for p, rs in by.items() for row in (
                            [NAMES[p], "skip drop", *(f"{x:.4f}" for x in mean_list(rs, "skip_drop"))],
                            [NAMES[p], "angular distance", *(f"{x:.3f}" for x in mean_list(rs, "angular_next"))])])
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def main():
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.ERROR)
  parser = report.study_parser(__doc__, "norm_placement", ("cpu", "small", "gpu"), seeds=True)
  parser.set_defaults(seeds=3)
  parser.add_argument("--placements", default=",".join(STUDIED), help=f"of {','.join(PLACEMENTS)}")
  parser.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
  parser.add_argument("--only-seeds", default="", help="train only these of the seeds (e.g. 1,2: several "
                      "invocations on one runs' directory share the work; --measure-only then reports them all)")
  parser.add_argument("--measure-only", action="store_true", help="no training: measure the runs that finished in "
                      "the runs' directory (a study stopped part-way) and write summary.json and report.md")
  args = report.study_args(parser, "norm_placement", HERE)
  args.placements = args.placements.split(",")
  meta, measured, results = report.summary_or_measure(args.out, args.report_only, lambda: train_and_measure(args))
  if results:
    from plots import draw  # pylint: disable=import-outside-toplevel  (matplotlib: only with the runs)
    draw(results, args.out)
  write_report(meta, measured, args.out)
  print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
