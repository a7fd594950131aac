"""The growth study's runs: one target model, grown into (or trained from scratch) at one total FLOP budget.

  python -m jaxtrain --config=experiments/growth/config.py:cpu,scratch --workdir=runs/growth_cpu/points/scratch
  python -m jaxtrain --config=experiments/growth/config.py:cpu,stack4_x25 --workdir=runs/growth_cpu/points/stack4_x25
  python -m jaxtrain --config=experiments/growth/config.py:tiny,width_x25 --workdir=/tmp/g/width_x25

The argument is `<size>,<run>` (size `cpu` (default), `cpu_large`, `tiny` or `gpu`; run a name in RUNS). Every
run ends at the scratch run's total FLOPs C = S·f(target) (S = the size's scratch steps, f = jaxtrain.flops.train_flops_per_step),
base training included, within half a step of the target: a grown run trains its base for b = x·S steps (x = the
base's share of the scratch run's tokens, the paper's d/D), then the target for as many steps as the FLOPs left
pay for, so it takes more steps (and sees more tokens) than the scratch run, its early steps being cheaper.

Growth happens mid-run (config.growth.events): at the end of step b the trainer saves the base, applies the
operator, and trains on with the same data stream. Policies: a fresh AdamW (`opt=reset`) and a new linear warmup
to the scratch run's peak, then cosine over the rest of the run (`lr=restart_warmup`), as in G_stack's official code
(tongxuluo/prts: pretrain/run_pretrain.py, g_stack.sh; its MSG-masked G↑random is trained the same way); one
learning rate for base, target and scratch (the project's default config's 3e-3 on CPU), not tuned per run.

G↑random is the paper's operator: fresh layers on top, faded in by MSG's mask (prts `prts_lit/scaling/msg.py`,
y·m + x·(1 − m), m = t/T), T scaled from the official code: `MsgConfig.grow_step` T = 5000 steps of 1024 × 2048
tokens (10.5B tokens) against the scratch run's 100B tokens in the paper's operator comparison (8e20 FLOPs),
T = 10.5% of the scratch run's tokens; here T = round(RAMP_SHARE · S) steps of the target (`ramp_steps`). The
same operator without the mask (new layers at full strength from the first step) is the run `random4_x25_nomask`.
"""

from __future__ import annotations

import ml_collections

from jaxtrain import flops, growth
from jaxtrain.config import ConfigError, base

# target: (layers, d_model, heads, mlp_dim); width_base: the width path's base (d_model, heads, mlp_dim), head_dim
# kept; scratch_steps S: the budget is S steps of the target.
SIZES = {
    # The committed study, 3 seeds on a shared 2-core CPU: 8 layers, d 64, 16 x 64 tokens, 400 steps.
    "cpu": dict(layers=8, d_model=64, heads=2, mlp_dim=192, width_base=(32, 1, 96), seq_len=64, batch=16,
                scratch_steps=400, warmup=40, lr=3e-3, eval_every=25, eval_batches=4, log_every=10, dtype="float32"),
    # The first study's size (one seed, 2026-11-29): the target's step is ~23 GFLOP (8 layers, d 128, 16 x 128 tokens).
    "cpu_large": dict(layers=8, d_model=128, heads=4, mlp_dim=384, width_base=(64, 2, 192), seq_len=128, batch=16,
                scratch_steps=600, warmup=60, lr=3e-3, eval_every=50, eval_batches=8, log_every=10, dtype="float32"),
    "tiny": dict(layers=4, d_model=32, heads=2, mlp_dim=96, width_base=(16, 1, 48), seq_len=32, batch=8,
                 scratch_steps=40, warmup=4, lr=3e-3, eval_every=10, eval_batches=2, log_every=2, dtype="float32"),
    # One GPU: a 16-layer d 512 target (~67M parameters), 4000 steps of 32 x 512 tokens (65M tokens), bfloat16.
    "gpu": dict(layers=16, d_model=512, heads=8, mlp_dim=1408, width_base=(256, 4, 704), seq_len=512, batch=32,
                scratch_steps=4000, warmup=200, lr=1e-3, eval_every=200, eval_batches=16, log_every=20,
                dtype="bfloat16"),
}

# MSG's mask ramp T as a share of the scratch run's steps: prts' T = 5000 steps × 2.1M tokens / 100B tokens.
RAMP_SHARE = 5000 * 1024 * 2048 / 100e9  # 0.105

