"""Grokking at the edge of numerical stability, reproduced on modular addition in one command.

  python experiments/grokking/run.py --out experiments/grokking/results
  python experiments/grokking/run.py --out /tmp/g --runs orthograd,adamw_f32 --scale 0.1   # a quick look
  python experiments/grokking/run.py --out /tmp/g --runs orthograd --seeds 3              # seeds 0, 1, 2: mean ± sd
  python experiments/grokking/run.py --out experiments/grokking/results --report-only

Trains the paper's bias-free ReLU MLP (226 -> 200 -> 200 -> 113) full-batch on (a + b) mod 113 with 40% of the
pairs in train, five ways, and StableMax's late collapse four ways (RUNS): each run a point of `jaxtrain.sweep`'s
runner, `python -m grokking` in `<workdir>/points/<run>,seed=<s>` (a rerun skips finished runs and resumes the
long ones from their last saved segment). It measures each run (`measure.py`), keeps the measurements in
`<out>/summary.json` and writes `<out>/report.md` (the five), `collapse.md` (StableMax with float32 vs float64 Adam
state: the peak, the collapse after it, Adam's second moment flushed to zero) and PNG plots. `--report-only`
rebuilds both reports from summary.json alone (the plots need the runs). The verdicts are computed from the
measurements over the seeds against the paper's claims (Prieto et al., arXiv 2501.04697; the official code,
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability), not written in advance.

Budget on an idle 2-core CPU (12-13 ms per full-batch step at p = 113; p = 31 is ~4× cheaper): the five runs
≈5 min, StableMax at p = 113 to 80k steps (past the peak at ~63k and the collapse after it) with float32 and
float64 Adam state ≈17 min each, the p = 31 runs ≈12 min together. `stablemax_p31_ieee_from52k` continues
`stablemax_p31`'s saved state at step 52k with PyTorch's float32 Adam arithmetic (it runs after its parent).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import grokking  # noqa: E402
import measure  # noqa: E402  (this study's measurements and report text)
from jaxtrain import report, sweep  # noqa: E402

log = logging.getLogger("grokking")

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
# Runs that continue another's saved state: name -> (parent, step).
BRANCH_OF = {"stablemax_p31_ieee_from52k": ("stablemax_p31", 52_000)}
# Long runs train in segments of this many steps, each saved with its full state (params, Adam's m and ν), so a
# killed run continues and a branch can start from any segment's end.
SAVE_EVERY = {"stablemax": 2_000, "stablemax_adam64": 2_000, "stablemax_p31": 4_000, "stablemax_p31_adam64": 4_000,
              "stablemax_p31_ieee_from52k": 4_000}

# What the paper claims (qualitative; its §3-4 and the official run_main_experiments.sh settings).
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


def run_config(name, scale, seed, data_dir):
  """The run's `grokking.config()` fields: its settings, steps scaled (a multiple of its log_every)."""
  _, overrides, steps, log_every = RUNS[name]
  steps = max(log_every, int(round(steps * scale / log_every)) * log_every)  # a multiple of log_every
  return dict(steps=steps, log_every=log_every, data_dir=data_dir, seed=seed, data_seed=seed, train_fraction=0.4,
              bias=False, **overrides)


def point_name(name, seed):
  return f"{name},seed={seed}"


def points(args, names):
  """The runner's points: one `python -m grokking` per (run, seed)."""
  out = []
  for name in names:
    for seed in args.seeds:
      fields = run_config(name, args.scale, seed, args.data_dir)
      cmd = [sys.executable, "-m", "grokking", "--workdir={workdir}", "--quiet"]
      scaled = lambda step: max(fields["log_every"], int(round(step * args.scale / fields["log_every"]))
                                * fields["log_every"])  # on the evaluations, as the steps
      if name in SAVE_EVERY:
        cmd.append(f"--save_every={scaled(SAVE_EVERY[name])}")
      if name in BRANCH_OF:
        parent, step = BRANCH_OF[name]
        step = scaled(step)
        cmd.append(f"--init_from={os.path.join(args.workdir, 'points', point_name(parent, seed))}:{step}")
      cmd += [f"--config.{k}={v}" for k, v in fields.items()]
      out.append(sweep.Point(name=point_name(name, seed), command=cmd, values={"run": name, "seed": seed},
                             steps=fields["steps"]))
  return out


