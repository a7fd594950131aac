"""Where the norm goes, at small scale: train Pre-LN, Post-LN, Mix-LN, Peri-LN and LNS alike, then compare.

  python experiments/norm_placement/run.py --out experiments/norm_placement/results
  python experiments/norm_placement/run.py --size gpu --out runs/norm_placement_gpu   # on a GPU
  python experiments/norm_placement/run.py --report-only                              # from results/summary.json

Each placement trains the config in `config.py` (same data, seed and budget) as a point of `jaxtrain.sweep`'s
runner, `python -m jaxtrain` in `<out>/runs/points/<placement>` (rerunning resumes or skips finished runs). Then,
on each final checkpoint, it measures the angular distance between layers' inputs and the validation-loss
increase when each layer is skipped (`measure.py`), keeps the numbers in `<out>/summary.json` and writes
`<out>/report.md` with PNG plots. `--report-only` rebuilds report.md from summary.json alone (the plots need the
runs). The checks against the papers' claims are computed from the measurements, not written in advance.
"""

from __future__ import annotations

import argparse
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
NAMES = {"pre": "Pre-LN", "post": "Post-LN", "mix": "Mix-LN", "peri": "Peri-LN", "lns": "LNS"}
# C4 validation perplexity of LLaMA-130M (12 layers), as published: Mix-LN (arXiv 2412.13795 v1, Table 1), Peri-LN
# (arXiv 2502.02732), LNS (arXiv 2502.05795, Table 1; lmsdss/LayerNorm-Scaling images/results.png).
PAPER_PPL_130M = {"pre": 26.73, "post": 26.95, "mix": 26.07, "peri": "26.51 (Sandwich-LN)", "lns": 25.76}
CONFIG = os.path.join(HERE, "config.py")


def train_and_measure(args):
  """Trains every placement through the runner (resuming), then measures each finished run's final checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel
  import measure  # pylint: disable=import-outside-toplevel  (this study's measurements: JAX)
  t0, load0 = time.time(), os.getloadavg()[0]
  configs = {p: measure.load_config(CONFIG, p, args.size, args.steps) for p in args.placements}
  points = [sweep.Point(name=p, config=spec, overrides=overrides, values={"placement": p}, steps=c.train.steps)
            for p, (spec, overrides, c) in configs.items()]
  try:
    rows = sweep.run_points(sweep.with_seeds(points, args.seeds), os.path.join(args.out, "runs"))
  except sweep.Interrupted as e:
    sys.exit(f"stopped by {e}: rerun the same command to resume, or --report-only to report what finished")
  results = [measure.analyse(row, configs[row["values"]["placement"]][2]) for row in rows
             if row["status"] in ("ok", "diverged")]
  meta = report.meta(t0, load0, 1, date_day=time.strftime("%Y-%m-%d"), device=jax.devices()[0].device_kind,
                     devices=jax.device_count(), cpus=os.cpu_count(), size=args.size)
  return meta, {"seeds": args.seeds, "runs": [measure.measurement(r) for r in results]}, results


# ---------------------------------------------------------------- report


def mean_over_seeds(runs):
  """One entry per placement (in run order) for the claims: its numbers' means over the seeds (lists elementwise),
  "finished" and with diagnostics only if every seed's is; each number's values over the seeds under "seeds"."""
  by = {}
  for r in runs:
    by.setdefault(r["placement"], []).append(r)
  out = []
  for p, rs in by.items():
    mean = {k: (rs[0][k] if len(rs) == 1 else [report.mean_spread(x)[0] for x in zip(*(r[k] for r in rs))]
                if isinstance(rs[0][k], list) else report.mean_spread([r.get(k) for r in rs])[0])
            for k in rs[0] if k not in ("placement", "status", "step", "diagnostics", "seed", "grad_early_step")}
    mean |= {"grad_early_step": rs[0]["grad_early_step"]} if "grad_early_step" in rs[0] else {}
    out.append(mean | {"placement": p, "step": rs[0]["step"], "diagnostics": all(r["diagnostics"] for r in rs),
                       "status": "/".join(dict.fromkeys(r["status"] for r in rs)),
                       "seeds": {k: [r[k] for r in rs] for k in ("final_loss", "final_ppl", "seconds")}})
  return out


def checks(by):
  """The papers' claims, each checked against our measurements: (claim, verdict, evidence)."""
  out = []

  def ok(p):
    return p in by and by[p]["status"] == "finished" and by[p]["diagnostics"]

  if ok("pre") and ok("lns"):
    pre, lns = by["pre"]["resid_var_growth"], by["lns"]["resid_var_growth"]
    out.append(("Pre-LN's residual variance grows with depth; LNS keeps the growth in check",
                "agrees" if pre > 2 and lns < pre else "does not agree",
                f"variance last/first layer: Pre-LN {pre:.1f}×, LNS {lns:.1f}×"))
    g = by["pre"]["grad_early_ratio"]
    out.append(("Pre-LN's deep layers get smaller gradients (early in training)",
                "agrees" if g < 1 else "does not agree",
                f"Pre-LN grad norm layer L / layer 1 at step {by['pre']['grad_early_step']}: {g:.2f}"))
  if ok("pre") and ok("mix"):
    cv = {p: by[p]["grad_cv"] for p in ("pre", "mix")}
    out.append(("Mix-LN's per-layer gradient norms are more uniform than Pre-LN's",
                "agrees" if cv["mix"] < cv["pre"] else "does not agree",
                f"coefficient of variation over layers (mean over diagnostics steps): Pre-LN {cv['pre']:.2f}, Mix-LN {cv['mix']:.2f}"))
  for p in ("mix", "lns"):
    if ok("pre") and ok(p):
      out.append((f"{NAMES[p]} reaches a lower perplexity than Pre-LN",
                  "agrees" if by[p]["final_loss"] < by["pre"]["final_loss"] else "does not agree",
                  f"final validation perplexity: Pre-LN {by['pre']['final_ppl']:.3f}, {NAMES[p]} {by[p]['final_ppl']:.3f}"))
  if "post" in by and ok("pre"):
    post, pre = by["post"], by["pre"]
    if post["status"] != "finished":
      verdict, evidence = "agrees", f"Post-LN {post['status']}; Pre-LN finished at loss {pre['final_loss']:.3f}"
    else:
      worse = post["final_loss"] > pre["final_loss"]
      verdict = "partly: worse, but trained stably" if worse else "does not agree"
      evidence = (f"no divergence; final validation loss Post-LN {post['final_loss']:.3f} vs Pre-LN "
                  f"{pre['final_loss']:.3f}")
    out.append(("Post-LN is unstable at depth at a learning rate Pre-LN tolerates", verdict, evidence))
  if ok("pre"):
    pre = by["pre"]
    out.append(("Deep Pre-LN layers change the representation little (small angular distance to the next layer)",
                "agrees" if pre["angular_deep_mean"] < pre["angular_first_mean"] else "does not agree",
                f"Pre-LN d(x^ℓ, x^ℓ+1), mean of last third {pre['angular_deep_mean']:.3f} vs first third "
                f"{pre['angular_first_mean']:.3f}"))
    for p in ("mix", "lns"):
      if ok(p):
        d, d_pre = by[p]["skip_deep_mean"], pre["skip_deep_mean"]
        out.append((f"Skipping a deep layer costs more under {NAMES[p]} than under Pre-LN",
                    "agrees" if d > d_pre else "does not agree",
                    f"mean loss increase when skipping one of the last third of layers: Pre-LN {d_pre:.4f}, {NAMES[p]} {d:.4f}"))
  return out


