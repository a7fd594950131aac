"""Training throughput of the real jaxtrain train step on random tokens.

    python benchmarks/throughput.py                       # the issue's benchmark config
    python benchmarks/throughput.py --dtype bfloat16 --batch 32 --json out.json
    python benchmarks/throughput.py --size 1b             # on one GPU: LLaMA-style ~1B, bf16, seq 2048
    python benchmarks/throughput.py --compare-torch       # CPU: against PyTorch eager and torch.compile, same run

`--size` sets a single-GPU preset (SIZES: 125m, 350m, 1b at seq 2048, a 32000-token vocabulary, bfloat16
compute, `model.attention=auto`, i.e. cuDNN's fused kernel on a GPU); flags given after it still apply.

Builds the model, optimizer and train step with `jaxtrain.train.build`, as
`jaxtrain.train.train` does (the same mesh, shardings, donation and malloc
setting), compiles it once, runs `--warmup` steps, then times `--steps` steps one
by one (each ended by block_until_ready, each followed by a ceiling matmul) and prints: step time (median, best),
tokens/s, model FLOP/s by `jaxtrain.flops.train_flops_per_step`, this machine's
measured matmul ceiling (the best of several square sizes) and the ratio of the
two, compile time and the compiled step's per-device memory. The ceiling is
measured before and after the timed steps and the higher figure is used, so a
machine that was briefly busy does not lower the ceiling (and flatter the ratio).

No dataset is read: the batch is uniform random tokens, so this runs on a machine
without grain or tensorflow-datasets. See benchmarks/README.md for results.

`--compare-torch` runs this benchmark and benchmarks/torch_reference.py (the same model in PyTorch) in eager
and torch.compile modes, each in a process of its own, one after another, for `--rounds` rounds in a rotated
order (a slow minute then hits every contender alike), and prints one table: tokens/s of each, the ratios, and
the matmul ceilings of XLA and of torch.mm measured inside each run. It also checks that both models have the
same parameter count and a loss at init near ln V.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types



# Single-GPU presets (d_model, layers, heads, global batch): GPT-3 125M and 350M shapes, a LLaMA-style ~1B.
SIZES = {"125m": (768, 12, 12, 16), "350m": (1024, 24, 16, 8), "1b": (2048, 18, 16, 8)}


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """The flags this benchmark and benchmarks/torch_reference.py share: the timing, the model, the ceiling."""
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
  p.add_argument("--vocab", type=int, default=256)
  p.add_argument("--ceiling_sizes", default="512,1024,1536,2048,3072",
                 help="square matmul sizes n for the ceiling; the best rate is the ceiling")
  p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")


def write_json(path: str | None, res: dict) -> dict:
  """`res`, also written to `path` where one was given (--json)."""
  if path:
    with open(path, "w") as f:
      json.dump(res, f, indent=2)
    print(f"wrote {path}")
  return res


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--size", choices=sorted(SIZES), help="a single-GPU preset (sets the sizes below, bf16, seq 2048)")
  add_model_flags(p)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype")
  p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  p.add_argument("--attention", default="auto", choices=("auto", "blocked", "xla", "cudnn"), help="model.attention")
  p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True, help="scan_layers")
  p.add_argument("--docs", type=int, default=0, help="documents per row, kept apart by data.document_mask (the "
                 "default job's setting); 0: causal rows, document_mask off (what --compare-torch's peers run)")
  p.add_argument("--compare-torch", action="store_true",
                 help="run this and benchmarks/torch_reference.py (eager, compile) in turn; one table (float32 only)")
  p.add_argument("--rounds", type=int, default=3, help="--compare-torch: rounds of the three runs")
  args = p.parse_args(argv)
  if args.size:  # the preset's values where the flag was left at its default
    d, layers, heads, batch = SIZES[args.size]
    preset = dict(d_model=d, layers=layers, heads=heads, batch=batch, seq=2048, vocab=32000, dtype="bfloat16")
    for k, v in preset.items():
      if getattr(args, k) == p.get_default(k):
        setattr(args, k, v)
  return args


def import_train():
  """jaxtrain.train without jaxtrain.data (grain, tensorflow-datasets), which the benchmark never uses.

  train.py imports `data` at module level for `train()`; the step builders do not
  touch it, so an empty stand-in module is enough if the real one is not loaded yet.
  """
  if "jaxtrain.data" not in sys.modules:
    stub = types.ModuleType("jaxtrain.data")
    stub.__doc__ = "stand-in installed by benchmarks/throughput.py: no data pipeline is needed"
    sys.modules["jaxtrain.data"] = stub
  from jaxtrain import train  # pylint: disable=g-import-not-at-top
  return train


def make_config(args):
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  c = cfg_lib.base()
  c.model.update(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads, vocab_size=args.vocab,
                 compute_dtype=args.dtype, remat=args.remat, scan_layers=args.scan, attention=args.attention,
                 max_seq_len=max(args.seq, c.model.max_seq_len))
  c.data.update(seq_len=args.seq, document_mask=args.docs > 0)
  steps = args.warmup + args.steps + 1
  c.train.update(global_batch=args.batch, steps=steps)
  c.optim.warmup_steps = min(c.optim.warmup_steps, steps)
  return c


def mib(n):
  return n / 2**20


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.compare_torch:
    return compare_torch(args)
  from jaxtrain import malloc  # pylint: disable=g-import-not-at-top
  # As `python -m jaxtrain` does, before JAX starts; from the command line only, since it may restart the process.
  malloc_tuned = malloc.tune_process() if argv is None else "default"

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxtrain import config as cfg_lib, flops, model, preflight, sharding  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import packing  # pylint: disable=g-import-not-at-top
  train = import_train()

  config = make_config(args)
  m, t = config.model, config.train
  mesh_shape = preflight.validate(config, jax.device_count())
  dev = jax.devices()[0]
  machine = {
      "platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
      "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuned": malloc_tuned,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
  }
  print(f"date:     {machine['date']}")
  print(f"machine:  {machine['platform']} / {machine['device_kind']} x{machine['device_count']}, "
        f"{machine['cpu_count']} CPUs ({machine['cpu']}), jax {machine['jax']}")
  print(f"XLA_FLAGS: {machine['xla_flags'] or '(none)'}; malloc: "
        f"{'default (not tuned)' if malloc_tuned == 'default' else 'jaxtrain.malloc.tune_process() via ' + malloc_tuned}")

  # ------------------------------------------------ model, optimizer, steps: train.build, as train.train() does
  mesh = sharding.make_mesh(mesh_shape)
  prog = train.build(config, mesh)
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  n_params = model.count_params(prog.abstract_state["params"])
  F = cfg_lib.mlp_dim(m)
  print(f"model:    d_model {m.d_model}, {m.num_layers} layers, {m.num_heads} heads, mlp {m.mlp} {F}, "
        f"vocab {m.vocab_size}, {m.norm.kind} ({m.norm.placement}), tied={m.tie_embeddings}, "
        f"scan={m.scan_layers}, remat={m.remat}, compute {m.compute_dtype}; {n_params / 1e6:.2f}M parameters")
  print(f"batch:    {t.global_batch} x {config.data.seq_len} tokens, AdamW (jaxtrain.optim.make)"
        + (f", {args.docs} documents per row (data.document_mask)" if args.docs else ", causal rows"))
  state = prog.init(jax.random.key(config.seed))
  jitted = prog.train_step.jitted

  rng = np.random.default_rng(0)
  def random_batch():
    tok = rng.integers(1, m.vocab_size, (t.global_batch, config.data.seq_len + 1), dtype=np.int32)
    for row in tok if args.docs else ():  # docs - 1 end-of-document tokens (id 0) per row, at random places
      row[rng.choice(config.data.seq_len, args.docs - 1, replace=False)] = 0
    fields = {"inputs": tok[:, :-1], "targets": tok[:, 1:]}
    if args.docs:
      fields["segment_ids"], fields["weights"] = packing.segments(tok, eos_id=0)
    return {k: jax.device_put(v, batch_sh) for k, v in fields.items()}
  batches = [random_batch() for _ in range(4)]

  # ------------------------------------------------ ceiling, measured before and after the steps (the best counts)
  sizes = [int(n) for n in args.ceiling_sizes.split(",") if n]
  before = {n: flops.time_matmul(m.compute_dtype, n) for n in sizes}

  # ------------------------------------------------ compile
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = jitted.lower(state, batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  memory = {k: getattr(mem, f"{k}_size_in_bytes", None) for k in
            ("argument", "output", "alias", "temp", "generated_code")} if mem is not None else {}
  print(f"compile:  {t2 - t0:.2f} s (trace+lower {t1 - t0:.2f} s, XLA compile {t2 - t1:.2f} s)")
  if memory:
    print("memory:   per device: " + ", ".join(f"{k} {mib(v):.1f} MiB" for k, v in memory.items() if v is not None))

  # ------------------------------------------------ run: each step paired with a ceiling matmul right after it
  # A shared or throttled machine changes speed from minute to minute; the paired ratio
  # compares a step with the ceiling measured under the same conditions.
  pair_n = max(before, key=before.get)
  init_loss = None
  for i in range(args.warmup):
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    init_loss = float(metrics["loss"]) if i == 0 else init_loss  # the loss of the parameters at init
  times, paired = [], []
  for i in range(args.steps):
    s = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - s)
    paired.append(flops.time_matmul(m.compute_dtype, pair_n, repeats=3))
  loss = float(metrics["loss"])

  by_size = {n: max(before[n], flops.time_matmul(m.compute_dtype, n)) for n in sizes}
  best_n = max(by_size, key=by_size.get)
  ceiling = by_size[best_n] * jax.process_count()  # per host, like flops.peak_flops on CPU
  table_peak, table_src = flops.peak_flops(m.compute_dtype, devices=jax.devices()) if dev.platform != "cpu" else (None, None)

  step_flops = flops.train_flops_per_step(m, config.data.seq_len, t.global_batch)
  tokens = t.global_batch * config.data.seq_len
  med, best = statistics.median(times), min(times)
  res = {
      "machine": machine,
      "config": {"d_model": m.d_model, "layers": m.num_layers, "heads": m.num_heads, "mlp_dim": F,
                 "seq": config.data.seq_len, "batch": t.global_batch, "vocab": m.vocab_size,
                 "dtype": m.compute_dtype, "remat": m.remat, "scan": m.scan_layers, "params": n_params},
      "steps": args.steps, "warmup": args.warmup, "init_loss": init_loss, "final_loss": loss,
      "step_time_median_s": med, "step_time_best_s": best,
      "tokens_per_s_median": tokens / med, "tokens_per_s_best": tokens / best,
      "model_flops_per_step": step_flops,
      "model_flops_per_s_median": step_flops / med, "model_flops_per_s_best": step_flops / best,
      "ceiling_flops_per_s": ceiling, "ceiling_matmul_n": best_n,
      "ceiling_by_size": {str(n): r for n, r in by_size.items()},
      "ratio_median": step_flops / med / ceiling, "ratio_best": step_flops / best / ceiling,
      "ratio_paired_median": statistics.median(step_flops / t / c for t, c in zip(times, paired)),
      "paired_ceiling_n": pair_n, "paired_ceiling_median_flops_per_s": statistics.median(paired),
      "compile_s": t2 - t0, "lower_s": t1 - t0, "xla_compile_s": t2 - t1, "memory_bytes": memory,
      "step_times_s": times,
  }
  if table_peak and math.isfinite(table_peak):  # nan: an accelerator the table lacks
    res.update(table_peak_flops_per_s=table_peak, table_peak_source=table_src, mfu_median=step_flops / med / table_peak)

  print(f"steps:    {args.steps} timed after {args.warmup} warmup; final loss {loss:.3f}")
  print(f"step:     median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms")
  print(f"tokens/s: median {tokens / med:,.0f}, best {tokens / best:,.0f}")
  print(f"model:    {step_flops / 1e9:.3f} GFLOP/step -> {step_flops / med / 1e9:.1f} GFLOP/s median, "
        f"{step_flops / best / 1e9:.1f} best")
  print("ceiling:  " + ", ".join(f"{n}^3 {r / 1e9:.1f}" for n, r in by_size.items())
        + f" GFLOP/s ({m.compute_dtype} matmul)")
  print(f"          ceiling = {ceiling / 1e9:.1f} GFLOP/s (n={best_n})")
  print(f"ratio:    {res['ratio_median']:.1%} of the ceiling (median step), {res['ratio_best']:.1%} (best step)")
  print(f"paired:   {res['ratio_paired_median']:.1%} (median over steps of step FLOP/s / a {pair_n}^3 matmul timed right "
        f"after it; those matmuls: median {res['paired_ceiling_median_flops_per_s'] / 1e9:.1f} GFLOP/s)")
  if "mfu_median" in res:
    print(f"MFU:      {res['mfu_median']:.1%} of {table_peak / 1e12:.0f} TFLOP/s ({table_src})")
  return write_json(args.json, res)


CONTENDERS = ("jaxtrain", "torch eager", "torch compile")


def compare_torch(args) -> dict:
  """jaxtrain against PyTorch eager and torch.compile: each run in its own process, rounds in rotated order."""
  if args.dtype != "float32" or args.size:
    raise SystemExit("throughput.py: error: --compare-torch compares the float32 CPU benchmark; drop --dtype/--size")
  here = os.path.dirname(os.path.abspath(__file__))
  sizes = [f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "d_model", "layers", "heads", "seq", "batch",
                                                 "vocab", "ceiling_sizes")]
  commands = {
      "jaxtrain": [sys.executable, os.path.join(here, "throughput.py"), *sizes, f"--remat={args.remat}",
                   f"--attention={args.attention}", "--scan" if args.scan else "--no-scan"],
      "torch eager": [sys.executable, os.path.join(here, "torch_reference.py"), *sizes, "--mode=eager"],
      "torch compile": [sys.executable, os.path.join(here, "torch_reference.py"), *sizes, "--mode=compile"],
  }
  runs = {k: [] for k in CONTENDERS}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for name in CONTENDERS[r % 3:] + CONTENDERS[:r % 3]:  # rotated: nobody always runs first or last
        path = os.path.join(tmp, f"{r}-{name.replace(' ', '_')}.json")
        print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
        out = subprocess.run(commands[name] + [f"--json={path}"], capture_output=True, text=True)
        if out.returncode:
          sys.stderr.write(out.stdout + out.stderr)
          raise SystemExit(f"throughput.py: error: the {name} run failed (exit {out.returncode})")
        with open(path) as f:
          res = json.load(f)
        runs[name].append(res)
        print(f"  median {res['step_time_median_s'] * 1e3:.1f} ms/step, {res['tokens_per_s_median']:,.0f} tokens/s; "
              f"matmul ceiling {res['ceiling_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)

  jax_res, eager = runs["jaxtrain"][0], runs["torch eager"][0]
  n_jax, n_torch = jax_res["config"]["params"], eager["config"]["params"]
  step_flops = jax_res["model_flops_per_step"]
  print(f"\nmodel:    {n_jax:,} parameters in jaxtrain, {n_torch:,} in PyTorch"
        + (" (equal)" if n_jax == n_torch else "  <-- DIFFERENT MODELS"))
  loss = lambda x: "-" if x is None else f"{x:.4f}"  # jaxtrain's is the first warmup step's
  print(f"init:     loss {loss(jax_res['init_loss'])} (jaxtrain), {loss(eager['init_loss'])} (PyTorch); "
        f"ln V = {math.log(args.vocab):.4f}")
  print(f"machine:  {jax_res['machine']['cpu_count']} CPUs, jax {jax_res['machine']['jax']}, "
        f"torch {eager['machine']['torch']}; {args.rounds} rounds x {args.steps} steps")
  print("\n| run | step median (best of rounds) | tokens/s median (range) | model GFLOP/s | "
        "matmul ceiling in its runs | of the ceiling |")
  print("|---|---|---|---|---|---|")
  summary = {}
  for name in CONTENDERS:
    rs = runs[name]
    tps = [r["tokens_per_s_median"] for r in rs]
    med = statistics.median(r["step_time_median_s"] for r in rs)
    ceil = statistics.median(r["ceiling_flops_per_s"] for r in rs)
    lib = "XLA" if name == "jaxtrain" else "torch.mm"
    summary[name] = {"tokens_per_s_median": statistics.median(tps), "tokens_per_s_by_round": tps,
                     "step_time_median_s": med, "ceiling_flops_per_s": ceil, "ceiling_library": lib}
    print(f"| {name} | {med * 1e3:.1f} ms ({min(r['step_time_best_s'] for r in rs) * 1e3:.1f}) | "
          f"{statistics.median(tps):,.0f} ({min(tps):,.0f}-{max(tps):,.0f}) | {step_flops / med / 1e9:.1f} | "
          f"{ceil / 1e9:.1f} ({lib}) | {step_flops / med / ceil:.1%} |")
  ratios = {}
  for other in CONTENDERS[1:]:  # per round (the runs of one round are minutes apart), then the median
    per_round = [j["tokens_per_s_median"] / o["tokens_per_s_median"] for j, o in zip(runs["jaxtrain"], runs[other])]
    ratios[other] = {"median": statistics.median(per_round), "by_round": per_round}
    print(f"\njaxtrain / {other}: {statistics.median(per_round):.2f}x tokens/s (rounds: "
          + ", ".join(f"{x:.2f}" for x in per_round) + ")", end="")
  print()
  return write_json(args.json, {"params": {"jaxtrain": n_jax, "torch": n_torch}, "summary": summary,
                                "ratios": ratios, "runs": runs})


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