# name: (kind, base share x of the scratch run's tokens, extra event fields). Kinds: scratch; stack<g>, zero<g>
# (base = target layers / g); random<g> (base = target layers / g, fresh layers on top: the paper's G↑random with
# MSG's mask ramp, "ramp" in the fields; without it, the unmasked operator); width (the narrower base, grown by
# expand_d_model, add_heads and expand_mlp at steps b, b+1, b+2: all three function-preserving).
RUNS = {
    "scratch": ("scratch", 0.0, {}),
    "stack4_x10": ("stack4", 0.10, {}),
    "stack4_x25": ("stack4", 0.25, {}),
    "stack4_x50": ("stack4", 0.50, {}),
    "stack2_x25": ("stack2", 0.25, {}),
    "zero4_x25": ("zero4", 0.25, {}),
    "random4_x25": ("random4", 0.25, {"ramp": True}),
    "random4_x25_nomask": ("random4", 0.25, {}),
    "width_x25": ("width", 0.25, {}),
    # Optional (`run.py --runs +copy`): G_stack keeping AdamW's moments, new layers' zeroed with their AdamW count
    # at 0 (MSG's `copy`: new blocks are new PyTorch parameters), and the base's schedule.
    "stack4_x25_copy": ("stack4", 0.25, {"opt": "copy", "lr": "continue"}),
}
# The runs of the committed study (3 seeds on a shared 2-core CPU), in the order it runs them: the paper's operator
# comparison at d/D = 25%. `--runs all` adds the d/D sweep (10%, 50%) and g = 2.
CORE = ("scratch", "stack4_x25", "zero4_x25", "random4_x25", "random4_x25_nomask", "width_x25")
SWEEP = ("stack4_x50", "stack4_x10", "stack2_x25")
# How the report and the plot name and colour each run.
LABELS = {
    "scratch": "scratch (target)",
    "stack4_x10": "G_stack g=4, d/D=10%", "stack4_x25": "G_stack g=4, d/D=25%", "stack4_x50": "G_stack g=4, d/D=50%",
    "stack2_x25": "G_stack g=2, d/D=25%", "zero4_x25": "G↑zero g=4, d/D=25%",
    "random4_x25": "G↑random (MSG mask), d/D=25%", "random4_x25_nomask": "fresh layers, no mask, d/D=25%",
    "width_x25": "width FP (Gesmundo), d/D=25%", "stack4_x25_copy": "G_stack g=4, d/D=25%, opt=copy, lr=continue",
}
COLORS = {"scratch": "black", "stack4_x10": "#9ecae1", "stack4_x25": "#3182bd", "stack4_x50": "#08306b",
          "stack2_x25": "tab:purple", "zero4_x25": "tab:green", "random4_x25": "tab:red",
          "random4_x25_nomask": "tab:pink", "width_x25": "tab:orange", "stack4_x25_copy": "tab:cyan"}

# The paper's claims the report checks (run.py computes each verdict from the measurements).
# Du et al., "Stacking Your Transformers" (NeurIPS 2024, arXiv 2405.15319): its operator table (1.1B target, 8e20
# FLOPs; the project page llm-stacking.github.io) and its README (tongxuluo/prts: the growth-timing fit, g = 4).
CLAIMS = {
    "stack": "G_stack (g=4) beats scratch at equal FLOPs, base included (Du et al. 2024; 1.1B: +49.1%, 7B: +54.6%)",
    "zero": "G↑zero ≈ G_stack > scratch (Du et al. 2024, 1.1B: +46.6% vs +49.1%)",
    "random": "G↑random (new layers faded in by MSG's mask) is worse than scratch (Du et al. 2024, 1.1B: −25.7%)",
    "width": "Width growth is ≈ or worse than scratch (Du et al. 2024, 1.1B: G→direct −0.7%, G→zero −17.9%, "
             "G→random −13.8%)",
    "isoflop": "An interior optimum in the growth timing d (Du et al. 2024: IsoFLOP curves; the prts README's fit "
               "of d)",
    "g": "g = 4 is the best growth factor (prts README: \"we fix g=4 is the best\")",
    "fp": "G_stack is not function-preserving: the loss jumps up at the event; the FP operators (G↑zero, the width "
          "path, MSG's mask at m = 0) leave it unchanged (Gesmundo & Maile 2023; Yao et al. 2024)",
}
SPEEDUP_BAND = 0.10  # "≈": two speed-ups within 10 points of each other


