"""Growing a trained small model into the target, against the target from scratch, at equal total FLOPs.

  python experiments/growth/run.py                        # the study (CPU size: 8 runs of ~14 min, 2 at a time)
  python experiments/growth/run.py --size tiny --out /tmp/growth_tiny --runs-dir /tmp/growth_tiny/runs   # smoke
  python experiments/growth/run.py --size gpu             # one GPU: a 16-layer d 512 target (not run yet)
  python experiments/growth/run.py --report-only          # rewrite the report from the finished runs
  python experiments/growth/run.py --runs +copy           # the core runs and G_stack with opt=copy, lr=continue

"Stacking Your Transformers" (Du et al., NeurIPS 2024, arXiv 2405.15319) and "Composable Function-preserving
Expansions for Transformer Architectures" (Gesmundo & Maile 2023, arXiv 2308.06103); spec:
shared/research/growth.md §1.4 (sweep d/D at small scale), §1.6 (the speed-up and the paper's numbers), §1.7
(what a small reproduction can check), §4 (optimizer and schedule at growth). Every run (config.py: `<size>,<run>`)
is one `python -m jaxtrain` in its own workdir `<runs-dir>/<run>` and ends at the same total FLOPs (the metrics'
`total_flops`, base training included):

  scratch           the target (cpu: 8 layers, d 128) from scratch, S steps: the budget C
  stack4_x{10,25,50} G_stack (G↑direct), g = 4: the 2-layer base trained on x of the scratch run's tokens (d/D)
  stack2_x25        G_stack, g = 2 (a 4-layer base)
  zero4_x25         G↑zero, g = 4: each base layer followed by 3 copies whose W_O, W_down are 0 (function-preserving)
  random4_x25       G↑random: the 2-layer base with 6 fresh layers on top
  width_x25         Gesmundo & Maile in width: d 64 -> 128 (expand_d_model), 2 -> 4 heads (add_heads), MLP 192 -> 384
                    (expand_mlp) at three consecutive steps: the exact target shape, every step function-preserving

Speed-up at equal loss, the paper's definition: speedup(L*) = C_scratch(L*) / C_grow(L*) - 1, C(L*) the FLOPs at
which a run's loss first reaches L* (linear interpolation between evaluations; a grown run's curve from its last
growth event on). The report gives it on the evaluation loss (fixed validation batches) and on the smoothed
training loss, at the scratch run's final loss and at its losses after 50% and 75% of the budget. Verdicts on the
paper's claims are computed from the measurements, never tuned to match. A finished run (`result.json` status ok)
is reused; a killed one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

CHILD_PLATFORMS = os.environ.get("JAX_PLATFORMS")  # the runs get the platform the caller chose (or JAX's default)
os.environ["JAX_PLATFORMS"] = "cpu"  # this process only does FLOP arithmetic: it must not hold the accelerator
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxtrain import growth, sweep  # noqa: E402
from jaxtrain import plots as jplots  # noqa: E402
from jaxtrain.metrics import read_metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")
_spec = importlib.util.spec_from_file_location("growth_study_config", CONFIG)
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)

LABELS = {
    "scratch": "scratch (target)",
    "stack4_x10": "G_stack g=4, d/D=10%", "stack4_x25": "G_stack g=4, d/D=25%", "stack4_x50": "G_stack g=4, d/D=50%",
    "stack2_x25": "G_stack g=2, d/D=25%", "zero4_x25": "G↑zero g=4, d/D=25%", "random4_x25": "G↑random, d/D=25%",
    "width_x25": "width FP (Gesmundo), d/D=25%", "stack4_x25_copy": "G_stack g=4, d/D=25%, opt=copy, lr=continue",
}
COLORS = {"scratch": "black", "stack4_x10": "#9ecae1", "stack4_x25": "#3182bd", "stack4_x50": "#08306b",
          "stack2_x25": "tab:purple", "zero4_x25": "tab:green", "random4_x25": "tab:red", "width_x25": "tab:orange",
          "stack4_x25_copy": "tab:cyan"}
# The paper's speed-ups (1.1B target, ~100B tokens, d = 10B; 7B, 300B tokens: growth.md §1.6); our run -> theirs.
PAPER = {"stack4": ("G↑direct (G_stack), 1.1B", 49.1), "zero4": ("G↑zero, 1.1B", 46.6),
         "random4": ("G↑random, 1.1B", -25.7), "stack4_7b": ("G_stack, 7B (300B tokens)", 54.6),
         "width": ("G→direct / G→zero / G→random, 1.1B (width)", "−0.7 / −17.9 / −13.8")}
SMOOTH = 5  # the training-loss curve: a centred mean over this many logged rows (each already a mean of log_every)


# ---------------------------------------------------------------- running


def workdir(args, run):
  return os.path.join(args.runs_dir, run)


def result_of(args, run) -> dict | None:
  try:
    with open(os.path.join(workdir(args, run), "result.json")) as fh:
      return json.load(fh)
  except (OSError, ValueError):
    return None


def start(args, run, cpus):
  d = workdir(args, run)
  os.makedirs(d, exist_ok=True)
  cmd = [sys.executable, "-m", "jaxtrain", f"--config={CONFIG}:{args.size},{run}", f"--workdir={d}"]
  env = dict(os.environ)
  if CHILD_PLATFORMS is None:
    env.pop("JAX_PLATFORMS", None)
  else:
    env["JAX_PLATFORMS"] = CHILD_PLATFORMS
  log = open(os.path.join(d, "log.txt"), "a", encoding="utf-8")
  log.write(f"=== growth study: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"
            f"{'' if cpus is None else f' on cores {sorted(cpus)}'}: {' '.join(cmd)}\n")
  log.flush()
  setup = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
  p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                       preexec_fn=setup)
  return p, log, time.time()


def last_step(d) -> int:
  try:
    return max((r["step"] for r in read_metrics(d)), default=0)
  except FileNotFoundError:
    return 0


def run_all(args, runs):
  """Runs the unfinished `runs`, `args.parallel` at a time (on CPU each pinned to its own cores), in order."""
  todo = [r for r in runs if (result_of(args, r) or {}).get("status") != "ok"]
  for r in runs:
    if r not in todo:
      print(f"{r}: finished before, reused", flush=True)
  slots = [None]
  if args.parallel > 1:
    cpus = sorted(os.sched_getaffinity(0))
    k = max(1, len(cpus) // args.parallel)
    slots = [set(cpus[i * k:(i + 1) * k]) for i in range(args.parallel)]
  free, running = list(range(len(slots))), {}
  try:
    while todo or running:
      while todo and free:
        r, i = todo.pop(0), free.pop(0)
        p, log, t0 = start(args, r, slots[i])
        running[r] = (p, log, t0, i)
        print(f"{r}: started ({LABELS.get(r, r)})", flush=True)
      time.sleep(1.0)
      for r, (p, log, t0, i) in list(running.items()):
        if p.poll() is None:
          continue
        log.close()
        del running[r]
        free.append(i)
        status = {0: "ok", 3: "diverged", 2: "error"}.get(p.returncode, "failed")
        if status == "ok" and last_step(workdir(args, r)) < cfg.get_config(f"{args.size},{r}").train.steps:
          status = "stopped"  # a signal: the trainer saved a checkpoint and exited 0; a rerun resumes it
        res = {"status": status, "returncode": p.returncode, "wall_s": time.time() - t0,
               "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        with open(os.path.join(workdir(args, r), "result.json"), "w") as fh:
          json.dump(res, fh, indent=1)
        print(f"{r}: {status} in {res['wall_s'] / 60:.1f} min", flush=True)
  finally:
    for p, log, _, _ in running.values():  # interrupted: the runs save a checkpoint on SIGTERM; a rerun resumes
      p.terminate()
      p.wait()
      log.close()


# ---------------------------------------------------------------- measurements


def last_per_step(rows):
  """One row per step, the last written (a resumed run repeats the steps after its checkpoint)."""
  return [r for _, r in sorted({r["step"]: r for r in rows}.items())]


def measure_run(args, run) -> dict | None:
  d = workdir(args, run)
  try:
    rows = read_metrics(d)
  except FileNotFoundError:
    return None
  c = cfg.get_config(f"{args.size},{run}")
  phases = growth.plan(c)
  F = lambda s: growth.total_flops(phases, s)
  train = last_per_step([r for r in rows if "loss" in r and "eval_loss" not in r])
  evals = last_per_step([r for r in rows if "eval_loss" in r])
  events = last_per_step([r for r in rows if "growth/event" in r])
  grown_at = phases[-1].start  # the target's curve starts at the end of the last event's step
  ev_curve = [(F(r["step"]), r["eval_loss"], r["step"]) for r in evals]
  if events:  # the grown model's own evaluation, at the event's FLOPs
    ev_curve.append((F(events[-1]["step"]), events[-1]["growth/eval_loss_after"], events[-1]["step"]))
  ev_curve.sort()
  res = result_of(args, run) or {}
  return {
      "run": run, "label": LABELS.get(run, run), "status": res.get("status", "unfinished"),
      "wall_s": res.get("wall_s"), "started": res.get("started"), "finished": res.get("finished"),
      "steps": c.train.steps, "done_steps": max((r["step"] for r in rows), default=0),
      "base": {k: c.model[k] for k in ("num_layers", "d_model", "num_heads", "mlp_dim")},
      "base_steps": grown_at if phases[1:] else 0, "base_share": cfg.RUNS[run][1],
      "base_flops": F(phases[1].start) if phases[1:] else 0.0, "total_flops": F(c.train.steps),
      "tokens": c.train.steps * c.train.global_batch * c.data.seq_len,
      "events": [{"step": e["step"], "op": phases[e["growth/event"]].event["op"],
                  "params": e["growth/parameters"], "before": e["growth/eval_loss_before"],
                  "after": e["growth/eval_loss_after"]} for e in events],
      "train": [(F(r["step"]), r["loss"], r["step"]) for r in train],
      "eval": ev_curve, "grown_at": grown_at,
      "final_eval_loss": evals[-1]["eval_loss"] if evals and evals[-1]["step"] == c.train.steps else None,
  }


def smooth(curve, k=SMOOTH):
  """A centred mean over k points (fewer at the ends)."""
  y = np.array([p[1] for p in curve])
  h = k // 2
  out = [float(y[max(0, i - h):i + h + 1].mean()) for i in range(len(y))]
  return [(p[0], v, p[2]) for p, v in zip(curve, out)]


def smoothed_train(m):
  """The training curve smoothed within each stretch (base, grown model): the jump at growth is kept."""
  g = m["grown_at"]
  return smooth([p for p in m["train"] if p[2] <= g]) + smooth([p for p in m["train"] if p[2] > g])


def target_curve(m, which):
  """The run's (FLOPs, loss) from its last growth event on: the training curve smoothed within that stretch."""
  g = m["grown_at"]
  if which == "eval":
    return [p for p in m["eval"] if p[2] >= g] if g else m["eval"]
  return smooth([p for p in m["train"] if p[2] > g])


