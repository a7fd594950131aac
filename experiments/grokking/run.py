"""Grokking at the edge of numerical stability, reproduced on modular addition in one command.

  python experiments/grokking/run.py --out experiments/grokking/results
  python experiments/grokking/run.py --out /tmp/g --runs orthograd,adamw_f32 --scale 0.1   # a quick look
  python experiments/grokking/run.py --out experiments/grokking/results --report-only

Trains the paper's bias-free ReLU MLP (226 -> 200 -> 200 -> 113) full-batch on
(a + b) mod 113 with 40% of the pairs in train, five ways, and StableMax's late
collapse four ways (RUNS), each saved to `<out>/runs/<name>.npz` (a finished run
with the same settings is reused; the long runs train in saved segments, so a
killed one continues), then writes `<out>/report.md` (the five), `collapse.md`
(StableMax with float32 vs float64 Adam state: the peak, the collapse after it,
Adam's second moment flushed to zero) and PNG plots. The verdicts in the report
are computed from the measurements against the paper's claims (Prieto et al.,
arXiv 2501.04697) and the spec's numpy re-implementation ([measured], in
`../shared/research/ln_stablemax.md` §7), not written in advance.

Budget, estimated for an idle 2-core CPU from the per-step costs measured there
(12-13 ms per full-batch step at p = 113; p = 31 is ~4× cheaper): the five runs
≈5 min, StableMax at p = 113 to 80k steps (the paper's Fig. 1 length, past the
peak at ~63k and the collapse after it) with float32 and with float64 Adam
state ≈17 min each, the p = 31 runs ≈12 min together: under an hour. `stablemax_p31_adam64_from*` continue the float32 p = 31
run's saved state with float64 Adam state (needs `stablemax_p31` first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import logging
import os
import pickle
import platform
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import grokking  # noqa: E402
from jaxtrain import plots as jplots  # noqa: E402

log = logging.getLogger("jaxtrain")

# name: (label, config overrides, steps, log_every). Common: add mod 113, 40% train, MLP, full batch,
# constant lr 0.01, no weight decay, Adam eps 1e-25, float32 softmax: the official code's defaults.
RUNS = {
    "adamw_f32": ("AdamW, float32 softmax", dict(b2=0.99), 8_000, 200),
    "stablemax": ("AdamW, StableMax (loss in float64)", dict(output="stablemax", loss_dtype="float64", b2=0.999),
                  80_000, 250),
    "stablemax_adam64": ("AdamW with float64 state, StableMax (loss in float64)",
                         dict(output="stablemax", loss_dtype="float64", b2=0.999, opt_dtype="float64"), 80_000, 250),
    "stablemax_p31": ("AdamW, StableMax (loss in float64), (a + b) mod 31",
                      dict(output="stablemax", loss_dtype="float64", b2=0.999, p=31), 80_000, 100),
    "stablemax_p31_adam64": ("AdamW with float64 state, StableMax (loss in float64), (a + b) mod 31",
                             dict(output="stablemax", loss_dtype="float64", b2=0.999, p=31, opt_dtype="float64"),
                             80_000, 100),
    "stablemax_p31_ieee_from52k": (
        "stablemax_p31 continued from step 52k with AdamW in float32 with subnormals kept (PyTorch's arithmetic)",
        dict(output="stablemax", loss_dtype="float64", b2=0.999, p=31, opt_dtype="float32_ieee"), 80_000, 100),
    "orthograd": ("⊥AdamW, float32 softmax", dict(orthograd=True, b2=0.999, eps=1e-8), 1_000, 25),
    "softmax_f64": ("AdamW, float64 softmax", dict(loss_dtype="float64", b2=0.99), 8_000, 200),
    "adamw_wd": ("AdamW + weight decay 1.0, float32 softmax", dict(b2=0.99, weight_decay=1.0), 4_000, 100),
}

# What the paper claims (qualitative; ln_stablemax.md §4.4) and what the spec's numpy re-implementation
# measured (§7, seed 0, single run) for the same settings.
PAPER = {
    "adamw_f32": "fits the train set, reaches SC, learning stops, no grokking (Fig. 1-2)",
    "stablemax": "grokks without weight decay while the weight norm keeps growing (Fig. 1, 4; 80k epochs)",
    "stablemax_adam64": "as stablemax; the official PyTorch code keeps float32 subnormals in Adam's state",
    "orthograd": "generalizes in hundreds of epochs, no memorization plateau (Fig. 1: 300 epochs; issue #11: "
                 "100.00% test)",
    "softmax_f64": "delays SC and allows some delayed generalization (Fig. 1-2; 80k epochs; hyperparameter-"
                   "sensitive per issue #4)",
    "adamw_wd": "weight decay generalizes, in part because it counters NLM (sec. 5)",
}
SPEC_MEASURED = {
    "adamw_f32": "test ≤0.57% for 20k steps; SC 0.06% @1k, 12% @2k, 33% @5k, first >50% @7k (84.9%); "
                 "|θ| 122.9 @1k, 172.7 @7k",
    "stablemax_adam64": "as stablemax (numpy keeps subnormals)",
    "stablemax": "test 0.17% @6k, 1.49% @20k, 6.11% @30k, 20.3% @40k, 78.2% @60k (still rising); SC n/a; "
                 "|θ| 905 @20k, 1640 @30k",
    "orthograd": "test 96.7% @100, 100% @150; |θ| 13.5 -> 53",
    "softmax_f64": "test ≤0.22% for 20k steps; SC 0 through 3k, 0.06% @5k, first >50% @12k; |θ| 164 @5k",
    "adamw_wd": "not measured",
}


def run_config(name, args):
  label, overrides, steps, log_every = RUNS[name]
  steps = max(log_every, int(round(steps * args.scale / log_every)) * log_every)
  return grokking.config(steps=steps, log_every=log_every, data_dir=args.data_dir, seed=args.seed,
                         data_seed=args.seed, train_fraction=0.4, bias=False, **overrides)


def train_all(args):
  data = {}
  for name in sorted(args.runs, key=lambda n: (n in BRANCH_OF, RUNS[n][2])):  # the short runs first, branches last
    c = run_config(name, args)
    path = os.path.join(args.out, "runs", f"{name}.npz")
    parent, start = BRANCH_OF.get(name, (None, 0))
    start = int(round(start * args.scale / c.log_every)) * c.log_every
    if os.path.exists(path) and json.loads(str(np.load(path)["config"])) == c.to_dict():
      log.info("%s: reusing %s", name, path)
      continue
    key = (c.op, c.p, c.train_fraction, c.data_seed)
    data[key] = data[key] if key in data else grokking.load_data(c)
    state = None
    if parent:
      log.info("%s: continuing %s from step %d", name, parent, start)
      state = load_state(args.out, parent, start)
    log.info("%s: %s, %d steps", name, RUNS[name][0], c.steps)
    every = SAVE_EVERY.get(name)
    h = train_in_segments(args.out, name, c, data[key], state, every) if every else grokking.train(c, data[key])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = {k: v for k, v in h.items() if k not in ("eval", "states")}
    flat.update({f"eval/{k}": v for k, v in h["eval"].items()})
    np.savez_compressed(path, config=json.dumps(c.to_dict()), parent=json.dumps([parent, start]), **flat)
    log.info("%s: %.0f s (%.1f ms/step)", name, h["seconds"], 1e3 * h["seconds_per_step"])


def train_in_segments(out, name, c, data, state, every):
  """Trains `c` in segments of `every` steps, each saved (history and full state) as it ends; a killed run
  continues from its last finished segment. Returns the whole history."""
  os.makedirs(os.path.join(out, "runs"), exist_ok=True)
  start = 0 if state is None else int(state["step"])
  parts, key = [], json.dumps(c.to_dict())
  ends = [e for e in range(start + every, c.steps, every)] + [c.steps]
  for end in ends:
    part = os.path.join(out, "runs", f"{name}.part{end}.pkl")
    if os.path.exists(part):
      with open(part, "rb") as f:
        saved = pickle.load(f)
      if saved["config"] == key:
        log.info("%s: reusing steps to %d", name, end)
        parts.append(saved["history"])
        state = load_state(out, name, end)
        continue
    with c.unlocked():
      c.steps = end
    h = grokking.train(c, data, state=state, save_at=(end,))
    state = h.pop("states")[end]
    save_states(out, name, {end: state})
    with open(part, "wb") as f:
      pickle.dump({"config": key, "history": h}, f)
    parts.append(h)
  with c.unlocked():
    c.steps = end
  h = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("eval", "seconds", "seconds_per_step")}
  h["eval"] = {k: np.concatenate([parts[0]["eval"][k]] + [p["eval"][k][1:] for p in parts[1:]])  # step 0 once
               for k in parts[0]["eval"]}
  h["seconds"] = sum(p["seconds"] for p in parts)
  h["seconds_per_step"] = sum(p["seconds_per_step"] * len(p["step"]) for p in parts) / len(h["step"])
  return h


# Runs that continue another's saved state: name -> (parent, step).
BRANCH_OF = {"stablemax_p31_ieee_from52k": ("stablemax_p31", 52_000)}

# Long runs train in segments of this many steps, each saved with its full state (params, Adam's m and ν), so a
# killed run continues and a branch can start from any segment's end.
SAVE_EVERY = {"stablemax": 2_000, "stablemax_adam64": 2_000, "stablemax_p31": 4_000, "stablemax_p31_adam64": 4_000,
              "stablemax_p31_ieee_from52k": 4_000}


def save_states(out, name, states):
  for step, state in states.items():
    with open(os.path.join(out, "runs", f"{name}.state{step}.pkl"), "wb") as f:
      pickle.dump(state, f)


def load_state(out, name, step):
  path = os.path.join(out, "runs", f"{name}.state{step}.pkl")
  if not os.path.exists(path):
    raise SystemExit(f"{path} is missing: train {name} first (at --scale 1, whose states are saved every "
                     f"{SAVE_EVERY.get(name)} steps)")
  with open(os.path.join(out, "runs", f"{name}.state{step}.pkl"), "rb") as f:
    return pickle.load(f)


def load_run(out, name):
  z = np.load(os.path.join(out, "runs", f"{name}.npz"))
  h = {k: z[k] for k in z.files if not k.startswith("eval/") and k != "config"}
  h["eval"] = {k[5:]: z[k] for k in z.files if k.startswith("eval/")}
  h["config"] = json.loads(str(z["config"]))
  return h


# ---------------------------------------------------------------- the report


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


def pct(x):
  return "—" if x is None else f"{100 * x:.2f}%"


def verdict(name, s, all_s):
  """One plain sentence: does this run agree with the paper's claim?"""
  if name == "adamw_f32":
    fit, gen = s["train_final"] >= 0.99, s["test_best"] >= 0.5
    sc = f"SC first >50% at step {s['sc_half']}" if s["sc_half"] else f"SC reached at most {pct(s['sc_max'])}"
    if fit and not gen and s["sc_half"]:
      return f"Agrees: train fit, {sc}, best test {pct(s['test_best'])}: no generalization."
    return (f"Differs: train {pct(s['train_final'])}, {sc}, best test {pct(s['test_best'])} "
            "(the claim is fit + collapse + no generalization).")
  if name.startswith("stablemax"):
    rising = s["test_final"] >= s["test_best"] - 1e-9
    if s["test_final"] >= 0.95:
      return f"Agrees: grokked (test ≥95% at step {s['test_95']}) with no weight decay and SC {pct(s['sc_max'])}."
    if s["test_best"] >= 0.9 and s["test_final"] < s["test_best"] - 0.1:
      return (f"Grokked as the paper says (best test {pct(s['test_best'])}), then fell to {pct(s['test_final'])} "
              f"by step {s['steps']} (train {pct(s['train_final'])}, |θ| {s['norm_first']:.0f} -> "
              f"{s['norm_final']:.0f}), with no Softmax Collapse (SC max {pct(s['sc_max'])}): the late collapse of "
              "Adam's ν flushed to zero in float32 (collapse.md); the float64-state run does not fall.")
    return (f"Not settled within {s['steps']} steps: test {pct(s['test_final'])} "
            f"({'still rising' if rising else 'below its best ' + pct(s['test_best'])}), no collapse "
            f"(SC max {pct(s['sc_max'])}), |θ| {s['norm_first']:.0f} -> {s['norm_final']:.0f}. The paper "
            "ran 80k epochs; the spec's run was at 6% test at 30k, 20% at 40k and 78% at 60k.")
  if name == "orthograd":
    if s["test_95"] is not None and s["test_95"] <= 1000:
      return f"Agrees: ≥95% test at step {s['test_95']} (evaluated every 25 steps), no weight decay."
    return f"Differs: best test {pct(s['test_best'])} in {s['steps']} steps."
  if name == "softmax_f64":
    f32 = all_s.get("adamw_f32")
    delayed = ""
    if f32:
      a, b = f32["sc_half"], s["sc_half"]
      if b is None and a is not None:
        delayed = (f"SC is delayed: float32 passed 50% at step {a}, float64 had at most {pct(s['sc_max'])} "
                   f"by step {s['steps']} (first non-zero at {s['sc_first']}). ")
      elif a is not None and b is not None:
        delayed = f"SC >50% at step {b} vs {a} in float32 ({'later' if b > a else 'not later'}). "
    gen = ("some generalization" if s["test_best"] >= 0.05 else "no generalization")
    return f"{delayed}Best test {pct(s['test_best'])}: {gen} within {s['steps']} steps (the paper ran 80k)."
  if name == "adamw_wd":
    if s["test_95"] is not None:
      return f"Agrees: ≥95% test at step {s['test_95']}; |θ| {s['norm_first']:.0f} -> {s['norm_final']:.0f}."
    return f"Not within {s['steps']} steps: best test {pct(s['test_best'])}."
  return ""


