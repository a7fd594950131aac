"""What the grokking study measures in a run's history, and the report text computed from those measurements.

`measure(histories)` is everything summary.json keeps (the reports are rebuilt from it alone): per run and seed
the accuracies, Softmax Collapse, weight norm and timing (`summarize`), for the StableMax runs the late collapse in
numbers (`collapse_summary`), and one Adam step four ways on this CPU (`adam_arithmetic`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import grokking
from jaxtrain import report

pct = functools.partial(report.pct, spec=".2f")


def seeds_text(seeds, counts=None) -> str:
  """'seed 0', 'seeds 0, 1, 2 (cells: mean ± sd)', and with `counts` ({run: its number of seeds}) that differ, which
  runs have fewer."""
  if len(seeds) == 1:
    return f"seed {seeds[0]}"
  text = f"seeds {', '.join(map(str, seeds))} (cells: mean ± sd)"
  fewer = {n: k for n, k in (counts or {}).items() if k < len(seeds)}
  if fewer:
    text += "; " + ", ".join(f"{n} on {k} seed{'s' if k > 1 else ''}" for n, k in fewer.items()) + " (seed 0)"
  return text


def _per_seed(by_run, seeds):
  """(row name, entry) for each run and seed: the run's name alone with one seed."""
  return [(n if len(seeds) == 1 else f"{n}, seed {s}", e) for n, es in by_run.items() for s, e in zip(seeds, es)]


def measure(histories) -> dict:
  """summary.json's measurements from {run: {seed: history}} (runs in report order)."""
  seeds = sorted({s for hs in histories.values() for s in hs})
  sm = {n: hs for n, hs in histories.items()
        if all(h["config"]["output"] == "stablemax" and "opt/update_max" in h for h in hs.values())}
  with np.errstate(all="ignore"):
    arithmetic = adam_arithmetic() if sm else []
  return {"seeds": seeds,
          "runs": {n: [summarize(hs[s]) for s in sorted(hs)] for n, hs in histories.items()},
          "collapse": {n: [collapse_summary(hs[s]) for s in sorted(hs)] for n, hs in sm.items()},
          "collapse_seconds": sum(float(h["seconds"]) for hs in sm.values() for h in hs.values()),
          "adam_arithmetic": arithmetic}


def row(summaries) -> list[str]:
  """The report table's measured cells for one run (mean ± sd over seeds where several)."""
  col = lambda k, fmt, scale=1: report.cell([None if s[k] is None else scale * s[k] for s in summaries], fmt)
  return [str(summaries[0]["steps"]), col("train_final", "{:.2f}%", 100),
          f"{col('test_final', '{:.2f}%', 100)} / {col('test_best', '{:.2f}%', 100)}", col("test_95", "{:.0f}"),
          f"{col('sc_final', '{:.2f}%', 100)} / {col('sc_max', '{:.2f}%', 100)}; {col('sc_half', '{:.0f}')}",
          col("zero_final", "{:.2f}%", 100), f"{col('norm_first', '{:.1f}')} → {col('norm_final', '{:.1f}')}",
          col("cos_final", "{:.3f}"), col("ms_per_step", "{:.1f}"), col("seconds", "{:.0f} s")]


def first(steps, mask):
  hits = np.nonzero(mask)[0]
  return int(steps[hits[0]]) if hits.size else None


def summarize(h):
  ev, steps = h["eval"], h["step"]
  return {
      "steps": int(steps[-1]),
      "train_final": float(ev["train_accuracy"][-1]),
      "test_final": float(ev["test_accuracy"][-1]),
      "test_best": float(ev["test_accuracy"][1:].max()),  # after step 0 (chance at init)
      "test_95": first(ev["step"], ev["test_accuracy"] >= 0.95),
      "train_99": first(ev["step"], ev["train_accuracy"] >= 0.99),
      "sc_final": float(h["sc_fraction"][-1]),
      "sc_max": float(h["sc_fraction"].max()),
      "sc_first": first(steps, h["sc_fraction"] > 0),
      "sc_half": first(steps, h["sc_fraction"] > 0.5),
      "zero_final": float(h["zero_loss_fraction"][-1]),
      "norm_first": float(h["weight_norm"][0]),
      "norm_final": float(h["weight_norm"][-1]),
      "cos_final": float(h["grad_weight_cos"][-1]),
      "loss_final": float(h["loss"][-1]),
      "seconds": float(h["seconds"]),
      "ms_per_step": 1e3 * float(h["seconds_per_step"]),
  }