def train_and_measure(args):
  """Runs the points (resuming), reads every finished run's history; (meta, measurements, histories)."""
  t0, load0 = time.time(), os.getloadavg()[0]
  env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
  try:  # the branches once their parents are done (they start from their saved states)
    rows = ([r for r in sweep.read_results(args.workdir) if r["values"]["run"] in args.runs] if args.measure_only
            else [row for phase in ([n for n in args.runs if n not in BRANCH_OF],
                                    [n for n in args.runs if n in BRANCH_OF])
                  if phase for row in sweep.run_points(points(args, phase), args.workdir, parallel=args.parallel,
                                                       env=env)])
  except sweep.Interrupted as e:
    sys.exit(f"stopped by {e}: rerun the same command to resume, or --measure-only to report what finished")
  histories = {}
  for row in rows:
    if row["status"] == "ok":
      histories.setdefault(row["values"]["run"], {})[row["values"]["seed"]] = grokking.load_history(row["workdir"])
  meta = report.meta(t0, load0, args.parallel, date_day=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(),
                     arch=platform.machine(), jax=__import__("jax").__version__)
  return meta, measure.measure({n: histories[n] for n in RUNS if n in histories}), histories


def merged(path, m):
  """The measurements `m` of this invocation's runs over the summary.json at `path` (if any): a study rerun for some
  runs (more seeds of the short ones, say) keeps the other runs' measurements, each run with its own seeds."""
  if not os.path.exists(path):
    return m
  _, old = report.read_summary(path)
  runs = {n: v for n, v in old["runs"].items() if n not in m["runs"]} | m["runs"]
  collapse = {n: v for n, v in old.get("collapse", {}).items() if n not in m["runs"]} | m["collapse"]
  return {"seeds": sorted(set(old["seeds"]) | set(m["seeds"])),
          "runs": {n: runs[n] for n in RUNS if n in runs},
          "collapse": {n: collapse[n] for n in RUNS if n in collapse},
          "collapse_seconds": m["collapse_seconds"] if m["collapse"] else old.get("collapse_seconds", 0.0),
          "collapse_seeds": m["seeds"] if m["collapse"] else old.get("collapse_seeds", old["seeds"]),
          "adam_arithmetic": m["adam_arithmetic"] or old.get("adam_arithmetic", [])}


def settings(name):
  """The report's settings cell, from the run's config (the budget's, seed 0)."""
  cfg = grokking.config(**run_config(name, 1.0, 0, "")).to_dict()
  return (f"{cfg['optimizer']}{' + ⊥Grad' if cfg['orthograd'] else ''}, {cfg['output']} "
          f"{cfg['loss_dtype']}, β2 {cfg['b2']}, ε {cfg['eps']:g}, wd {cfg['weight_decay']:g}"
          f"{', Adam state ' + cfg['opt_dtype'] if cfg['opt_dtype'] != 'float32' else ''}"
          f"{'' if cfg['p'] == 113 else ', mod ' + str(cfg['p'])}")


