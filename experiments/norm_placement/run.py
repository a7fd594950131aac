"""Where the norm goes, at small scale: train Pre-LN, Post-LN, Mix-LN, Peri-LN and LNS alike, then compare.

  python experiments/norm_placement/run.py --out experiments/norm_placement/results
  python experiments/norm_placement/run.py --size gpu --out runs/norm_placement_gpu   # on a GPU

Each placement trains the config in `config.py` (same data, seed and budget) in
`<out>/runs/<placement>` (rerunning resumes or reuses finished runs). Then, on
each final checkpoint, it measures the angular distance between layers' inputs
and the validation-loss increase when each layer is skipped, and writes
`<out>/report.md` with PNG plots. The checks against the papers' claims are
computed from the measurements, not written in advance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import config as cfg_lib  # noqa: E402
from jaxtrain import data, diagnostics, sharding, train  # noqa: E402
from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain.checkpoint import Checkpointer  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

PLACEMENTS = ("pre", "post", "mix", "peri", "lns")
NAMES = {"pre": "Pre-LN", "post": "Post-LN", "mix": "Mix-LN", "peri": "Peri-LN", "lns": "LNS"}
# C4 validation perplexity of LLaMA-130M (12 layers), as published (ln_stablemax.md §1.4, §2.1, §3.4).
PAPER_PPL_130M = {"pre": 26.73, "post": 26.95, "mix": 26.07, "peri": "26.51 (Sandwich-LN)", "lns": 25.76}
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")


def load_config(placement, args):
  """The study's config for one placement; --steps rescales the step-based intervals with it."""
  overrides = []
  if args.steps:
    overrides = [f"train.steps={args.steps}", f"optim.warmup_steps={max(1, args.steps // 10)}",
                 f"train.diagnostics_every={max(1, args.steps // 10)}", f"train.eval_every={max(1, args.steps // 4)}"]
  return cfg_lib.load(f"{CONFIG}:{placement}" + (",gpu" if args.size == "gpu" else ""), overrides)


def train_all(args):
  for p in args.placements:
    config = load_config(p, args)
    workdir = os.path.join(args.out, "runs", p)
    t0 = time.time()
    try:
      summary = train.train(config, workdir)
      status = "finished"
    except train.NonFiniteError as e:  # a diverging placement is a result, not a crash
      summary, status = {"error": str(e)}, "diverged"
    with open(os.path.join(workdir, "study_status.json"), "w") as f:
      json.dump({"status": status, "seconds": time.time() - t0, **summary}, f)
    print(f"{p}: {status} in {time.time() - t0:.0f} s", flush=True)


def analyse(p, args):
  """Per-layer measurements of one placement's final checkpoint and its metrics."""
  workdir = os.path.join(args.out, "runs", p)
  config = load_config(p, args)
  rows = read_metrics(workdir)
  status = json.load(open(os.path.join(workdir, "study_status.json")))
  out = {"placement": p, "status": status["status"], "seconds": status["seconds"],
         "eval": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
         "diag": [r for r in rows if "layers/grad_norm" in r]}
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  prog = train.build(config, mesh)
  restored = Checkpointer(os.path.join(workdir, "checkpoints"), keep=99).restore_latest(
      prog.abstract_state, config.model.to_dict())
  params = restored[0]["params"]
  kw = dict(seq_len=config.data.seq_len, global_batch=config.train.global_batch)
  batches = data.eval_batches(config.data, num_batches=config.train.eval_batches, **kw)
  states = diagnostics.residual_states(prog.graphdef, params, batches[0]["inputs"])
  out["angular_last"] = diagnostics.angular_distances(states, last_token=True)
  out["angular_all"] = diagnostics.angular_distances(states, last_token=False)
  out["final_loss"], out["skip_drop"] = diagnostics.skip_drop(
      prog.graphdef, params, batches, config.model.num_layers,
      output=config.model.output, dtype=config.train.loss_dtype)
  out["step"] = restored[2]
  return out