MIN_SEEDS = 3  # a verdict rests on at least this many seeds; fewer, and the report says so


def outcome(name, s, all_s=None):
  """(agrees, sentence) for one seed's summary `s` of run `name` against the paper's claim; `all_s` the same seed's
  other runs (softmax_f64 is compared with adamw_f32). agrees is None where the claim is not a yes/no one."""
  if name == "adamw_f32":
    fit, gen = s["train_final"] >= 0.99, s["test_best"] >= 0.5
    sc = f"SC first >50% at step {s['sc_half']}" if s["sc_half"] else f"SC reached at most {pct(s['sc_max'])}"
    return fit and not gen and s["sc_half"] is not None, f"train {pct(s['train_final'])}, {sc}, best test {pct(s['test_best'])}"
  if name.startswith("stablemax"):
    if s["test_final"] >= 0.95:
      return True, f"grokked (test ≥95% at step {s['test_95']}), SC max {pct(s['sc_max'])}"
    if s["test_best"] >= 0.9 and s["test_final"] < s["test_best"] - 0.1:
      return True, (f"grokked (best test {pct(s['test_best'])}), then fell to {pct(s['test_final'])} by step "
                    f"{s['steps']} with no Softmax Collapse (SC max {pct(s['sc_max'])}; |θ| {s['norm_first']:.0f} → "
                    f"{s['norm_final']:.0f}): the late collapse of Adam's ν flushed to zero in float32 (collapse.md)")
    rising = s["test_final"] >= s["test_best"] - 1e-9
    return False, (f"not settled within {s['steps']} steps: test {pct(s['test_final'])} "
                   f"({'still rising' if rising else 'below its best ' + pct(s['test_best'])}), SC max "
                   f"{pct(s['sc_max'])}, |θ| {s['norm_first']:.0f} → {s['norm_final']:.0f}")
  if name == "orthograd":
    ok = s["test_95"] is not None and s["test_95"] <= 1000
    return ok, (f"≥95% test at step {s['test_95']}" if s["test_95"] is not None
                else f"best test {pct(s['test_best'])} in {s['steps']} steps")
  if name == "softmax_f64":
    a = (all_s or {}).get("adamw_f32", {}).get("sc_half")
    b = s["sc_half"]
    later = b is None or (a is not None and b > a)
    return (later if a is not None else None), (
        f"SC >50% at step {b if b is not None else 'never (max ' + pct(s['sc_max']) + ')'} vs "
        f"{a if a is not None else '—'} in float32; best test {pct(s['test_best'])}")
  if name == "adamw_wd":
    return s["test_95"] is not None, (f"≥95% test at step {s['test_95']}" if s["test_95"] is not None
                                      else f"best test {pct(s['test_best'])} in {s['steps']} steps")
  return None, ""