def _base(s) -> ml_collections.ConfigDict:
  c = base()
  c.data.document_mask = False  # measured on causal packed rows (before masking was the default)
  c.model.update(d_model=s["d_model"], num_layers=s["layers"], num_heads=s["heads"], mlp_dim=s["mlp_dim"],
                 max_seq_len=s["seq_len"], compute_dtype=s["dtype"])
  c.data.update(name="pystdlib", seq_len=s["seq_len"])
  c.train.update(global_batch=s["batch"], log_every=s["log_every"], eval_every=s["eval_every"],
                 eval_batches=s["eval_batches"], checkpoint_every=5 * s["eval_every"], progress="log",
                 peak_flops=0.0 if s["dtype"] == "bfloat16" else 3e10)  # CPU: skip the peak measurement (MFU unused)
  c.optim.update(lr=s["lr"], warmup_steps=s["warmup"], schedule="cosine")
  # G_stack's code (tongxuluo/prts: pretrain/run_pretrain.py, g_stack.sh)
  c.growth.update(opt="reset", lr="restart_warmup", warmup_steps=-1, peak_lr=0.0)
  return c


def step_flops(c) -> float:
  return flops.train_flops_per_step(c.model, c.data.seq_len, c.train.global_batch)


def budget(size: str) -> float:
  """The study's total FLOPs: the scratch run's S steps of the target."""
  s = SIZES[size]
  return s["scratch_steps"] * step_flops(_base(s))


def events(size: str, run: str) -> tuple[dict, int, dict]:
  """(base model overrides, base steps b, the growth events) of one run."""
  s = SIZES[size]
  kind, x, extra = RUNS[run]
  L = s["layers"]
  b = max(1, round(x * s["scratch_steps"]))
  if kind == "scratch":
    return {}, 0, ()
  if kind == "width":
    d, h, f = s["width_base"]
    ev = ({"step": b, "op": "expand_d_model", "d_model": s["d_model"]},
          {"step": b + 1, "op": "add_heads", "num_heads": s["heads"]},
          {"step": b + 2, "op": "expand_mlp", "mlp_dim": s["mlp_dim"]})
    return dict(d_model=d, num_heads=h, mlp_dim=f), b, tuple({**e, **extra} for e in ev)
  g = int(kind[-1])
  if L % g:
    raise ConfigError(f"{run}: target depth {L} is not a multiple of g={g}")
  op = {"stack": dict(op="stack", g=g), "zero": dict(op="g_zero", g=g),
        "random": dict(op="g_random", num_layers=L)}[kind[:-1]]
  extra = dict(extra)
  if extra.pop("ramp", False):
    op["ramp_steps"] = ramp_steps(size)
  return dict(num_layers=L // g), b, ({"step": b, **op, **extra},)


def ramp_steps(size: str) -> int:
  """MSG's mask ramp T for the size: prts' 5000 steps scaled by the scratch run's tokens (RAMP_SHARE)."""
  return max(1, round(RAMP_SHARE * SIZES[size]["scratch_steps"]))


def get_config(arg="cpu,scratch"):
  size, _, run = (arg or "cpu,scratch").partition(",")
  run = run or "scratch"
  if size not in SIZES or run not in RUNS:
    raise ConfigError(f"unknown variant {arg!r}: use '<size>,<run>', size one of {sorted(SIZES)}, "
                      f"run one of {sorted(RUNS)}")
  s = SIZES[size]
  c = _base(s)
  C = budget(size)
  f_target = step_flops(c)
  over, b, evs = events(size, run)
  if not evs:
    c.train.steps = s["scratch_steps"]
    return c
  c.model.update(**over)
  c.growth.events = evs
  last = evs[-1]["step"]
  c.train.steps = last + 1  # a placeholder for planning: the events' models and FLOPs do not depend on it
  spent = growth.total_flops(growth.plan(c), last)  # base steps, and the width path's one-step intermediate models
  c.train.steps = last + max(1, round((C - spent) / f_target))
  return c


def total_steps_and_flops(size: str, run: str) -> tuple[int, float]:
  """(train.steps, the run's total FLOPs by growth.total_flops): a check that every run ends at the budget."""
  c = get_config(f"{size},{run}")
  return c.train.steps, growth.total_flops(growth.plan(c), c.train.steps)


if __name__ == "__main__":
  for sz in SIZES:
    C_ = budget(sz)
    for r in RUNS:
      n, tf = total_steps_and_flops(sz, r)
      print(f"{sz:5s} {r:16s} steps {n:6d}  total {tf:.4g}  / budget {tf / C_ - 1:+.2e}")
