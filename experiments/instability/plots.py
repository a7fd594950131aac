"""The instability study's figures, drawn from the sweeps' curves through jaxtrain.plots."""

from __future__ import annotations

import os

from jaxtrain import plots as jplots

COLORS = {"baseline": "tab:red", "qk-norm": "tab:blue", "z-loss": "tab:orange", "qk-norm + z-loss": "tab:green",
          "muon": "tab:purple"}
SETTINGS = tuple(COLORS)


def draw(data, args, fmt_sens):
  """Every figure, from the collected runs with their curves (`measure.collect`)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  widths = args.widths
  names = [n for n in SETTINGS if any((w, n) in data for w in widths)]  # the settings measured
  marks = {w: m for w, m in zip(widths, ("o", "s", "^", "D"))}

  def loss_axes(ax, key, label):
    """Final loss against η, capped at ℓ0 as LR sensitivity counts it (× diverged: at ℓ0)."""
    s = data.get(key)
    if not s:
      return
    points = [{"lr": lr, "loss": r["final"], "status": r["status"]} for lr, r in s["runs"].items()]
    jplots.sweep(points, "lr", "loss", ax, label=label, cap=s["l0"], failed=("diverged",), failed_color="k",
                 marker=marks[key[0]], colors=COLORS[key[1]] if label != f"d={key[0]}" else None, legend=False,
                 xlabel="", ylabel="")

  def lr_figure(panels, size, fontsize, title, fname):
    """One row of panels (title, [(key, label), ...]): final loss against the learning rate."""
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), sharey=True, squeeze=False)
    for ax, (panel_title, curves) in zip(axes[0], panels):
      for key, label in curves:
        loss_axes(ax, key, label)
      ax.set(xscale="log", title=panel_title, xlabel="peak learning rate")
      ax.legend(fontsize=fontsize)
    axes[0][0].set_ylabel("final validation loss, capped at ℓ0")
    fig.suptitle(title)
    jplots.save(fig, os.path.join(args.out, fname))

  lr_figure([(n, [((w, n), f"d={w}") for w in widths]) for n in names], (3.6, 3.4), 8,
            "final loss against learning rate, per setting (× diverged: counted as ℓ0)", "loss_vs_lr.png")
  lr_figure([(f"d_model={w}", [((w, n), f"{n} (sens. {fmt_sens(data[(w, n)])})") for n in names if data.get((w, n))])
             for w in widths], (4.6, 3.6), 7, "settings side by side, per width (as the paper's Fig. 1)",
            "loss_vs_lr_by_width.png")

  cmap = plt.get_cmap("viridis")

  def grid_plot(fname, title, curve, ylabel, log=True, mark=True, **line_kw):
    """Every run's `curve(run)` over training: a panel per (width, setting), a color per learning rate."""
    fig, axes = plt.subplots(len(widths), len(names), figsize=(3.6 * len(names), 2.9 * len(widths)),
                             sharex=True, sharey="row", squeeze=False)  # one scale per width: settings compare
    for i, w in enumerate(widths):
      for j, n in enumerate(names):
        ax = axes[i][j]
        s = data.get((w, n))
        if s:
          lrs = sorted(s["runs"])
          for k, lr in enumerate(lrs):
            r = s["runs"][lr]
            steps_S, v_S = curve(r)
            if len(steps_S):
              jplots.curves({f"{lr:g}": (steps_S, v_S)}, ax=ax, colors=cmap(k / max(len(lrs) - 1, 1)),
                            mark_end=mark and r["status"] == "diverged", legend=False, xlabel="", ylabel="", **line_kw)
        ax.set(title=f"d={w}, {n}", yscale="log" if log else "linear")
        if i == len(widths) - 1:
          ax.set_xlabel("step")
        if j == 0:
          ax.set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=6, title="peak LR", title_fontsize=7)
    fig.suptitle(title)
    jplots.save(fig, os.path.join(args.out, fname), dpi=100)

  def attn(r):
    steps_S, logits_SL = r["curves"]["attn"]
    return steps_S, logits_SL.max(1) if len(steps_S) else logits_SL

  grid_plot("attn_logit.png", "max attention logit (max over layers) during training; × a diverged run's last record",
            attn, "max |q·k|/√d_h", lw=1.2, marker=".", ms=3)
  grid_plot("log_z.png", "log Z (mean logsumexp of the output logits) during training",
            lambda r: r["curves"]["log_z"], "log Z", log=False, mark=False, lw=0.8)
  grid_plot("train_loss.png", "training cross-entropy; × where a diverged run stopped", lambda r: r["curves"]["loss"],
            "train CE", lw=0.8)

  unstable = [(w, n, lr, r) for (w, n), s in sorted(data.items()) for lr, r in sorted(s["runs"].items())
              if r["unstable"]]
  if unstable:
    cols = min(len(unstable), 4)
    rows_n = -(-len(unstable) // cols)
    fig, axes = plt.subplots(2 * rows_n, cols, figsize=(3.6 * cols, 5.2 * rows_n), squeeze=False)
    for idx, (w, n, lr, r) in enumerate(unstable):
      ax_a, ax_z = axes[2 * (idx // cols)][idx % cols], axes[2 * (idx // cols) + 1][idx % cols]
      steps_S, logits_SL = r["curves"]["attn"]
      jplots.curves({f"layer {l + 1}": (steps_S, logits_SL[:, l]) for l in range(logits_SL.shape[1])}
                    if len(steps_S) else {}, ax=ax_a, logy=True, legend=False, xlabel="", ylabel="max attn logit",
                    title=f"d={w}, {n}, lr {lr:g}\n{r['status']}"
                    + (f" at step {r['last_step']}" if r["status"] == "diverged" else ""))
      ax_a.legend(fontsize=6)
      jplots.curves({"log Z": r["curves"]["log_z"]}, ax=ax_z, lw=0.8, legend=False, xlabel="step", ylabel="log Z")
    for idx in range(len(unstable), rows_n * cols):
      axes[2 * (idx // cols)][idx % cols].axis("off")
      axes[2 * (idx // cols) + 1][idx % cols].axis("off")
    fig.suptitle("runs that diverged or came close: max attention logit per layer, and log Z")
    jplots.save(fig, os.path.join(args.out, "unstable_runs.png"), dpi=100)