# ---------------------------------------------------------------- report


def plots(results, out_dir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel

  diag = {NAMES[r["placement"]]: pd.DataFrame(r["diag"]) for r in results if r["diag"]}

  def per_layer(key, fname, title, step=None):
    fig, ax = plt.subplots(figsize=(6, 4))
    jplots.by_depth(diag, key, ax, step=step, logy=True, ylabel="", title=title)
    jplots.save(fig, os.path.join(out_dir, fname))

  per_layer("layers/grad_norm", "grad_norm_early.png", "per-layer gradient norm, first diagnostics step", step="first")
  per_layer("layers/grad_norm", "grad_norm_final.png", "per-layer gradient norm, last diagnostics step")
  per_layer("layers/resid_var", "resid_var.png", "residual-stream variance after each block (last diagnostics step)")
  per_layer("layers/resid_max_abs", "resid_max_abs.png", "max |activation| after each block")

  fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
  for ax, r in zip(axes[0], results):
    jplots.heatmap(r["angular_last"], ax=ax, normalize="row", colorbar=False, title=NAMES[r["placement"]],
                   xlabel="layer ℓ", ylabel="n (block size)")
  fig.suptitle("angular distance d(x^ℓ, x^(ℓ+n)), last token, each row min-max scaled")
  jplots.save(fig, os.path.join(out_dir, "angular_distance.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  jplots.by_depth({NAMES[r["placement"]]: r["skip_drop"] for r in results}, ax=ax, xlabel="skipped layer",
                  ylabel="validation-loss increase", title="skip-one-layer drop")
  ax.set_yscale("symlog")
  jplots.save(fig, os.path.join(out_dir, "skip_drop.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  jplots.curves({NAMES[r["placement"]]: tuple(zip(*r["eval"])) if r["eval"] else ((), ()) for r in results}, ax=ax,
                marker="o", ms=3, xlabel="step", ylabel="validation loss", title="validation loss")
  jplots.save(fig, os.path.join(out_dir, "eval_loss.png"))


def checks(by):
  """The papers' claims, each checked against our measurements: (claim, verdict, evidence)."""
  out = []

  def last_diag(p, key):
    return np.asarray(by[p]["diag"][-1][key]) if p in by and by[p]["diag"] else None

  def ok(p):
    return p in by and by[p]["status"] == "finished" and bool(by[p]["diag"])

  if ok("pre") and ok("lns"):
    pre, lns = last_diag("pre", "layers/resid_var"), last_diag("lns", "layers/resid_var")
    grows = pre[-1] > 2 * pre[0]
    contained = lns[-1] / lns[0] < pre[-1] / pre[0]
    out.append(("Pre-LN's residual variance grows with depth; LNS keeps the growth in check",
                "agrees" if grows and contained else "does not agree",
                f"variance last/first layer: Pre-LN {pre[-1] / pre[0]:.1f}×, LNS {lns[-1] / lns[0]:.1f}×"))
    g_pre = [np.asarray(r["layers/grad_norm"]) for r in by["pre"]["diag"][:1]][0]
    shrink = g_pre[-1] < g_pre[0]
    out.append(("Pre-LN's deep layers get smaller gradients (early in training)",
                "agrees" if shrink else "does not agree",
                f"Pre-LN grad norm layer L / layer 1 at step {by['pre']['diag'][0]['step']}: {g_pre[-1] / g_pre[0]:.2f}"))
  if ok("pre") and ok("mix"):
    cv = {p: float(np.std(g) / np.mean(g)) for p in ("pre", "mix")
          for g in [np.mean([r["layers/grad_norm"] for r in by[p]["diag"]], axis=0)]}
    out.append(("Mix-LN's per-layer gradient norms are more uniform than Pre-LN's",
                "agrees" if cv["mix"] < cv["pre"] else "does not agree",
                f"coefficient of variation over layers (mean over diagnostics steps): Pre-LN {cv['pre']:.2f}, Mix-LN {cv['mix']:.2f}"))
    out.append(("Mix-LN reaches a lower perplexity than Pre-LN",
                "agrees" if by["mix"]["final_loss"] < by["pre"]["final_loss"] else "does not agree",
                f"final validation perplexity: Pre-LN {np.exp(by['pre']['final_loss']):.3f}, Mix-LN {np.exp(by['mix']['final_loss']):.3f}"))
  if ok("pre") and ok("lns"):
    out.append(("LNS reaches a lower perplexity than Pre-LN",
                "agrees" if by["lns"]["final_loss"] < by["pre"]["final_loss"] else "does not agree",
                f"final validation perplexity: Pre-LN {np.exp(by['pre']['final_loss']):.3f}, LNS {np.exp(by['lns']['final_loss']):.3f}"))
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
    L = len(by["pre"]["skip_drop"])
    deep = slice(2 * L // 3, L)
    d_pre = float(np.mean(by["pre"]["skip_drop"][deep]))
    a_pre = by["pre"]["angular_last"][0]
    out.append(("Deep Pre-LN layers change the representation little (small angular distance to the next layer)",
                "agrees" if np.mean(a_pre[deep]) < np.mean(a_pre[: L // 3]) else "does not agree",
                f"Pre-LN d(x^ℓ, x^ℓ+1), mean of last third {np.mean(a_pre[deep]):.3f} vs first third {np.mean(a_pre[: L // 3]):.3f}"))
    for p in ("mix", "lns"):
      if ok(p):
        d = float(np.mean(by[p]["skip_drop"][deep]))
        out.append((f"Skipping a deep layer costs more under {NAMES[p]} than under Pre-LN",
                    "agrees" if d > d_pre else "does not agree",
                    f"mean loss increase when skipping one of the last third of layers: Pre-LN {d_pre:.4f}, {NAMES[p]} {d:.4f}"))
  return out


def report(results, args):
  by = {r["placement"]: r for r in results}
  lines = ["# Where the norm goes: Pre-LN, Post-LN, Mix-LN, Peri-LN and LNS at small scale", "",
           f"Generated by `python experiments/norm_placement/run.py` on {time.strftime('%Y-%m-%d')}, "
           f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s), {os.cpu_count()} CPU threads). "
           "Model: `experiments/norm_placement/config.py`"
           + (" (gpu size)" if args.size == "gpu" else "") + ", the embedded corpus (Python standard library, bytes), "
           "one seed, the same data order for every placement.", "",
           "## Final validation loss", "",
           "| placement | status | steps | val loss | val perplexity | train time | paper: LLaMA-130M C4 PPL |",
           "|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {NAMES[r['placement']]} | {r['status']} | {r['step']} | {r['final_loss']:.4f} | "
                 f"{np.exp(r['final_loss']):.3f} | {r['seconds'] / 60:.1f} min | {PAPER_PPL_130M[r['placement']]} |")
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
    lines.append(f"**{NAMES[r['placement']]}**: skip drop per layer "
                 + ", ".join(f"{x:.4f}" for x in r["skip_drop"])
                 + "; angular distance to the next layer (last token) "
                 + ", ".join(f"{x:.3f}" for x in r["angular_last"][0][: len(r['skip_drop'])]) + "  ")
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.ERROR)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="experiments/norm_placement/results")
  parser.add_argument("--size", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--placements", default=",".join(PLACEMENTS))
  parser.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
  parser.add_argument("--report-only", action="store_true", help="skip training; analyse existing runs")
  args = parser.parse_args()
  args.placements = args.placements.split(",")
  os.makedirs(args.out, exist_ok=True)
  if not args.report_only:
    train_all(args)
  results = [analyse(p, args) for p in args.placements]
  plots(results, args.out)
  report(results, args)
  print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
