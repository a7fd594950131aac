"""What the instability study measures in its sweeps, and the per-setting numbers derived from it.

`collect` reads the finished points (their metrics.jsonl) into {(width, setting): {"runs": {lr: run}}}, each run
with its measurements and its curves (for the plots); `measurements` is what summary.json keeps of them (the
report is rebuilt from it alone); `derive` computes from either the LR sensitivity (the paper's definition,
`jaxtrain.proxies`; a diverged run counts as the loss at initialization) and which runs were unstable.
"""

from __future__ import annotations

import numpy as np

from jaxtrain import proxies, report, sweep
from jaxtrain.metrics import read_metrics

# (name, model.qk_norm, train.z_loss): the 2×2 of the paper's two mitigations, with AdamW (the paper's optimizer);
# and Muon (`optim.name=muon`, jaxtrain/muon.py) on the baseline, the optimizer as an axis of the LR sensitivity.
SETTINGS = (("baseline", False, 0.0), ("qk-norm", True, 0.0), ("z-loss", False, proxies.Z_LOSS),
            ("qk-norm + z-loss", True, proxies.Z_LOSS), ("muon", False, 0.0))
OPTIMIZER = {"muon": "muon"}  # a setting's optim.name, when not AdamW
PARTNER = {"baseline": "qk-norm", "z-loss": "qk-norm + z-loss"}  # the same run with qk-norm
# A run "came close" to diverging: above the best learning rate, and its final loss gave back at least this
# share of the way from the best loss ℓ* to ℓ0 (a diverged run gives back all of it).
CLOSE = 0.1
SATURATED = 100.0  # an attention logit this far above the others makes the softmax one-hot (e^-100 ≈ 4e-44)
GAP = 0.05  # nats: two loss curves have separated
RUN_KEYS = ("status", "final", "l0", "last_step", "wall_s", "unstable", "attn", "attn_tail", "log_z_tail", "apart")


def setting_of(values):
  opt = values.get("optim.name", "adamw")
  for name, qk, z in SETTINGS:
    if (bool(values["model.qk_norm"]) == qk and float(values["train.z_loss"]) == z
        and OPTIMIZER.get(name, "adamw") == opt):
      return name
  raise ValueError(f"no setting for {values}")


def attn_summary(steps_S, logits_SL):
  """Max over layers of the max attention logit: first and last diagnostics step, first step above SATURATED."""
  if not len(steps_S):
    return None
  m_S = logits_SL.max(1)
  above = steps_S[m_S > SATURATED]
  return {"first": float(m_S[0]), "last": float(m_S[-1]), "peak": float(m_S.max()), "last_step": int(steps_S[-1]),
          "first_step": int(steps_S[0]), "saturated_at": int(above[0]) if len(above) else None}


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


def collect(rows_by_width, lrs):
  """The finished points' measurements and curves, derived (`derive`): {seed: {(width, setting): setting}}."""
  by_seed = {}
  for w, rows in rows_by_width.items():
    for row in rows:
      if float(row["values"]["optim.lr"]) not in lrs:  # a point of another grid in the same directory
        continue
      by_seed.setdefault(row["values"].get("seed", 0), {}).setdefault(w, []).append(row)
  return {seed: _collect(rows, lrs) for seed, rows in sorted(by_seed.items())}


def _collect(rows_by_width, lrs):
  data = {}
  for w, rows in rows_by_width.items():
    for row in rows:
      metrics = read_metrics(row["workdir"])
      steps_S, logits_SL = proxies.max_attn_logit(metrics)
      curves = {"loss": proxies.series(metrics, "ce"), "log_z": proxies.series(metrics, "log_z"),
                "attn": (steps_S, logits_SL)}
      run = {"status": row["status"], "final": row["final_eval_loss"] if row["status"] == "ok" else None,
             "l0": proxies.initial_loss(metrics), "last_step": proxies.last_step(metrics), "wall_s": row["wall_s"],
             "attn": attn_summary(steps_S, logits_SL), "log_z_tail": tail_mean(curves["log_z"]),
             "attn_tail": tail_mean((steps_S, logits_SL.max(1))) if len(steps_S) else float("nan"),
             "curves": curves}
      data.setdefault((w, setting_of(row["values"])), {"runs": {}})["runs"][float(row["values"]["optim.lr"])] = run
  for (w, n), s in data.items():
    partner = data.get((w, PARTNER.get(n)), {"runs": {}})["runs"]
    for lr, r in s["runs"].items():
      q = partner.get(lr)
      r["apart"] = separation_step(r["curves"]["loss"], q["curves"]["loss"]) if q else None
    s["attn_peak"] = max((r["attn"]["peak"] for r in s["runs"].values() if r["attn"]), default=float("nan"))
    s["log_z_abs_tail"] = float(np.mean([abs(r["log_z_tail"]) for r in s["runs"].values()]))
  return derive(data, lrs)