def verdict(name, summaries, all_summaries=None) -> str:
  """The report's "Ours" line for run `name` over its seeds (`summaries`, one per seed; `all_summaries` {run: those
  of the same seeds}): a tally of the per-seed outcomes (`outcome`) that can come out agrees, partly or differs,
  marked when it rests on fewer than MIN_SEEDS seeds; then each seed's numbers."""
  all_summaries = all_summaries or {}
  per = [outcome(name, s, {n: ss[i] for n, ss in all_summaries.items() if i < len(ss)})
         for i, s in enumerate(summaries)]
  flags = [a for a, _ in per if a is not None]
  n = len(summaries)
  if name == "softmax_f64":
    f32 = [s["sc_half"] for s in all_summaries.get("adamw_f32", [])]
    f64 = [s["sc_half"] if s["sc_half"] is not None else s["steps"] for s in summaries]  # never: past the budget
    v = report.compare(f32[:n], f64, names=("float32", "float64"), fmt="{:+.0f}", lower="SC later in float64",
                       higher="SC earlier in float64")
    gen = sum(s["test_best"] >= 0.05 for s in summaries)
    head = (f"{v.label} (step of SC >50%, a run that never got there counted at its last step: {v.text}); "
            f"{gen} of {n} seeds generalized (best test ≥5%) within {summaries[0]['steps']} steps (the paper ran 80k)")
  else:
    v = report.tally(flags, yes="Agrees", partly="Partly", no="Differs")
    head = f"{v.label}: {v.text} seeds"
  if n < MIN_SEEDS:
    head += f" (on {n} seed{'s' if n > 1 else ''}: fewer than the {MIN_SEEDS} a verdict needs)"
  return head + ". " + "; ".join(f"seed {i}: {t}" if n > 1 else t for i, (_, t) in enumerate(per)) + "."


def adam_arithmetic(lr=0.01, b1=0.9, b2=0.999, eps=1e-25, t=60_000,
                    grads=(1e-10, 1e-17, 3e-18, 1e-18, 1e-20, 1e-21, 1e-22)):
  """One Adam step from m = ν = 0 at step t, four ways: rows of (g, [(ν, Δθ)] for each way).

  IEEE float32 is torch.optim.AdamW's single-tensor arithmetic (lerp, mul+addcmul, sqrt/√bc2 + ε, addcdiv) in
  numpy, which keeps subnormals as PyTorch does on CPU and GPU; "flushed" is the same with every result below
  float32's smallest normal set to 0; then optax's AdamW jitted by XLA on this CPU, in float32 and with the
  float64 state of `opt_dtype=float64`.
  """
  f32, tiny = np.float32, np.finfo(np.float32).tiny

  def torch_step(g, ftz):
    fl = (lambda x: np.where(np.abs(x) < tiny, f32(0), x).astype(f32)) if ftz else (lambda x: np.asarray(x, f32))
    g = fl(f32(g))
    m = fl((g - f32(0)) * f32(1 - b1))
    nu = fl(fl(fl(g * g) * f32(1 - b2)))
    denom = fl(fl(np.sqrt(nu) / f32(np.sqrt(1 - b2 ** t))) + f32(eps))
    return float(nu), -float(fl(f32(lr / (1 - b1 ** t)) * fl(m / denom)))

  def optax_step(g, dtype):
    c = grokking.config(lr=lr, b1=b1, b2=b2, eps=eps, opt_dtype=dtype)
    tx = grokking.make_optimizer(c)
    with grokking.precision(dtype):
      p = {"w": jnp.zeros((1,), jnp.float32)}
      st = tx.init(p)
      adam = optax.tree_utils.tree_get(st, "count")
      st = optax.tree_utils.tree_set(st, count=jnp.asarray(t - 1, adam.dtype))
      u, st = jax.jit(tx.update)({"w": jnp.full((1,), g, jnp.float32)}, st, p)
      return float(optax.tree_utils.tree_get(st, "nu")["w"][0]), float(u["w"][0])

  with np.errstate(all="ignore"):
    return [(g, [torch_step(g, False), torch_step(g, True), optax_step(g, "float32"), optax_step(g, "float64")])
            for g in grads]


def first_step(steps, mask):
  hits = np.nonzero(mask)[0]
  return (int(steps[hits[0]]), int(hits[0])) if hits.size else (None, None)


