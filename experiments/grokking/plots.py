"""The grokking study's figures, drawn from the runs' histories (`grokking.load_history`) through jaxtrain.plots."""

from __future__ import annotations

import math
import os

import numpy as np

from grokking import ftz_threshold
from jaxtrain import plots as jplots


def summary(runs, labels, out):
  """summary.png (every run: accuracy, SC fraction, ‖θ‖, cos(g, θ) against steps) and one <name>.png per run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = dict(zip(labels, plt.cm.tab10.colors))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  (acc, sc), (norm, cos) = axes
  for name, h in runs.items():
    col, label, ev = colors[name], labels[name], h["eval"]
    test = {label: (ev["step"][1:], 100 * ev["test_accuracy"][1:])}
    jplots.curves(test, ax=acc, colors=col, label=lambda n: f"{n}: test", legend=False)
    jplots.curves({label: (ev["step"][1:], 100 * ev["train_accuracy"][1:])}, ax=acc, colors=col, label=False, ls="--",
                  lw=1, legend=False)
    for ax, key, scale in ((sc, "sc_fraction", 100), (norm, "weight_norm", 1), (cos, "grad_weight_cos", 1)):
      jplots.curves({label: (h["step"], scale * h[key])}, ax=ax, colors=col, max_points=2000, legend=False)
  acc.set(title="accuracy (solid: test, dashed: train)", ylabel="%")
  sc.set(title="Softmax Collapse fraction (train, in the loss dtype)", ylabel="% of train examples",
         ylim=(-3, 103))
  norm.set(title="weight norm ‖θ‖", yscale="log")
  cos.set(title="cos(gradient, weights)  (-1: pure NLM)", ylim=(-1.05, 0.3))
  for ax in axes.ravel():
    ax.set(xscale="log", xlabel="step (= epoch, full batch)")
    ax.grid(alpha=0.3)
  acc.legend(fontsize=8, loc="center left")
  fig.suptitle("MLP on (a + b) mod 113, 40% train, full batch")
  jplots.save(fig, os.path.join(out, "summary.png"), dpi=90)

  for name, h in runs.items():  # one figure per run: the four curves on linear steps
    fig, ax = plt.subplots(1, 1, figsize=(8, 4.5))
    ev = h["eval"]
    jplots.curves({"train accuracy %": (ev["step"], 100 * ev["train_accuracy"]),
                   "test accuracy %": (ev["step"], 100 * ev["test_accuracy"])}, ax=ax, legend=False)
    jplots.curves({"SC fraction %": (h["step"], 100 * h["sc_fraction"])}, ax=ax, max_points=2000, legend=False)
    ax.set(xlabel="step", ylabel="%", ylim=(-3, 103), title=labels[name])
    right = ax.twinx()
    jplots.curves({"‖θ‖ (right)": (h["step"], h["weight_norm"])}, ax=right, colors="k", lw=1, max_points=2000,
                  legend=False, ylabel="‖θ‖")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    jplots.save(fig, os.path.join(out, f"{name}.png"), dpi=80)


def collapse(runs, out, fname, title):
  """The StableMax runs of one task side by side: accuracy, loss, ‖θ‖, Adam's largest step, |g|, ν = 0 entries."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
  (acc, loss), (norm, upd), (grad, zero) = axes
  share = zero.twinx()
  for (name, h), col in zip(runs.items(), plt.cm.Set1.colors):
    ev, st, one = h["eval"], h["step"], dict(colors=col, legend=False)
    jplots.curves({name: (ev["step"], 100 * ev["test_accuracy"])}, ax=acc, label=f"{name}: test", **one)
    jplots.curves({name: (ev["step"], 100 * ev["train_accuracy"])}, ax=acc, label=False, ls="--", lw=1, **one)
    jplots.curves({name: (st, h["loss"])}, ax=loss, lw=0.8, **one)
    jplots.curves({name: (st, h["weight_norm"])}, ax=norm, lw=0.8, **one)
    jplots.curves({name: (st, h["opt/update_max"])}, ax=upd, lw=0.6, **one)
    jplots.curves({name: (st, h["opt/grad_max"])}, ax=grad, label=f"{name}: max |g|", lw=0.8, **one)
    jplots.curves({name: (st, np.where(np.isfinite(h["opt/grad_min"]), h["opt/grad_min"], np.nan))}, ax=grad,
                  label=f"{name}: min non-zero |g|", lw=0.4, ls=":", **one)
    jplots.curves({name: (st, h["opt/nu_zero_m_nonzero"])}, ax=zero, label=f"{name}: ν = 0, m ≠ 0 (count)", lw=0.8,
                  **one)
    jplots.curves({name: (st, 100 * h["opt/grad_ftz_fraction"])}, ax=share,
                  label=f"{name}: % of non-zero |g| in the flush band (right)", lw=0.6, ls=":", **one)
    jplots.curves({name: (st, 100 * h["opt/nu_zero_fraction"])}, ax=share, label=f"{name}: % of ν = 0 (right)",
                  lw=0.6, ls="--", **one)
  lr = next(iter(runs.values()))["config"]["lr"]
  b2 = next(iter(runs.values()))["config"]["b2"]
  upd.axhline(lr, color="k", lw=0.8, ls="--", label=f"lr = {lr:g}")
  grad.axhline(ftz_threshold(b2), color="k", lw=0.8, ls="--", label="XLA flush: (1-β2)g² < 1.2e-38", zorder=5)
  grad.axhline(math.sqrt(float(np.finfo(np.float32).smallest_subnormal) / 2 / (1 - b2)), color="gray", lw=0.8, ls="-.",
               label="IEEE float32 (PyTorch): (1-β2)g² rounds to 0", zorder=5)
  acc.set(title="accuracy % (solid: test, dashed: train)", ylim=(-3, 103))
  loss.set(title="train loss", yscale="log")
  norm.set(title="‖θ‖", yscale="log")
  upd.set(title="largest |Δθ| of the step", yscale="log")
  grad.set(title="gradient entries |g|", yscale="log")
  zero.set(title="Adam entries with ν = 0 but m ≠ 0 (their step is lr·m̂/ε)", yscale="symlog")
  share.set(ylabel="%", ylim=(-2, 102))
  share.legend(fontsize=7, loc="center left")
  for ax in axes.ravel():
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[-1]:
    ax.set(xlabel="step")
  fig.suptitle(title)
  jplots.save(fig, os.path.join(out, fname), dpi=80)


def draw(histories, labels, paper_names, out):
  """Every figure from {run: {seed: history}} (each run's first seed): summary.png, <run>.png, collapse_p<p>.png."""
  first = {n: hs[min(hs)] for n, hs in histories.items()}
  runs = {n: first[n] for n in paper_names if n in first}
  if runs:
    summary(runs, labels, out)
  by_task = {}
  for n, h in first.items():
    if h["config"]["output"] == "stablemax" and "opt/update_max" in h:
      by_task.setdefault(h["config"]["p"], {})[n] = h
  for p_, group in sorted(by_task.items(), reverse=True):
    collapse(group, out, f"collapse_p{p_}.png", f"StableMax, AdamW lr {next(iter(group.values()))['config']['lr']:g}, "
             f"ε 1e-25, (a + b) mod {p_}: Adam state float32 (XLA), float64, float32 with subnormals (PyTorch)")