def derive(data, lrs):
  """Adds to each setting ℓ0, the sensitivity (over the whole grid only: a sweep stopped early leaves none), the
  best learning rate and loss, and to each run how far back towards ℓ0 it ended and whether it was unstable."""
  for s in data.values():
    runs = s["runs"]
    s["l0"] = float(np.mean([r["l0"] for r in runs.values() if r["l0"] is not None]))
    # a crashed or refused point ("failed", "error") is no measurement: left out, and the report says so
    finals = {lr: r["final"] for lr, r in runs.items() if r["status"] in ("ok", "diverged")}
    s["missing"] = sorted(lr for lr, r in runs.items() if r["status"] not in ("ok", "diverged"))
    s["capped"] = proxies.capped_losses(finals, s["l0"])
    s["sens"] = proxies.lr_sensitivity(finals, s["l0"]) if set(finals) == set(lrs) else None
    s["measured"], s["grid"] = len(finals), len(lrs)
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
  return data


def measurements(datas) -> dict:
  """summary.json's measurements, per seed (`_measurements`)."""
  return {"seeds": list(datas), "by_seed": {str(seed): _measurements(d) for seed, d in datas.items()}}


def _measurements(data) -> dict:
  """Per "d<width>/<setting>" the sensitivity, the mean |log Z| at the end and per learning rate each run's; per
  setting the largest max attention logit of any of its runs (any width)."""
  settings = {f"d{w}/{n}": {"l0": s["l0"], "lr_sensitivity": s["sens"], "best_lr": s["best_lr"], "best": s["best"],
                            "log_z_abs_tail": s["log_z_abs_tail"],
                            "runs": {f"{lr:g}": {k: r[k] for k in RUN_KEYS} for lr, r in sorted(s["runs"].items())}}
              for (w, n), s in sorted(data.items())}
  peaks = {}
  for (_, n), s in sorted(data.items()):
    peaks[n] = max(peaks.get(n, s["attn_peak"]), s["attn_peak"])
  return {"settings": settings, "attn_peak": peaks}


def from_measurements(m, lrs):
  """The derived data of each seed again, from summary.json's measurements (no curves: no plots)."""
  return {seed: _from_measurements(m["by_seed"][str(seed)], lrs) for seed in m["seeds"]}


def _from_measurements(m, lrs):
  data = {}
  for key, s in m["settings"].items():
    w, n = key.split("/", 1)
    data[(int(w[1:]), n)] = {"attn_peak": m["attn_peak"][n], "log_z_abs_tail": s["log_z_abs_tail"],
                             "runs": {float(lr): dict(r) for lr, r in s["runs"].items()}}
  return derive(data, lrs)


def fmt_sens(ss, high=False):
  """A setting's sensitivity (its derived data, or a list over seeds: mean ± sd); in brackets the high LRs' part."""
  ss = ss if isinstance(ss, list) else [ss]
  short = [s for s in ss if s["sens"] is None]
  if short:
    return f"incomplete: {short[0]['measured']} of {short[0]['grid']} LRs"
  highs = [s["sens_high"] for s in ss if s["sens_high"] is not None]
  return report.cell([s["sens"] for s in ss], "{:.3f}") + (f" ({report.cell(highs, '{:.3f}')})" if high and highs
                                                            else "")


def lrs_where(ss, lrs, hit):
  """The learning rates where `hit(run)` in some seed (a setting's derived data per seed); with several seeds, in
  how many."""
  counts = {lr: sum(hit(s["runs"][lr]) for s in ss if lr in s["runs"]) for lr in lrs}
  return ", ".join(f"{lr:g}" + (f" ({k}/{len(ss)})" if len(ss) > 1 else "") for lr, k in counts.items() if k) or "—"


def final_cell(rs):
  """A final-loss cell: one run's loss or how it ended; over seeds mean ± sd of the finished, and which did not."""
  if len(rs) == 1:
    r = rs[0]
    return (f"{r['final']:.3f}" if r["final"] is not None else
            f"diverged @{r['last_step']}" if r["status"] == "diverged" else r["status"])
  bad = sorted(r["status"] for r in rs if r["final"] is None)
  return (report.cell([r["final"] for r in rs], "{:.3f}") if len(bad) < len(rs) else "") + (
      f" ({len(bad)} of {len(rs)}: {', '.join(bad)})" if bad else "")


def attn_cell(rs):
  """max attention logit / log Z at the end of the run (over seeds: mean ± sd)."""
  if len(rs) == 1:
    return f"{rs[0]['attn_tail']:.3g} / {rs[0]['log_z_tail']:.2f}"
  return (f"{report.cell([r['attn_tail'] for r in rs], '{:.3g}')} / "
          f"{report.cell([r['log_z_tail'] for r in rs], '{:.2f}')}")


def mean_view(datas):
  """One derived data over the seeds for the claims: each setting's sensitivities and |log Z| their means (None if
  a seed has none), its attention-logit peak their max."""
  if len(datas) == 1:
    return next(iter(datas.values()))
  by_key = {}
  for d in datas.values():
    for key, s in d.items():
      by_key.setdefault(key, []).append(s)
  mean = lambda ss, k: None if any(s[k] is None for s in ss) else report.mean_spread([s[k] for s in ss])[0]
  return {key: {"sens": mean(ss, "sens"), "sens_high": mean(ss, "sens_high"),
                "log_z_abs_tail": mean(ss, "log_z_abs_tail"), "attn_peak": max(s["attn_peak"] for s in ss),
                "runs": ss[0]["runs"]} for key, ss in by_key.items()}


def rows_by_width(workdir, widths):
  """Each width's finished points (its sweep in <workdir>/d<width>)."""
  return {w: sweep.read_results(f"{workdir}/d{w}") for w in widths}