def collapse_summary(h):
  """The late collapse in numbers: the peak, the first giant Adam step (> 100·lr) and what it did."""
  ev, steps, lr = h["eval"], h["step"], h["config"]["lr"]
  best = 1 + int(np.argmax(ev["test_accuracy"][1:]))  # after step 0 (chance at init)
  out = {"p": h["config"]["p"], "lr": lr, "peak_test": float(ev["test_accuracy"][best]), "peak_step": int(ev["step"][best]),
         "loss_min": float(h["loss"].min()), "loss_min_step": int(steps[np.argmin(h["loss"])]),
         "test_final": float(ev["test_accuracy"][-1]), "train_final": float(ev["train_accuracy"][-1]),
         "update_max": float(h["opt/update_max"].max()), "nu_zero_m_nonzero_max": int(h["opt/nu_zero_m_nonzero"].max()),
         "onset_step": first_step(steps, h["opt/nu_zero_m_nonzero"] > 0)[0],
         "ftz_onset_step": first_step(steps, h["opt/grad_ftz_fraction"] > 0)[0]}
  k = int(np.argmin(h["loss"]))
  leap, j = first_step(steps[k:], h["loss"][k:] > 1e3 * h["loss"][k])
  out["leap_step"] = leap
  if leap is not None:
    j += k
    after = ev["step"] > leap
    out |= {"leap_loss": float(h["loss"][j]), "leap_norm_before": float(h["weight_norm"][j - 1]),
            "leap_norm": float(h["weight_norm"][j]),
            "leap_giant_steps_before": int(np.sum(h["opt/update_max"][:j] > 100 * lr)),
            "train_min_after_leap": float(ev["train_accuracy"][after].min()) if after.any() else None}
  jump, i = first_step(steps, h["opt/update_max"] > 100 * lr)
  out["jump_step"] = jump
  if jump is not None:
    before, after = slice(max(0, i - 1000), i), slice(i, i + 1000)
    out |= {"jump_update": float(h["opt/update_max"][i]), "jump_nu_zero_m_nonzero": int(h["opt/nu_zero_m_nonzero"][i]),
            "jump_grad_ftz_fraction": float(h["opt/grad_ftz_fraction"][i]),
            "jump_loss_before": float(h["loss"][i]), "jump_loss_after_max": float(h["loss"][after].max()),
            "jump_norm_before": float(h["weight_norm"][i]), "jump_norm_after_max": float(h["weight_norm"][after].max()),
            "jump_grad_max_before": float(h["opt/grad_max"][before].min()),
            "jump_cos_before": float(h["grad_weight_cos"][i]),
            "jumps": int(np.sum(h["opt/update_max"] > 100 * lr))}
    late = ev["step"] > jump
    if late.any():
      out["test_min_after"] = float(ev["test_accuracy"][late].min())
      out["train_min_after"] = float(ev["train_accuracy"][late].min())
  return out