def plot(runs, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = dict(zip(RUNS, plt.cm.tab10.colors))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  (acc, sc), (norm, cos) = axes
  for name, h in runs.items():
    col, label, ev = colors[name], RUNS[name][0], h["eval"]
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
    ax.set(xlabel="step", ylabel="%", ylim=(-3, 103), title=RUNS[name][0])
    right = ax.twinx()
    jplots.curves({"‖θ‖ (right)": (h["step"], h["weight_norm"])}, ax=right, colors="k", lw=1, max_points=2000,
                  legend=False, ylabel="‖θ‖")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    jplots.save(fig, os.path.join(out, f"{name}.png"), dpi=80)


# ---------------------------------------------------------------- StableMax's late collapse: Adam's ν in float32


def adam_arithmetic(lr=0.01, b1=0.9, b2=0.999, eps=1e-25, t=60_000,
                    grads=(1e-10, 1e-17, 3e-18, 1e-18, 1e-20, 1e-21, 1e-22)):
  """One Adam step from m = ν = 0 at step t, four ways: rows of (g, [(ν, Δθ)] for each way).

  IEEE float32 is torch.optim.AdamW's single-tensor arithmetic (lerp, mul+addcmul, sqrt/√bc2 + ε, addcdiv) in
  numpy, which keeps subnormals as PyTorch does on CPU and GPU; "flushed" is the same with every result below
  float32's smallest normal set to 0; then optax's AdamW jitted by XLA on this CPU, in float32 and with the
  float64 state of `opt_dtype=float64`.
  """
  import jax.numpy as jnp
  import optax
  from jaxtrain import losses
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
    with losses._precision(dtype):
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
  out = {"peak_test": float(ev["test_accuracy"][best]), "peak_step": int(ev["step"][best]),
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


def plot_collapse(runs, out, fname, title):
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
  grad.axhline(grokking.ftz_threshold(b2), color="k", lw=0.8, ls="--", label="XLA flush: (1-β2)g² < 1.2e-38", zorder=5)
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


def collapse_report(runs, out):
  """The report's section on StableMax's late collapse: the numbers of every StableMax run, the one-step
  arithmetic, and the plots."""
  sm = {n: h for n, h in runs.items() if h["config"]["output"] == "stablemax" and "opt/update_max" in h}
  if not sm:
    return []
  f = lambda x, fmt=".3g": "—" if x is None else format(x, fmt)
  lines = [
      "# StableMax's late collapse: Adam's second moment flushed to zero", "",
      f"Written {datetime.date.today()} by `python experiments/grokking/run.py` from the saved runs "
      f"({', '.join(sm)}; {sum(float(h['seconds']) for h in sm.values()) / 60:.1f} min of training on "
      f"{os.cpu_count()} CPU cores, jax {jax.__version__}). MLP 2p → 200 → 200 → p (ReLU, no biases), (a + b) mod p, "
      "40% train, full batch, StableMax cross-entropy in float64, AdamW lr 0.01, β1 0.9, β2 0.999, ε 1e-25, no "
      "weight decay (the paper's Fig. 1/4 settings), seed 0. The reading is in [../README.md](../README.md).", "",
      "Paper (Fig. 1, 4; official code `LucasPrietoAl/grokking-at-the-edge-of-numerical-stability`, PyTorch): "
      "StableMax groks (a + b) mod 113 without weight decay within 80k-100k epochs while ‖θ‖ keeps growing; no late "
      "collapse is reported. PyTorch keeps float32 subnormals (unless `torch.set_flush_denormal(True)`), XLA on CPU "
      "flushes them to zero.", "",
      "Per step, after the update (for AdamW; `jaxtrain.grokking.opt_stats`): the number of Adam entries whose "
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
  for n, h in sm.items():
    c = collapse_summary(h)
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
  for g, ways in adam_arithmetic():
    lines.append(f"| {g:.0e} | " + " | ".join(f"{nu:.3g}, {d:.3g}" for nu, d in ways) + " |")
  lines.append("")
  by_task = {}
  for n, h in sm.items():
    by_task.setdefault(h["config"]["p"], {})[n] = h
  for p_, group in sorted(by_task.items(), reverse=True):
    fname = f"collapse_p{p_}.png"
    plot_collapse(group, out, fname, f"StableMax, AdamW lr {next(iter(group.values()))['config']['lr']:g}, "
                  f"ε 1e-25, (a + b) mod {p_}: Adam state float32 (XLA), float64, float32 with subnormals (PyTorch)")
    lines += [f"![collapse mod {p_}]({fname})", ""]
  return lines


def report(args):
  names = [n for n in RUNS if os.path.exists(os.path.join(args.out, "runs", f"{n}.npz"))]
  if not names:  # never overwrite a committed report with an empty one
    raise SystemExit(f"no saved runs in {os.path.join(args.out, 'runs')}: run without --report-only first")
  runs = {n: load_run(args.out, n) for n in names}
  collapse = collapse_report(runs, args.out)
  if collapse:
    with open(os.path.join(args.out, "collapse.md"), "w") as f:
      f.write("\n".join(collapse) + "\n")
    log.info("wrote %s", os.path.join(args.out, "collapse.md"))
  runs = {n: h for n, h in runs.items() if n in PAPER}
  if not runs:  # only the collapse study's runs: keep the committed report.md
    return
  summaries = {n: summarize(h) for n, h in runs.items()}
  plot(runs, args.out)
  total = sum(s["seconds"] for s in summaries.values())
  lines = [
      "# Grokking at the edge of numerical stability: our measurements",
      "",
      "MLP 226 → 200 → 200 → 113 (ReLU, no biases, U(±1/√fan_in) init) on (a + b) mod 113, all 12769 pairs, "
      "40% train (5107) / 60% test (7662), full batch (one step = one epoch), constant learning rate 0.01, "
      "no weight decay unless stated, Adam ε 1e-25 unless stated (the official defaults), seed 0. "
      "Train metrics per step from that step's forward pass; SC fraction = share of train examples whose "
      "Σ exp(z − max z) rounds to exactly 1 in the loss's dtype (for StableMax: Σ s(z) rounds to s(max z)). "
      "Accuracies are evaluated every `eval` steps after the update.",
      "",
      f"Budget: {total / 60:.1f} min of wall time for the {len(runs)} runs, compile included "
      f"(report written {datetime.date.today()} on {os.cpu_count()} CPU cores, {platform.machine()}, "
      f"jax {jax.__version__}). Produced by `python experiments/grokking/run.py --out experiments/grokking/results`.",
      "",
      "| run | settings | steps | eval | train acc (final) | test acc (final / best) | step ≥95% test | "
      "SC frac (final / max; first >50%) | zero-loss (final) | ‖θ‖ (start → end) | cos(g,θ) end | "
      "ms/step | wall |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for n, s in summaries.items():
    cfg = runs[n]["config"]
    settings = (f"{cfg['optimizer']}{' + ⊥Grad' if cfg['orthograd'] else ''}, {cfg['output']} "
                f"{cfg['loss_dtype']}, β2 {cfg['b2']}, ε {cfg['eps']:g}, wd {cfg['weight_decay']:g}"
                f"{', Adam state ' + cfg['opt_dtype'] if cfg.get('opt_dtype', 'float32') != 'float32' else ''}"
                f"{'' if cfg['p'] == 113 else ', mod ' + str(cfg['p'])}")
    lines.append(
        f"| {n} | {settings} | {s['steps']} | {cfg['log_every']} | {pct(s['train_final'])} | "
        f"{pct(s['test_final'])} / {pct(s['test_best'])} | {s['test_95'] or '—'} | "
        f"{pct(s['sc_final'])} / {pct(s['sc_max'])}; {s['sc_half'] or '—'} | {pct(s['zero_final'])} | "
        f"{s['norm_first']:.1f} → {s['norm_final']:.1f} | {s['cos_final']:.3f} | {s['ms_per_step']:.1f} | "
        f"{s['seconds']:.0f} s |")
  lines += ["", "## Against the paper and the spec's numpy re-implementation", ""]
  for n, s in summaries.items():
    lines += [f"### {n}: {RUNS[n][0]}", "",
              f"- Paper: {PAPER[n]}.",
              f"- Spec [measured] (numpy, seed 0): {SPEC_MEASURED[n]}.",
              f"- Ours: {verdict(n, s, summaries)}", ""]
  lines += ["StableMax's late collapse (after its peak, with float32 Adam state on XLA's CPU) and its cause: "
            "[collapse.md](collapse.md).", ""]
  lines += ["## Plots", "", "![summary](summary.png)", ""]
  lines += [f"![{n}]({n}.png)" for n in runs]
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summaries, f, indent=1)
  log.info("wrote %s", os.path.join(args.out, "report.md"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="experiments/grokking/results")
  parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
  parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps (1 = the budget)")
  parser.add_argument("--seed", type=int, default=0, help="init and split seed")
  parser.add_argument("--data_dir", default="~/.cache/jaxtrain/tensorflow_datasets")
  parser.add_argument("--report-only", action="store_true", help="rewrite the report from saved runs")
  args = parser.parse_args()
  args.runs = [r for r in args.runs.split(",") if r]
  unknown = set(args.runs) - set(RUNS)
  if unknown:
    parser.error(f"unknown runs {sorted(unknown)}; choose from {list(RUNS)}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  os.makedirs(args.out, exist_ok=True)
  t = time.time()
  if not args.report_only:
    train_all(args)
  report(args)
  log.info("done in %.0f s", time.time() - t)


if __name__ == "__main__":
  main()