def flops_to_reach(curve, level):
  """The FLOPs at which the curve first reaches `level` (linear interpolation), or None if it never does."""
  for (f0, l0, _), (f1, l1, _) in zip(curve, curve[1:]):
    if l0 <= level:
      return f0
    if l1 <= level:
      return f0 + (f1 - f0) * (l0 - level) / (l0 - l1)
  return curve[-1][0] if curve and curve[-1][1] <= level else None


def loss_at(curve, f):
  """The curve's loss at FLOPs f (linear interpolation)."""
  xs, ys = [p[0] for p in curve], [p[1] for p in curve]
  return float(np.interp(f, xs, ys))


def speedups(ms, budget):
  """Per curve kind (eval, train) the levels L* (scratch at 50%, 75%, 100% of the budget) and each run's
  C_run(L*) and speed-up C_scratch(L*) / C_run(L*) - 1 (None where the run does not reach L* within the budget)."""
  out = {}
  sc = ms.get("scratch")
  if not sc or sc["status"] != "ok":
    return out
  for which in ("eval", "train"):
    ref = target_curve(sc, which)
    levels = [(frac, loss_at(ref, frac * budget)) for frac in (0.5, 0.75, 1.0)]
    if which == "eval":
      levels[-1] = (1.0, ref[-1][1])  # the final evaluation itself
    rows = []
    for frac, L in levels:
      c_ref = flops_to_reach(ref, L)
      per = {}
      for run, m in ms.items():
        if run == "scratch" or m["status"] != "ok":
          continue
        cur = target_curve(m, which)
        if not cur:  # stopped before its grown model was evaluated
          continue
        c = flops_to_reach(cur, L)
        per[run] = {"flops": c, "speedup": (c_ref / c - 1) if c else None,
                    "loss_at_end": cur[-1][1], "gap_at_end": cur[-1][1] - ref[-1][1]}
      rows.append({"frac": frac, "level": L, "scratch_flops": c_ref, "runs": per})
    out[which] = rows
  return out


