"""The norm-placement study's figures, drawn from the runs' diagnostics and final checkpoints through jaxtrain.plots."""

from __future__ import annotations

import os

from jaxtrain import plots as jplots

NAMES = {"pre": "Pre-LN", "post": "Post-LN", "mix": "Mix-LN", "peri": "Peri-LN", "lns": "LNS"}


def draw(results, out_dir):
  """Every figure, from `measure.analyse`'s results (with the diagnostics rows and the angular matrices)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel

  by = {}
  for r in results:  # placement -> its runs over the seeds
    by.setdefault(r["placement"], []).append(r)
  first = [rs[0] for rs in by.values()]  # the per-step figures and heatmaps: the first seed's run
  diag = {NAMES[r["placement"]]: pd.DataFrame(r["diag"]) for r in first if r["diag"]}

  def per_layer(key, fname, title, step=None):
    fig, ax = plt.subplots(figsize=(6, 4))
    jplots.by_depth(diag, key, ax, step=step, logy=True, ylabel="", title=title)
    jplots.save(fig, os.path.join(out_dir, fname))

  per_layer("layers/grad_norm", "grad_norm_early.png", "per-layer gradient norm, first diagnostics step", step="first")
  per_layer("layers/grad_norm", "grad_norm_final.png", "per-layer gradient norm, last diagnostics step")
  per_layer("layers/resid_var", "resid_var.png", "residual-stream variance after each block (last diagnostics step)")
  per_layer("layers/resid_max_abs", "resid_max_abs.png", "max |activation| after each block")

  fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3.2), squeeze=False)
  for ax, r in zip(axes[0], first):
    jplots.heatmap(r["angular_last"], ax=ax, normalize="row", colorbar=False, title=NAMES[r["placement"]],
                   xlabel="layer ℓ", ylabel="n (block size)")
  fig.suptitle("angular distance d(x^ℓ, x^(ℓ+n)), last token, each row min-max scaled (first seed)")
  jplots.save(fig, os.path.join(out_dir, "angular_distance.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  jplots.by_depth({NAMES[p]: np.mean([r["skip_drop"] for r in rs], axis=0) for p, rs in by.items()}, ax=ax,
                  xlabel="skipped layer", ylabel="validation-loss increase",
                  title="skip-one-layer drop (mean over seeds)")
  ax.set_yscale("symlog")
  jplots.save(fig, os.path.join(out_dir, "skip_drop.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  jplots.by_depth({NAMES[p]: np.mean([np.asarray(r["angular_last"])[0] for r in rs], axis=0)
                   for p, rs in by.items()}, ax=ax, xlabel="layer ℓ", ylabel="d(x^ℓ, x^(ℓ+1))",
                  title="d(layer input, layer output), last token, seed mean")
  jplots.save(fig, os.path.join(out_dir, "angular_next.png"))

  fig, ax = plt.subplots(figsize=(6, 4))
  jplots.curves({NAMES[r["placement"]]: tuple(zip(*r["eval"])) if r["eval"] else ((), ()) for r in first}, ax=ax,
                marker="o", ms=3, xlabel="step", ylabel="validation loss", title="validation loss")
  jplots.save(fig, os.path.join(out_dir, "eval_loss.png"))