def write_report(meta, m, out):
  """report.md from the measurements (summary.json's: a run per placement and seed) and its meta."""
  results, seeds = mean_over_seeds(m["runs"]), m["seeds"]
  by = {r["placement"]: r for r in results}
  lines = ["# Where the norm goes: Pre-LN, Post-LN, Mix-LN, Peri-LN and LNS at small scale", "",
           f"Generated by `python experiments/norm_placement/run.py` on {meta['date_day']}, "
           f"{meta['device']} ({meta['devices']} device(s), {meta['cpus']} CPU threads). "
           "Model: `experiments/norm_placement/config.py`"
           + (" (gpu size)" if meta["size"] == "gpu" else "") + ", the embedded corpus (Python standard library, "
           f"bytes), {'one seed' if len(seeds) == 1 else 'seeds ' + ', '.join(map(str, seeds)) + ' (mean ± sd)'}, "
           "the same data order for every placement.", "",
           "## Final validation loss", ""]
  lines += report.table(
      ["placement", "status", "steps", "val loss", "val perplexity", "train time", "paper: LLaMA-130M C4 PPL"],
      [[NAMES[r["placement"]], r["status"], r["step"], report.cell(r["seeds"]["final_loss"], "{:.4f}"),
        report.cell(r["seeds"]["final_ppl"], "{:.3f}"), report.cell([s / 60 for s in r["seeds"]["seconds"]],
                                                                   "{:.1f} min"),
        PAPER_PPL_130M[r["placement"]]] for r in results])
  lines += ["", "The papers' numbers are for 130M-parameter models on 2.2B C4 tokens; ours are byte-level, "
            "tiny and short. Only orderings and the per-layer shapes are comparable, not absolute values.", "",
            "## The papers' claims, checked against what we measured", "",
            "| claim | ours | evidence |", "|---|---|---|"]
  lines += [f"| {c} | **{v}** | {e} |" for c, v, e in checks(by)]
  lines += ["", "## Plots", "",
            "- ![](eval_loss.png) validation loss against steps",
            "- ![](grad_norm_early.png) per-layer gradient norm at the first diagnostics step",
            "- ![](grad_norm_final.png) per-layer gradient norm at the last diagnostics step",
            "- ![](resid_var.png) residual-stream variance against depth",
            "- ![](resid_max_abs.png) max |activation| against depth",
            "- ![](angular_distance.png) angular distance heatmaps (rows n = 1..L, columns ℓ)",
            "- ![](skip_drop.png) validation-loss increase when one layer is skipped", "",
            "## Per-layer numbers", ""]
  for r in results:
    lines.append(f"**{NAMES[r['placement']]}**{'' if len(seeds) == 1 else ' (mean over the seeds)'}: skip drop per "
                 "layer " + ", ".join(f"{x:.4f}" for x in r["skip_drop"])
                 + "; angular distance to the next layer (last token) "
                 + ", ".join(f"{x:.3f}" for x in r["angular_next"]) + "  ")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.ERROR)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="experiments/norm_placement/results")
  parser.add_argument("--size", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--placements", default=",".join(PLACEMENTS))
  parser.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
  parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (mean ± sd)")
  parser.add_argument("--report-only", action="store_true", help="rewrite report.md from summary.json")
  args = parser.parse_args()
  args.placements = args.placements.split(",")
  args.seeds = list(range(args.seeds))
  os.makedirs(args.out, exist_ok=True)
  meta, measured, results = report.summary_or_measure(args.out, args.report_only, lambda: train_and_measure(args))
  if results is not None:
    from plots import draw  # pylint: disable=import-outside-toplevel  (matplotlib: only with the runs)
    draw(results, args.out)
  write_report(meta, measured, args.out)
  print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
