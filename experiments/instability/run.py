"""Small-scale proxies for instabilities (Wortsman et al., ICLR 2024): LR sweeps with and without qk-norm, z-loss.

  python experiments/instability/run.py                      # the study (~20 min on an idle 2-core CPU)
  python experiments/instability/run.py --report-only        # re-read the finished sweeps, rewrite the report

For each width in `--widths` it runs one sweep (jaxtrain.sweep) of the model in
`config.py:<width>` over z-loss {0, 1e-4} × qk-norm {off, on} × the paper's
learning rates 3e-4 ... 3e-1, in `<workdir>/d<width>` (rerunning resumes: finished
points are skipped). A run whose loss or gradient becomes non-finite stops with
status "diverged". Then it computes each setting's LR sensitivity (the paper's
definition, `jaxtrain.proxies`; a diverged run counts as the loss at
initialization), and writes `<out>/report.md` with plots: final loss against
learning rate per setting, the max attention logit per layer and log Z over
training for the runs that diverge or come close. The verdicts on the paper's
claims are computed from the measurements, not written in advance.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import config as cfg_lib, proxies, sweep  # noqa: E402
from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")
_spec = importlib.util.spec_from_file_location("instability_config", CONFIG)
inst_config = importlib.util.module_from_spec(_spec)  # this study's config.py (min_lr_ratio)
_spec.loader.exec_module(inst_config)
WIDTHS = (64, 128)
# (name, model.qk_norm, train.z_loss): the 2×2 of the paper's two mitigations.
SETTINGS = (("baseline", False, 0.0), ("qk-norm", True, 0.0), ("z-loss", False, proxies.Z_LOSS),
            ("qk-norm + z-loss", True, proxies.Z_LOSS))
COLORS = {"baseline": "tab:red", "qk-norm": "tab:blue", "z-loss": "tab:orange", "qk-norm + z-loss": "tab:green"}
# A run "came close" to diverging: above the best learning rate, and its final loss gave back at least this
# share of the way from the best loss ℓ* to ℓ0 (a diverged run gives back all of it).
CLOSE = 0.1
SATURATED = 100.0  # an attention logit this far above the others makes the softmax one-hot (e^-100 ≈ 4e-44)


def non_embedding_params(m):
  """Attention and MLP matrices of all layers (the paper counts parameters without the embeddings)."""
  d, f = m.d_model, cfg_lib.mlp_dim(m)
  return m.num_layers * (4 * d * d + 2 * d * f)


def grid(lrs):
  """z-loss × qk-norm × learning rate, the last fastest; the cosine ends at 1e-5 for every peak, as in the paper.

  In this order a sweep stopped early has compared qk-norm with the baseline first (the paper's Fig. 1).
  """
  return [f"train.z_loss=0,{proxies.Z_LOSS}", "model.qk_norm=false,true",
          "optim.lr=" + ",".join(f"{x:g}" for x in lrs) + ";optim.min_lr_ratio="
          + ",".join(f"{inst_config.min_lr_ratio(x):.12g}" for x in lrs)]


def run_sweeps(args):
  for w in args.widths:
    t0 = time.time()
    sweep.run(f"{CONFIG}:{w}", grid(args.lrs), os.path.join(args.workdir, f"d{w}"), overrides=args.overrides,
              parallel=args.parallel)
    print(f"width {w}: sweep done in {time.time() - t0:.0f} s", flush=True)


# ---------------------------------------------------------------- reading the sweeps


def setting_of(values):
  for name, qk, z in SETTINGS:
    if bool(values["model.qk_norm"]) == qk and float(values["train.z_loss"]) == z:
      return name
  raise ValueError(f"no setting for {values}")


def collect(args):
  """{(width, setting): {"runs": {lr: run}, "l0", "sens", "best_lr", "best"}}, each run with its curves."""
  out = {}
  for w in args.widths:
    for row in sweep.read_results(os.path.join(args.workdir, f"d{w}")):
      rows = read_metrics(row["workdir"])
      lr = float(row["values"]["optim.lr"])
      steps_S, logits_SL = proxies.max_attn_logit(rows)
      run = {"lr": lr, "status": row["status"], "final": row["final_eval_loss"] if row["status"] == "ok" else None,
             "l0": proxies.initial_loss(rows), "last_step": proxies.last_step(rows), "wall_s": row["wall_s"],
             "loss": proxies.series(rows, "ce"), "log_z": proxies.series(rows, "log_z"),
             "attn": (steps_S, logits_SL)}
      out.setdefault((w, setting_of(row["values"])), {"runs": {}})["runs"][lr] = run
  for s in out.values():
    runs = s["runs"]
    s["l0"] = float(np.mean([r["l0"] for r in runs.values() if r["l0"] is not None]))
    # a crashed or refused point ("failed", "error") is no measurement: left out, and the report says so
    finals = {lr: r["final"] for lr, r in runs.items() if r["status"] in ("ok", "diverged")}
    s["missing"] = sorted(lr for lr, r in runs.items() if r["status"] not in ("ok", "diverged"))
    s["capped"] = proxies.capped_losses(finals, s["l0"])
    # over the whole grid only: a sweep stopped early leaves a setting without a sensitivity
    s["sens"] = proxies.lr_sensitivity(finals, s["l0"]) if set(finals) == set(args.lrs) else None
    s["measured"], s["grid"] = len(finals), len(args.lrs)
    s["best_lr"] = proxies.best_lr(finals)
    s["best"] = min(s["capped"].values())
    # the share of the sensitivity from learning rates above the best one (where instabilities act);
    # the rest comes from the low end of the grid, runs too slow to converge in the budget
    s["sens_high"] = (sum(v - s["best"] for lr, v in s["capped"].items() if lr > s["best_lr"]) / len(finals)
                      if s["sens"] is not None and s["best_lr"] is not None else None)
    for lr, r in runs.items():  # how far back towards ℓ0 the run ended
      r["given_back"] = (s["capped"][lr] - s["best"]) / max(s["l0"] - s["best"], 1e-12) if lr in finals else 0.0
      r["unstable"] = r["status"] == "diverged" or (
          s["best_lr"] is not None and lr > s["best_lr"] and r["given_back"] >= CLOSE)
  return out


def fmt_sens(s, high=False):
  if s["sens"] is None:
    return f"incomplete: {s['measured']} of {s['grid']} LRs"
  return f"{s['sens']:.3f}" + (f" ({s['sens_high']:.3f})" if high and s["sens_high"] is not None else "")


def attn_summary(r):
  """Max over layers of the max attention logit: first and last diagnostics step, first step above SATURATED."""
  steps_S, logits_SL = r["attn"]
  if not len(steps_S):
    return None
  m_S = logits_SL.max(1)
  above = steps_S[m_S > SATURATED]
  return {"first": float(m_S[0]), "last": float(m_S[-1]), "peak": float(m_S.max()), "last_step": int(steps_S[-1]),
          "first_step": int(steps_S[0]), "saturated_at": int(above[0]) if len(above) else None}


GAP = 0.05  # nats: two loss curves have separated


def separation_step(curve_a, curve_b, window=10):
  """First step at which run a's training loss, averaged over `window` steps, exceeds run b's by more than GAP."""
  (sa, va), (sb, vb) = curve_a, curve_b
  n = min(len(va), len(vb)) // window * window
  if not n:
    return None
  gap = va[:n].reshape(-1, window).mean(1) - vb[:n].reshape(-1, window).mean(1)
  hit = np.nonzero(gap > GAP)[0]
  return int(sa[hit[0] * window + window - 1]) if len(hit) else None


def tail_mean(curve, share=0.1):
  steps_S, v_S = curve
  if not len(steps_S):
    return float("nan")
  return float(np.mean(v_S[steps_S >= steps_S[-1] * (1 - share)]))


# ---------------------------------------------------------------- plots


def plots(data, args):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  widths, names = args.widths, [n for n, _, _ in SETTINGS]
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
    steps_S, logits_SL = r["attn"]
    return steps_S, logits_SL.max(1) if len(steps_S) else logits_SL

  grid_plot("attn_logit.png", "max attention logit (max over layers) during training; × a diverged run's last record",
            attn, "max |q·k|/√d_h", lw=1.2, marker=".", ms=3)
  grid_plot("log_z.png", "log Z (mean logsumexp of the output logits) during training", lambda r: r["log_z"], "log Z",
            log=False, mark=False, lw=0.8)
  grid_plot("train_loss.png", "training cross-entropy; × where a diverged run stopped", lambda r: r["loss"],
            "train CE", lw=0.8)

  unstable = [(w, n, lr, r) for (w, n), s in sorted(data.items()) for lr, r in sorted(s["runs"].items())
              if r["unstable"]]
  if unstable:
    cols = min(len(unstable), 4)
    rows_n = -(-len(unstable) // cols)
    fig, axes = plt.subplots(2 * rows_n, cols, figsize=(3.6 * cols, 5.2 * rows_n), squeeze=False)
    for idx, (w, n, lr, r) in enumerate(unstable):
      ax_a, ax_z = axes[2 * (idx // cols)][idx % cols], axes[2 * (idx // cols) + 1][idx % cols]
      steps_S, logits_SL = r["attn"]
      jplots.curves({f"layer {l + 1}": (steps_S, logits_SL[:, l]) for l in range(logits_SL.shape[1])}
                    if len(steps_S) else {}, ax=ax_a, logy=True, legend=False, xlabel="", ylabel="max attn logit",
                    title=f"d={w}, {n}, lr {lr:g}\n{r['status']}"
                    + (f" at step {r['last_step']}" if r["status"] == "diverged" else ""))
      ax_a.legend(fontsize=6)
      jplots.curves({"log Z": r["log_z"]}, ax=ax_z, lw=0.8, legend=False, xlabel="step", ylabel="log Z")
    for idx in range(len(unstable), rows_n * cols):
      axes[2 * (idx // cols)][idx % cols].axis("off")
      axes[2 * (idx // cols) + 1][idx % cols].axis("off")
    fig.suptitle("runs that diverged or came close: max attention logit per layer, and log Z")
    jplots.save(fig, os.path.join(args.out, "unstable_runs.png"), dpi=100)


# ---------------------------------------------------------------- report


def checks(data, widths):
  """(claim, paper, ours, evidence) computed from the measurements."""
  out = []

  def pairs(without, with_):
    return [(w, data[(w, without)]["sens"], data[(w, with_)]["sens"]) for w in widths
            if (w, without) in data and (w, with_) in data
            and None not in (data[(w, without)]["sens"], data[(w, with_)]["sens"])]

  qk = pairs("baseline", "qk-norm") + pairs("z-loss", "qk-norm + z-loss")
  if qk:
    lower = sum(b < a for _, a, b in qk)
    verdict = "agrees" if lower == len(qk) else "partly" if lower else "does not agree"
    ev = "; ".join(f"d={w}: {a:.3f} → {b:.3f}" for w, a, b in qk)
    out.append(("qk-norm lowers LR sensitivity", "yes, considerably, and more so as models grow (Fig. 1)",
                f"**{verdict}** ({lower} of {len(qk)} comparisons lower)", f"without → with qk-norm ({ev}; "
                "first the pairs without z-loss, then with)"))
  base = [(w, data[(w, "baseline")]["sens"]) for w in widths
          if (w, "baseline") in data and data[(w, "baseline")]["sens"] is not None]
  if len(base) > 1:
    grows = all(b[1] > a[1] for a, b in zip(base, base[1:]))
    out.append(("without qk-norm, LR sensitivity grows with width", "yes (Fig. 1)",
                f"**{'agrees' if grows else 'does not agree'}**", ", ".join(f"d={w}: {s:.3f}" for w, s in base)))
  rows = []
  for (w, n), s in sorted(data.items()):
    for lr, r in sorted(s["runs"].items()):
      a = attn_summary(r)
      if r["unstable"] and a and not n.startswith("qk-norm"):
        rows.append((w, n, lr, r, a))
  if rows:
    early = [x for x in rows if x[4]["saturated_at"] is not None
             and (x[3]["status"] != "diverged" or x[4]["saturated_at"] < x[3]["last_step"])]
    ev = "; ".join(f"d={w} {n} lr {lr:g} ({r['status']}"
                   + (f" at {r['last_step']}" if r["status"] == "diverged"
                      else f", {100 * r['given_back']:.0f}% back to ℓ0")
                   + f"): max logit {a['first']:.3g} at step {a['first_step']} → {a['last']:.3g} at {a['last_step']}"
                   + (f", >{SATURATED:g} from step {a['saturated_at']}" if a["saturated_at"] is not None else "")
                   for w, n, lr, r, a in rows)
    control = [f"d={w} {n} lr {s['best_lr']:g}: {attn_summary(s['runs'][s['best_lr']])['peak']:.3g}"
               for (w, n), s in sorted(data.items()) if not n.startswith("qk-norm") and s["best_lr"] is not None
               and attn_summary(s["runs"][s["best_lr"]])]
    ev += ". For comparison, the peak max logit of the best-LR runs: " + "; ".join(control)
    out.append(("without qk-norm, attention logits grow large in the runs that diverge (or come close), "
                "before they do",
                "yes: logits grow to where attention is one-hot (§3.1.1)",
                f"**{'agrees' if len(early) == len(rows) else 'partly' if early else 'does not agree'}** "
                f"({len(early)} of {len(rows)} unstable runs without qk-norm had a logit > {SATURATED:g} before "
                "they stopped or ended)", ev))
  timing = []
  for (w, n), s in sorted(data.items()):
    partner = {"baseline": "qk-norm", "z-loss": "qk-norm + z-loss"}.get(n)
    if partner is None or (w, partner) not in data:
      continue
    for lr, r in sorted(s["runs"].items()):
      q = data[(w, partner)]["runs"].get(lr)
      a = attn_summary(r)
      if r["unstable"] and q is not None and a:
        apart = separation_step(r["loss"], q["loss"])
        first = a["saturated_at"] is not None and (apart is None or a["saturated_at"] < apart)
        timing.append((first, f"d={w} {n} lr {lr:g}: max logit > {SATURATED:g} from step {a['saturated_at']}, "
                              f"loss behind {partner}'s by > {GAP:g} (10-step means) from step {apart}"))
  if timing:
    k = sum(f for f, _ in timing)
    out.append(("the attention-logit growth shows before the loss suffers", "yes (the logits grow first)",
                f"**{'agrees' if k == len(timing) else 'partly' if k else 'does not agree'}** ({k} of {len(timing)} "
                "runs: logits large before the loss fell behind the same run with qk-norm)",
                "; ".join(t for _, t in timing)))
  qk_unstable = [f"d={w} {n} lr {lr:g}" for (w, n), s in sorted(data.items()) if n.startswith("qk-norm")
                 for lr, r in sorted(s["runs"].items()) if r["unstable"]]
  peaks = {n: max((attn_summary(r) or {"peak": float("nan")})["peak"] for (w, m), s in data.items() if m == n
                  for r in s["runs"].values()) for n, _, _ in SETTINGS if any(m == n for _, m in data)}
  if peaks:
    out.append(("qk-norm keeps attention logits bounded", "yes",
                "**" + ("agrees" if all(peaks[n] < min(peaks[m] for m in peaks if not m.startswith("qk"))
                                         for n in peaks if n.startswith("qk")) else "does not agree") + "**",
                "largest max attention logit of any run: " + ", ".join(f"{n} {v:.3g}" for n, v in peaks.items())
                + ("; unstable runs with qk-norm: " + ", ".join(qk_unstable) if qk_unstable else
                   "; no run with qk-norm diverged or came close")))
  zl = []
  for w in widths:
    for without, with_ in (("baseline", "z-loss"), ("qk-norm", "qk-norm + z-loss")):
      if (w, without) in data and (w, with_) in data:
        a = np.mean([abs(tail_mean(r["log_z"])) for r in data[(w, without)]["runs"].values()])
        b = np.mean([abs(tail_mean(r["log_z"])) for r in data[(w, with_)]["runs"].values()])
        zl.append((w, without, a, b))
  if zl:
    closer = sum(b < 0.75 * a for *_, a, b in zl)  # at least a quarter of the way to 0, or it did not act
    out.append(("z-loss keeps log Z near 0", "yes (the drift it prevents comes late in training, in long runs)",
                f"**{'agrees' if closer == len(zl) else 'partly' if closer else 'not at this length'}** "
                f"({closer} of {len(zl)} comparisons moved log Z at least a quarter of the way to 0)",
                "mean over the learning rates of abs(log Z) over the last 10% of steps, without → with z-loss: "
                + "; ".join(f"d={w} {n}: {a:.2f} → {b:.2f}" for w, n, a, b in zl)))
  return out


def report(data, args, wall):
  names = [n for n, _, _ in SETTINGS]
  lrs = sorted({lr for s in data.values() for lr in s["runs"]})
  lines = ["# Small-scale proxies for instabilities: LR sensitivity with and without qk-norm and z-loss", "",
           f"Generated by `python experiments/instability/run.py` on {time.strftime('%Y-%m-%d')}"
           + (f"; the sweeps took {wall / 60:.1f} min" if wall else "") + f", {os.cpu_count()} CPU threads. "
           "Model and training: `experiments/instability/config.py` (the paper's default setup shrunk to a CPU; "
           "what differs is listed there and in the README). One seed. The paper is Wortsman et al., "
           "\"Small-scale proxies for large-scale Transformer training instabilities\", ICLR 2024 (arXiv 2309.14322).",
           "", "LR sensitivity = mean over the learning rates of min(ℓ(η), ℓ0) − ℓ*, where ℓ(η) is the final "
           "validation loss, ℓ0 the loss at initialization (the first training step's cross-entropy) and ℓ* the "
           "best final loss; a diverged run counts as ℓ0. `jaxtrain.proxies.lr_sensitivity`.", "",
           "## LR sensitivity", "", "| setting | " + " | ".join(f"d_model={w}" for w in args.widths) + " |",
           "|---|" + "---|" * len(args.widths)]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(fmt_sens(data[(w, n)], high=True) if (w, n) in data else "not run"
                                         for w in args.widths) + " |")
  lines += ["", "In brackets: the part of it from the learning rates above the best one, where the instabilities "
            "act; the rest comes from the low end of the grid, where runs are too slow to converge in the budget.",
            "", "| width | setting | ℓ0 | best LR | ℓ* | diverged (LR) | came close (LR) |",
            "|---|---|---|---|---|---|---|"]
  for (w, n), s in sorted(data.items(), key=lambda kv: (kv[0][0], names.index(kv[0][1]))):
    div = [f"{lr:g}" for lr, r in sorted(s["runs"].items()) if r["status"] == "diverged"]
    close = [f"{lr:g}" for lr, r in sorted(s["runs"].items()) if r["unstable"] and r["status"] != "diverged"]
    lines.append(f"| {w} | {n} | {s['l0']:.3f} | {s['best_lr'] or '—'} | {s['best']:.3f} | {', '.join(div) or '—'} | "
                 f"{', '.join(close) or '—'} |")
  missing = [f"d={w} {n} lr {lr:g} ({s['runs'][lr]['status']})"
             for (w, n), s in sorted(data.items()) for lr in s["missing"]]
  if missing:
    lines += ["", "**Incomplete grid**: these points did not finish and are left out of the sensitivities: "
              + ", ".join(missing) + "."]
  def lr_table(cell):
    """A markdown table, a row per (width, setting), a column per learning rate: cell(run) or — if not run."""
    rows = ["| width | setting | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|---|" + "---|" * len(lrs)]
    for (w, n), s in sorted(data.items(), key=lambda kv: (kv[0][0], names.index(kv[0][1]))):
      cells = ["—" if s["runs"].get(lr) is None else cell(s["runs"][lr]) for lr in lrs]
      rows.append(f"| {w} | {n} | " + " | ".join(cells) + " |")
    return rows

  def attn_and_log_z(r):
    steps_S, logits_SL = r["attn"]
    att = tail_mean((steps_S, logits_SL.max(1))) if len(steps_S) else float("nan")
    return f"{att:.3g} / {tail_mean(r['log_z']):.2f}"

  lines += ["", f"\"Came close\": above the best learning rate, and its final loss gave back at least {CLOSE:.0%} "
            "of the way from ℓ* to ℓ0.", "",
            "## Final validation loss", "", "Diverged runs: the step at which the loss or gradient norm became "
            "non-finite (the run stopped there).", "",
            *lr_table(lambda r: f"{r['final']:.3f}" if r["final"] is not None else
                      f"diverged @{r['last_step']}" if r["status"] == "diverged" else r["status"])]
  lines += ["", "## Attention logits and log Z", "",
            "Max attention logit = max over layers and causal pairs of |q·k|/√d_h (`layers/attn_max_logit`, every "
            "`train.diagnostics_every` steps); log Z = mean logsumexp of the output logits (`log_z`, every step); "
            "both the mean over the last 10% of the run's steps.", "",
            *lr_table(attn_and_log_z)]
  lines += ["", "(each cell: max attention logit / log Z)", "",
            "## The paper's claims, checked against what we measured", "",
            "| claim | paper | ours | evidence |", "|---|---|---|---|"]
  lines += [f"| {c} | {p} | {o} | {e} |" for c, p, o, e in checks(data, args.widths)]
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
  summary = {f"d{w}/{n}": {"l0": s["l0"], "lr_sensitivity": s["sens"], "best_lr": s["best_lr"], "best": s["best"],
                           "runs": {f"{lr:g}": {k: r[k] for k in ("status", "final", "l0", "last_step", "wall_s",
                                                                  "unstable")}
                                    for lr, r in sorted(s["runs"].items())}}
             for (w, n), s in sorted(data.items())}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=os.path.join(HERE, "results"), help="where report.md and the plots go")
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "instability"), help="the sweeps' directories")
  parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="d_model values (multiples of 32)")
  parser.add_argument("--lrs", default=",".join(f"{x:g}" for x in proxies.PAPER_LRS), help="peak learning rates")
  parser.add_argument("--parallel", type=int, default=2, help="points run at once (each pinned to its own core)")
  parser.add_argument("--report-only", action="store_true", help="skip training; report on the finished sweeps")
  parser.add_argument("--config", action="append", default=[], dest="overrides", metavar="FIELD=VALUE",
                      help="a fixed override for every run (e.g. train.steps=50 for a smoke test); repeatable")
  args = parser.parse_args()
  args.widths = [int(w) for w in args.widths.split(",")]
  args.lrs = [float(x) for x in args.lrs.split(",")]
  os.makedirs(args.out, exist_ok=True)
  # Points with the same model and learning rate-free programs (init, eval) share compiled code across processes.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.workdir, "xla_cache"))
  wall = 0.0
  if not args.report_only:
    t0 = time.time()
    try:
      run_sweeps(args)
    except sweep.Interrupted as e:  # Ctrl-C / SIGTERM: the points saved their checkpoints
      sys.exit(f"stopped by {e}: rerun the same command to resume, or --report-only to report what finished")
    wall = time.time() - t0
  data = collect(args)
  plots(data, args)
  report(data, args, wall)
  print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