def collapse_report(meta, m):
  """collapse.md's lines: StableMax's late collapse in every StableMax run's numbers, and the one-step arithmetic."""
  sm = m["collapse"]
  if not sm:
    return []
  f = lambda x, fmt=".3g": "—" if x is None else format(x, fmt)
  lines = [
      "# StableMax's late collapse: Adam's second moment flushed to zero", "",
      f"Written {meta['date_day']} by `python experiments/grokking/run.py` from the saved runs "
      f"({', '.join(sm)}; {m['collapse_seconds'] / 60:.1f} min of training on "
      f"{meta['cpus']} CPU cores, jax {meta['jax']}). MLP 2p → 200 → 200 → p (ReLU, no biases), (a + b) mod p, "
      "40% train, full batch, StableMax cross-entropy in float64, AdamW lr 0.01, β1 0.9, β2 0.999, ε 1e-25, no "
      f"weight decay (the paper's Fig. 1/4 settings), {seeds_text(m.get('collapse_seeds', m['seeds']))}. The "
      "reading is in "
      "[../README.md](../README.md).", "",
      "Paper (Fig. 1, 4; official code `LucasPrietoAl/grokking-at-the-edge-of-numerical-stability`, PyTorch): "
      "StableMax groks (a + b) mod 113 without weight decay within 80k-100k epochs while ‖θ‖ keeps growing; no late "
      "collapse is reported. PyTorch keeps float32 subnormals (unless `torch.set_flush_denormal(True)`), XLA on CPU "
      "flushes them to zero.", "",
      "Per step, after the update (for AdamW; `grokking.optim.opt_stats`): the number of Adam entries whose "
      "second moment ν is exactly 0 while the first moment m is not (their step is lr·m̂/ε with ε = 1e-25), the "
      "share of non-zero gradient entries in XLA's flush band |g| < √(1.18e-38/(1-β2)) = "
      f"{grokking.ftz_threshold(0.999):.3g} (there (1-β2)g² is below float32's smallest normal and XLA on CPU "
      "adds 0 to ν), the gradient's largest and smallest non-zero |g|, and the largest |Δθ| of the step. A *giant "
      "step* is a step with |Δθ| > 100·lr (Adam's steps are ≲ lr otherwise).", "",
      "| run | peak test (step) | loss min (step) | first |g| in flush band | first ν=0, m≠0 | first giant step: "
      "step, max |Δθ|, entries ν=0 m≠0, share of |g| in band | loss then → max in next 1k | ‖θ‖ then → max in "
      "next 1k | cos(g,θ) then | max |g| in the 1k before | giant steps | test min after / final | train final |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  leaps = []
  for n, c in _per_seed(sm, m.get("collapse_seeds", m["seeds"])):
    j = c["jump_step"] is not None
    lines.append(
        f"| {n} | {pct(c['peak_test'])} ({c['peak_step']}) | {f(c['loss_min'], '.2g')} ({c['loss_min_step']}) | "
        f"{c['ftz_onset_step'] or '—'} | {c['onset_step'] or '—'} | "
        + (f"{c['jump_step']}, {f(c['jump_update'])}, {c['jump_nu_zero_m_nonzero']}, "
           f"{pct(c['jump_grad_ftz_fraction'])} | {f(c['jump_loss_before'], '.2g')} → "
           f"{f(c['jump_loss_after_max'], '.2g')} | {c['jump_norm_before']:.0f} → {c['jump_norm_after_max']:.0f} | "
           f"{c['jump_cos_before']:.2f} | {f(c['jump_grad_max_before'], '.2g')} | {c['jumps']} | "
           f"{pct(c.get('test_min_after'))} / {pct(c['test_final'])} |"
           if j else f"none (max |Δθ| {f(c['update_max'])}) | — | — | — | — | 0 | — / {pct(c['test_final'])} |")
        + f" {pct(c['train_final'])} |")
    leaps.append(f"| {n} | {f(c['loss_min'], '.2g')} ({c['loss_min_step']}) | " + (
        f"{c['leap_step']} | {f(c['leap_loss'], '.2g')} | {c['leap_norm_before']:.0f} → {c['leap_norm']:.0f} | "
        f"{c['leap_giant_steps_before']} | {pct(c['train_min_after_leap'])} |"
        if c["leap_step"] else "none | — | — | — | — |"))
  lines += ["", "The loss leap: the first step after the loss minimum where the loss is over 1000× that minimum.", "",
            "| run | loss min (step) | leap step | loss there | ‖θ‖ step before → there | giant steps before it | "
            "train acc min after |", "|---|---|---|---|---|---|---|"] + leaps
  lines += ["", "One Adam step (lr 0.01, β1 0.9, β2 0.999, ε 1e-25, step 60000, from m = ν = 0) on one weight with "
            "gradient g: ν after the step and the step Δθ. *IEEE float32* is torch.optim.AdamW's arithmetic in numpy "
            "(subnormals kept, as PyTorch does); *flushed* is the same with every result below float32's smallest "
            "normal set to 0; *XLA float32* is `optax.adamw` jitted on this CPU; *XLA float64 state* is "
            "`opt_dtype=float64`.", "",
            "| g | IEEE float32: ν, Δθ | flushed float32: ν, Δθ | XLA float32: ν, Δθ | XLA float64 state: ν, Δθ |",
            "|---|---|---|---|---|"]
  for g, ways in m["adam_arithmetic"]:
    lines.append(f"| {g:.0e} | " + " | ".join(f"{nu:.3g}, {d:.3g}" for nu, d in ways) + " |")
  lines.append("")
  for p_ in sorted({c["p"] for cs in sm.values() for c in cs}, reverse=True):  # the plots, one per task
    lines += [f"![collapse mod {p_}](collapse_p{p_}.png)", ""]
  return lines