def write_reports(meta, m, out):
  """report.md (the five, against the paper) and collapse.md (StableMax's late collapse) from the measurements."""
  collapse = measure.collapse_report(meta, m)
  if collapse:
    with open(os.path.join(out, "collapse.md"), "w") as f:
      f.write("\n".join(collapse) + "\n")
  names = [n for n in m["runs"] if n in PAPER]
  if not names:  # only the collapse study's runs: keep the committed report.md
    return
  total = sum(sum(s["seconds"] for s in m["runs"][n]) for n in names)
  lines = [
      "# Grokking at the edge of numerical stability: our measurements",
      "",
      "MLP 226 → 200 → 200 → 113 (ReLU, no biases, U(±1/√fan_in) init) on (a + b) mod 113, all 12769 pairs, "
      "40% train (5107) / 60% test (7662), full batch (one step = one epoch), constant learning rate 0.01, "
      "no weight decay unless stated, Adam ε 1e-25 unless stated (the official defaults), "
      f"{measure.seeds_text(m['seeds'], {n: len(m['runs'][n]) for n in names})}. "
      "Train metrics per step from that step's forward pass; SC fraction = share of train examples whose "
      "Σ exp(z − max z) rounds to exactly 1 in the loss's dtype (for StableMax: Σ s(z) rounds to s(max z)). "
      "Accuracies are evaluated every `eval` steps after the update.",
      "",
      f"Budget: {total / 60:.1f} min of wall time for the {len(names)} runs"
      + (f" ({sum(len(m['runs'][n]) for n in names)} trainings over the seeds, summed)" if len(m["seeds"]) > 1
         else "") + ", compile included "
      f"(report written {meta['date_day']} on {meta['cpus']} CPU cores, {meta['arch']}, "
      f"jax {meta['jax']}). Produced by `python experiments/grokking/run.py --out experiments/grokking/results`.",
      "",
  ]
  header = ["run", "settings", "steps", "eval", "train acc (final)", "test acc (final / best)", "step ≥95% test",
            "SC frac (final / max; first >50%)", "zero-loss (final)", "‖θ‖ (start → end)", "cos(g,θ) end",
            "ms/step", "wall"]
  cells = {n: measure.row(m["runs"][n]) for n in names}  # steps first, then the measured cells
  lines += report.table(header, [[n, settings(n), cells[n][0], RUNS[n][3], *cells[n][1:]] for n in names])
  lines += ["", "## Against the paper", "",
            f"Each verdict counts the seeds whose run does what the paper says (agrees: all; partly: some; differs: "
            f"none), and says so when it rests on fewer than {measure.MIN_SEEDS}; float64 against float32 softmax "
            "compares the step at which SC passes 50% per seed (`jaxtrain.report.compare`: a paired 95% interval).",
            ""]
  for n in names:
    lines += [f"### {n}: {RUNS[n][0]}", "",
              f"- Paper: {PAPER[n]}.",
              f"- Ours: {measure.verdict(n, m['runs'][n], m['runs'])}", ""]
  lines += ["StableMax's late collapse (after its peak, with float32 Adam state on XLA's CPU) and its cause: "
            "[collapse.md](collapse.md).", ""]
  lines += ["## Plots", "", "![summary](summary.png)", ""]
  lines += [f"![{n}]({n}.png)" for n in names]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="experiments/grokking/results")
  parser.add_argument("--workdir", help="the runs' directory (default: <out>/runs)")
  parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
  parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps (1 = the budget)")
  parser.add_argument("--seeds", type=int, default=1, help="init and split seeds 0..N-1 (mean ± sd)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once (each pinned to its own cores)")
  parser.add_argument("--data_dir", default="~/.cache/jaxtrain/tensorflow_datasets")
  parser.add_argument("--report-only", action="store_true", help="rewrite the reports from summary.json")
  parser.add_argument("--only-seeds", default="", help="train only these seeds (e.g. 1,2: invocations with their "
                      "own --workdir share the work)")
  parser.add_argument("--measure-only", action="store_true", help="no training: measure the runs of --runs that "
                      "finished in --workdir (a study stopped part-way) and write summary.json and the reports")
  args = parser.parse_args()
  args.runs = [r for r in args.runs.split(",") if r]
  args.seeds = [int(x) for x in args.only_seeds.split(",")] if args.only_seeds else list(range(args.seeds))
  args.workdir = args.workdir or os.path.join(args.out, "runs")
  unknown = set(args.runs) - set(RUNS)
  if unknown:
    parser.error(f"unknown runs {sorted(unknown)}; choose from {list(RUNS)}")
  missing = {BRANCH_OF[n][0] for n in args.runs if n in BRANCH_OF} - set(args.runs)
  if missing and not args.report_only:
    parser.error(f"{sorted(missing)} must run too: a branch continues its saved state")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  os.makedirs(args.out, exist_ok=True)

  def measure():
    meta, m, histories = train_and_measure(args)
    if not m["runs"]:
      raise SystemExit(f"no finished runs in {args.workdir}")
    return meta, merged(os.path.join(args.out, "summary.json"), m), histories

  meta, m, histories = report.summary_or_measure(args.out, args.report_only, measure)
  if histories is not None:
    from plots import draw  # pylint: disable=import-outside-toplevel  (matplotlib: only with the runs)
    draw(histories, {n: RUNS[n][0] for n in RUNS}, [n for n in RUNS if n in PAPER], args.out)
  write_reports(meta, m, args.out)
  log.info("wrote %s", os.path.join(args.out, "report.md"))


if __name__ == "__main__":
  main()