def measure(args, runs):
  ms = {r: m for r in runs if (m := measure_run(args, r)) is not None}
  budget = cfg.budget(args.size)
  return {"budget": budget, "runs": ms, "speedups": speedups(ms, budget)}


def span(ms) -> dict:
  """When the runs ran (from their result.json) and their summed wall time."""
  st = [m["started"] for m in ms.values() if m.get("started")]
  en = [m["finished"] for m in ms.values() if m.get("finished")]
  if not st:
    return {}
  tt = lambda s: time.mktime(time.strptime(s, "%Y-%m-%d %H:%M:%S"))
  return {"start": min(st), "end": max(en), "minutes": (tt(max(en)) - tt(min(st))) / 60,
          "run_minutes": sum(m["wall_s"] or 0 for m in ms.values()) / 60}


# ---------------------------------------------------------------- plots


def plots(m, out_dir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  budget, ms = m["budget"], m["runs"]
  fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
  for row, zoom in ((0, False), (1, True)):
    for col, which in enumerate(("train", "eval")):
      ax = axes[row][col]
      for run, r in ms.items():
        cur = smoothed_train(r) if which == "train" else r["eval"]
        if not cur:
          continue
        color = COLORS.get(run, "gray")
        jplots.curves({r["label"]: (np.array([p[0] for p in cur]) / budget, [p[1] for p in cur])}, ax=ax,
                      colors=color, lw=2.2 if run == "scratch" else 1.3, marker=None if which == "train" else ".",
                      legend=False, xlabel="total FLOPs / budget (base training included)",
                      ylabel=f"{'training loss (smoothed)' if which == 'train' else 'validation loss'} (nats/byte)")
        for e in r["events"][-1:]:  # the growth event: where the target's curve starts
          ax.axvline(r["base_flops"] / budget, color=color, lw=0.6, ls=":")
      ax.grid(alpha=0.3)
      sc = ms.get("scratch")
      if zoom and sc and sc["eval"]:
        lo = min(min(p[1] for p in (smoothed_train(r) if which == "train" else r["eval"])) for r in ms.values()
                 if r["eval"] and r["train"])
        ref = loss_at(sc["eval"], 0.4 * budget)
        ax.set_xlim(0.35, 1.02)
        ax.set_ylim(lo - 0.03, ref + 0.15)
        ax.set_title(f"{which}: the last 65% of the budget")
      else:
        ax.set_title(f"{which} loss against total FLOPs")
  axes[0][1].legend(fontsize=8)
  jplots.save(fig, os.path.join(out_dir, "loss_vs_flops.png"))


# ---------------------------------------------------------------- report


def _pct(x):
  return "—" if x is None else f"{100 * x:+.1f}%"


def _g(x, fmt="{:.4f}"):
  return "—" if x is None else fmt.format(x)


def model_str(b):
  return f"{b['num_layers']}L d{b['d_model']} h{b['num_heads']} mlp{b['mlp_dim']}"


def verdicts(m):
  """(claim, what we measured, agrees?) rows, from the speed-ups at the scratch run's final evaluation loss."""
  sp = m["speedups"].get("eval")
  if not sp:
    return []
  final = sp[-1]["runs"]
  s = lambda r: (final.get(r) or {}).get("speedup")
  desc = lambda r: ("not measured" if r not in final else _pct(s(r)) if s(r) is not None
                    else f"< 0 (does not reach it; {final[r]['gap_at_end']:+.4f} at the budget)")
  pos = lambda r: s(r) is not None and s(r) > 0
  out = []
  stacks = [r for r in ("stack4_x10", "stack4_x25", "stack4_x50") if r in final]
  if stacks:
    n = sum(pos(r) for r in stacks)
    out.append(("G_stack (g=4) beats scratch at equal FLOPs, base included (§1.7.1; 1.1B: +49.1%, 7B: +54.6%)",
                "; ".join(f"d/D={100 * cfg.RUNS[r][1]:.0f}%: {desc(r)}" for r in stacks),
                "yes" if n == len(stacks) else "partly" if n else "no"))
  if "zero4_x25" in final and "stack4_x25" in final:
    z, st = s("zero4_x25"), s("stack4_x25")
    close = z is not None and st is not None and abs(z - st) < 0.1
    out.append(("G↑zero ≈ G_stack > scratch (1.1B: +46.6% vs +49.1%)",
                f"G↑zero {desc('zero4_x25')}, G_stack {desc('stack4_x25')} (same base, d/D=25%)",
                "yes" if close and pos("zero4_x25") else "partly" if pos("zero4_x25") or close else "no"))
  if "random4_x25" in final:
    ev = (m["runs"]["random4_x25"]["events"] or [{"after": 0.0, "before": 0.0}])[0]
    out.append(("G↑random is worse than scratch (1.1B: −25.7%)",
                f"G↑random {desc('random4_x25')}; its fresh layers are the model's own init (residual output "
                f"projections std 0.02/√(2L)), so they start near the identity: the loss moved "
                f"{ev['after'] - ev['before']:+.4f} at growth (the paper's G↑random: MSG's masked random layers)",
                "no" if pos("random4_x25") else "yes"))
  if "width_x25" in final:
    out.append(("Width growth is ≈ or worse than scratch (1.1B: G→direct −0.7%, G→zero −17.9%, G→random −13.8%)",
                f"Gesmundo FP width path {desc('width_x25')}",
                "yes" if s("width_x25") is None or s("width_x25") < 0.1 else "no"))
  if len(stacks) == 3:
    end = {r: final[r]["loss_at_end"] for r in stacks}  # the IsoFLOP curve: loss at the budget against d
    best = min(stacks, key=end.get)
    out.append(("An interior optimum in d (IsoFLOP valley; §1.7.4)",
                "val loss at the budget for d/D = 10/25/50%: " + " / ".join(f"{end[r]:.4f}" for r in stacks)
                + f"; lowest at {100 * cfg.RUNS[best][1]:.0f}%", "yes" if best == "stack4_x25" else "no"))
  if "stack2_x25" in final and "stack4_x25" in final:
    out.append(("g = 4 is the best growth factor (the paper's g among {2, 4, 8})",
                f"g=4 {desc('stack4_x25')}, g=2 {desc('stack2_x25')} (d/D=25%)",
                "yes" if (s("stack4_x25") or -9) > (s("stack2_x25") or -9) else "no"))
  fp = [(r, e) for r, mm in m["runs"].items() for e in mm["events"] if mm["status"] == "ok"
        and e["op"] in ("g_zero", "expand_d_model", "add_heads", "expand_mlp")]
  st = [(r, e) for r, mm in m["runs"].items() for e in mm["events"] if e["op"] == "stack"]
  if fp or st:
    worst_fp = max((abs(e["after"] - e["before"]) for _, e in fp), default=None)
    st_j = [e["after"] - e["before"] for _, e in st]
    up = st_j and min(st_j) > 1e-3
    out.append(("G_stack is not function-preserving: the loss jumps up at the event; the FP operators (G↑zero, "
                "the width path) leave it unchanged",
                f"G_stack: {', '.join(f'{j:+.3f}' for j in st_j) or 'not run'}; FP operators: largest jump in "
                f"absolute value {_g(worst_fp, '{:.1e}')} ({len(fp)} events)",
                "yes" if up and (worst_fp is None or worst_fp < 1e-4) else
                "partly" if (worst_fp is not None and worst_fp < 1e-4) or up else "no"))
  return out


def report(m, args, meta):
  ms, budget = m["runs"], m["budget"]
  s = cfg.SIZES[args.size]
  sc = ms.get("scratch")
  L = [f"# Growth at small scale: G_stack, G↑zero, G↑random and a function-preserving width path against scratch "
       f"({args.size} size)", "",
       f"Generated by `python experiments/growth/run.py{'' if args.size == 'cpu' else ' --size ' + args.size}` on "
       f"{meta['date']}: {meta['machine']}, {meta['parallel']} run(s) at a time. "
       + (f"Runs from {meta['span']['start']} to {meta['span']['end']} UTC: wall time "
          f"{meta['span']['minutes']:.1f} min ({meta['span']['run_minutes']:.0f} run-minutes in all). "
          if meta.get("span") else "")
       + f"Machine state: {meta['load']}.", "",
       f"Target (`experiments/growth/config.py`): {s['layers']} layers, d_model {s['d_model']}, {s['heads']} heads "
       f"of {s['d_model'] // s['heads']}, SwiGLU MLP {s['mlp_dim']}, RMSNorm pre-LN, RoPE, tied embeddings, vocab "
       f"256 (bytes of the embedded Python-stdlib corpus), sequences of {s['seq_len']}, batch {s['batch']}, "
       f"{s['dtype']}. AdamW, peak η {s['lr']:g} for every model and phase, {s['warmup']} warmup steps, cosine to "
       f"10%, clip 1.0, weight decay 0.1. Budget C = {budget:.3g} FLOPs = {s['scratch_steps']} steps of the target "
       f"(jaxtrain/flops.py: matmul FLOPs, 3× forward); every run ends at C within half a step. Validation loss "
       f"on {s['eval_batches']} fixed batches every {s['eval_every']} steps. One seed; every run sees the same "
       "batch at the same step.", "",
       "At growth (config `growth.events`, mid-run): the trainer saves the base, evaluates it, applies the "
       "operator, evaluates the grown model and trains on with the same data stream; a fresh AdamW (`opt=reset`) "
       "and a new linear warmup to the same peak η, then cosine over the rest of the run (`lr=restart_warmup`), as "
       "the official G_stack code does (growth.md §4). The base runs the run's cosine laid over all its steps, so "
       "it is cut near its peak η. d/D is the base's share of the scratch run's tokens (the paper's d); its share "
       "of the FLOPs is smaller (table below). The width path's three events sit at consecutive steps b, b+1, b+2; "
       "each restarts the warmup, whose first step has η = 0, so the two intermediate models take one step each at "
       "η = 0 (their FLOPs are counted). A grown run takes more steps than the scratch run for the same FLOPs, so it "
       "also sees more tokens (all fresh: no run comes near an epoch of the corpus).", "",
       "## Runs", "",
       "| run | base | base steps (d/D) | base FLOPs / C | total steps | tokens | total FLOPs / C | final val loss "
       "| final train loss (smoothed) | status | wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for run, r in ms.items():
    tr = smoothed_train(r)
    status = r["status"] + ("" if r["done_steps"] >= r["steps"] else f" at step {r['done_steps']}")
    L.append(f"| {r['label']} | {model_str(r['base'])} | {r['base_steps']} ({100 * r['base_share']:.0f}%) | "
             f"{r['base_flops'] / budget:.3f} | {r['steps']} | {r['tokens'] / 1e6:.2f}M | "
             f"{r['total_flops'] / budget:.5f} | {_g(r['final_eval_loss'])} | {_g(tr[-1][1] if tr else None)} | "
             f"{status} | "
             f"{_g(r['wall_s'] and r['wall_s'] / 60, '{:.1f} min')} |")
  missing = [r for r in cfg.CORE if r not in ms]
  if missing:
    L += ["", f"Not run (no metrics in `{args.runs_dir}`): " + ", ".join(f"{LABELS[r]} (`{r}`)" for r in missing)
          + "; the study's command runs them, and `--report-only` then adds them here."]
  L += ["", "![](loss_vs_flops.png)", "",
        "Top: the whole budget; bottom: its last 65%. Left: training loss (each logged point a mean over "
        f"{s['log_every']} steps, then a centred mean over {SMOOTH} points within the base and the grown stretch); "
        "right: validation loss. Dotted verticals: where each grown run's growth event sits (its base's FLOPs).", ""]
  L += ["## Speed-up at equal loss", "",
        "speedup(L*) = C_scratch(L*) / C_grow(L*) − 1 (the paper's definition, growth.md §1.6), C(L*) the total "
        "FLOPs (base included) at which the run's loss curve first reaches L*, linearly interpolated between "
        "evaluations; a grown run's curve counts from its last growth event on (the grown model's own "
        "evaluation right after growth is its first point). L*: the scratch run's loss at 50%, 75% and 100% of "
        "the budget. A run that does not reach L* within the budget has a negative speed-up we cannot size "
        "without running past the budget: the table gives \"< 0\" and its loss gap to scratch at the budget.", ""]
  for which, title in (("eval", "validation loss (primary)"), ("train", "smoothed training loss (check)")):
    rows = m["speedups"].get(which)
    if not rows:
      continue
    runs = [r for r in ms if r != "scratch"]
    L += [f"On the {title}:", "",
          "| run | " + " | ".join(f"L* = {row['level']:.4f} (scratch at {100 * row['frac']:.0f}%)" for row in rows)
          + " | loss at the budget (scratch " + f"{target_curve(sc, which)[-1][1]:.4f}) |",
          "|---|" + "---|" * (len(rows) + 1)]
    for run in runs:
      cells = []
      for row in rows:
        p = row["runs"].get(run)
        if p is None:
          cells.append("—")
        elif p["speedup"] is None:
          cells.append("< 0 (not reached)")
        else:
          cells.append(f"**{_pct(p['speedup'])}** (at {p['flops'] / budget:.3f} C)")
      p = rows[-1]["runs"].get(run)
      end = "—" if p is None else f"{p['loss_at_end']:.4f} ({p['gap_at_end']:+.4f})"
      L.append(f"| {LABELS.get(run, run)} | " + " | ".join(cells) + f" | {end} |")
    L.append("")
  L += ["The paper's numbers (growth.md §1.6): at 1.1B (×4 depth, d = 10B tokens, ~100B tokens), G↑direct (G_stack) "
        "**+49.1%**, G↑zero **+46.6%**, G↑random **−25.7%**, G↑learn +48.6%; in width G→direct −0.7%, G→zero −17.9%, "
        "G→random −13.8%, G→learn −15.4%; at 7B (300B tokens) G_stack **+54.6%**; at 410M 31-53% and at 3B "
        "49-55% depending on L*. Our width path (Gesmundo & Maile's exact expansions: new input weights fresh, new "
        "output weights 0) is not any one of the paper's width operators; G→zero is the nearest.", ""]
  L += ["## The loss right before and right after each growth event", "",
        "Validation loss of the base at the end of the event's step and of the grown model on the same batches, "
        "before any step of the grown model (metrics rows `growth/eval_loss_before`, `growth/eval_loss_after`). "
        "Function-preserving operators should not move it (float32 rounding only); G_stack and G↑random are not "
        "function-preserving.", "",
        "| run | step | operator | parameters after | val loss before | after | jump |",
        "|---|---|---|---|---|---|---|"]
  for run, r in ms.items():
    for e in r["events"]:
      L.append(f"| {r['label']} | {e['step']} | `{e['op']}` | {e['params'] / 1e6:.3f}M | {e['before']:.6f} | "
               f"{e['after']:.6f} | {e['after'] - e['before']:+.2e} |")
  L += ["", "## Where our small-scale results agree with the paper and where not", "",
        "Verdicts computed from the speed-ups at the scratch run's final validation loss (the first row of the "
        "table above is the evidence).", "", "| the paper says | we measured | agrees? |", "|---|---|---|"]
  L += [f"| {a} | {b} | **{c}** |" for a, b, c in verdicts(m)]
  L += ["", "Scale: the paper's targets are 410M-7B parameters trained on 100-750B tokens; ours is "
        f"{meta.get('target_params', '?')} parameters on {s['scratch_steps'] * s['batch'] * s['seq_len'] / 1e6:.1f}M "
        "tokens (scratch), one seed, so only directions and orderings compare. With one seed, speed-ups of a few "
        "percent are within noise: the loss at equal FLOPs differs by seed by roughly the differences between "
        "neighbouring curves late in the run.", ""]
  with open(os.path.join(args.out, "report.md"), "w") as fh:
    fh.write("\n".join(L) + "\n")


# ---------------------------------------------------------------- main


def machine(size):
  if size == "gpu":
    try:
      return "GPU: " + subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
      return "GPU"
  model = ""
  try:
    with open("/proc/cpuinfo") as fh:
      model = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "")
  except OSError:
    pass
  return f"{platform.machine()} CPU ({model}), {os.cpu_count()} threads"


def load_state(l0, l1):
  cores = os.cpu_count()
  busy = max(l0, l1) > 0.5 * cores + 0.5
  return (f"load average {l0:.1f} at start, {l1:.1f} at the end ({cores} CPU threads): "
          + ("**busy** (other processes shared the CPU)" if busy else "idle apart from the study"))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=tuple(cfg.SIZES), default="cpu")
  parser.add_argument("--out", default=None, help="report, plot and summary.json (default experiments/growth/results "
                      "for the cpu size, runs/growth_<size>/results otherwise)")
  parser.add_argument("--runs-dir", default=None, help="the runs' workdirs (default runs/growth_<size>)")
  parser.add_argument("--runs", default="core", help="comma-separated run names (config.RUNS), 'core' (default: "
                      "all but the optional ones) or '+copy' (core and stack4_x25_copy)")
  parser.add_argument("--parallel", type=int, default=None, help="runs at once (default: 2 on a CPU with 2+ cores, "
                      "each pinned to its own core; 1 on a GPU)")
  parser.add_argument("--report-only", action="store_true", help="no training: the report from the finished runs "
                      "(or from <out>/summary.json when the runs are gone)")
  args = parser.parse_args()
  args.out = args.out or (os.path.join(HERE, "results") if args.size == "cpu" else f"runs/growth_{args.size}/results")
  args.runs_dir = args.runs_dir or f"runs/growth_{args.size}"
  runs = (list(cfg.CORE) if args.runs in ("core", "+copy") else args.runs.split(","))
  runs += ["stack4_x25_copy"] if args.runs == "+copy" else []
  bad = [r for r in runs if r not in cfg.RUNS]
  if bad:
    parser.error(f"unknown run(s) {bad}; choose from {list(cfg.RUNS)}")
  if args.parallel is None:
    args.parallel = 1 if args.size == "gpu" else max(1, min(2, len(os.sched_getaffinity(0))))
  os.makedirs(args.out, exist_ok=True)
  summary_path = os.path.join(args.out, "summary.json")
  t0, load0 = time.time(), os.getloadavg()[0]
  if args.report_only and not os.path.isdir(args.runs_dir):
    with open(summary_path) as fh:
      saved = json.load(fh)
    m, meta = saved["measurements"], saved["meta"]
  else:
    if not args.report_only:
      run_all(args, runs)
    m = measure(args, [r for r in cfg.RUNS if r in runs or os.path.isdir(workdir(args, r))])
    from jaxtrain import model as model_lib  # pylint: disable=import-outside-toplevel
    c = cfg.get_config(f"{args.size},scratch")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(args.size),
            "parallel": args.parallel, "load": load_state(load0, os.getloadavg()[0]),
            "wall_min": (time.time() - t0) / 60, "span": span(m["runs"]),
            "target_params": f"{model_lib.count_params(model_lib.abstract(c.model)[1]) / 1e6:.2f}M"}
    sweep.write_summary(summary_path, meta, m, report_only=args.report_only)
  try:
    plots(m, args.out)
  except ImportError:
    print("matplotlib missing: no plot (pip install matplotlib)", flush=True)
  report(m, args, meta)
  print(f"report: {os.path.join(args.out, 'report.md')} ({(time.time() - t0) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
  main()
