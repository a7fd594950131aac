"""FP8 step throughput: μS FP8, μS BF16, SP BF16 and SP delayed-scaling FP8, at several widths, in one run.

    python benchmarks/fp8.py                                   # widths 1024..8192 (a GPU: H100/H200)
    python benchmarks/fp8.py --widths 64,128 --layers 2 --seq 64 --batch 4 --vocab 256 --dtype float32 --steps 3

Each variant is the real train step (`jaxtrain.train.build`, AdamW) on random tokens:

    sp_bf16       the standard model (Pre-LN, SwiGLU), no FP8           the baseline
    mus_bf16      μnit Scaling (Res-Post-LN, GELU, unit init), no FP8
    mus_fp8       μnit Scaling, static FP8 in every hidden matmul       (model.fp8=static)
    delayed_fp8   the standard model with delayed-scaling FP8           (model.fp8=delayed: MaxText's/Flax's recipe)

It prints this machine's matmul ceiling in the compute dtype and in FP8 (E4M3 × E4M3, as the FP8 linears run
it), then per width and variant: step time (median), tokens/s and the speed-up over sp_bf16. The issue's target
on an H100/H200: mus_fp8 ≥ 1.3× sp_bf16 at d_model ≥ 4096. On CPU FP8 is emulated in float32: the figures show
the script works, not FP8's speed. Heads are d_model/128 (head_dim 128), the MLP 4·d (GELU) or 8/3·d (SwiGLU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import import_train  # noqa: E402  (jaxtrain.train without the data pipeline)

VARIANTS = ("sp_bf16", "mus_bf16", "mus_fp8", "delayed_fp8")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--widths", default="1024,2048,4096,8192", help="d_model values, comma-separated")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {VARIANTS}")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--head_dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype (float32 on CPU)")
  p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--ceiling_n", type=int, default=4096, help="square matmul size for the ceilings")
  p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
  return p.parse_args(argv)


def make_config(args, variant: str, d: int):
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  c = cfg_lib.base()
  c.model.update(d_model=d, num_layers=args.layers, num_heads=max(d // args.head_dim, 1), vocab_size=args.vocab,
                 compute_dtype=args.dtype, max_seq_len=max(args.seq, c.model.max_seq_len))
  if variant.startswith("mus"):
    c.model.update(parametrization="mus", mlp="gelu", tie_embeddings=False)
    c.model.norm.update(kind="layernorm", placement="res_post", res_post_tau=0.4)
  c.model.fp8 = {"mus_fp8": "static", "delayed_fp8": "delayed"}.get(variant, "none")
  c.data.seq_len = args.seq
  steps = args.warmup + args.steps + 1
  c.train.update(global_batch=args.batch, steps=steps)
  c.optim.warmup_steps = min(c.optim.warmup_steps, steps)
  return c


def matmul_ceiling(dtype, n: int, fp8: bool, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` n×n×n matmuls: in `dtype`, or with E4M3 operands accumulating to `dtype`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  if fp8:
    a, b = a.astype(jnp.float8_e4m3fn), b.astype(jnp.float8_e4m3fn)
  f = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=dtype))
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def time_variant(args, variant: str, d: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxtrain import flops, model, preflight, sharding  # pylint: disable=g-import-not-at-top
  train = import_train()
  config = make_config(args, variant, d)
  m, t = config.model, config.train
  mesh = sharding.make_mesh(preflight.validate(config, jax.device_count(), platform=jax.devices()[0].platform))
  prog = train.build(config, mesh)
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  rng = np.random.default_rng(0)
  tok = rng.integers(0, m.vocab_size, (t.global_batch, config.data.seq_len + 1), dtype=np.int32)
  batch = {k: jax.device_put(v, batch_sh) for k, v in (("inputs", tok[:, :-1]), ("targets", tok[:, 1:]))}
  state = prog.init(jax.random.key(0))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = prog.train_step.jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    s = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - s)
  med = statistics.median(times)
  tokens = t.global_batch * config.data.seq_len
  return {"variant": variant, "d_model": d, "params": model.count_params(prog.abstract_state["params"]),
          "step_time_median_s": med, "tokens_per_s": tokens / med, "compile_s": compile_s,
          "model_flops_per_s": flops.train_flops_per_step(m, config.data.seq_len, t.global_batch) / med,
          "loss": float(metrics["loss"])}


def main(argv=None) -> dict:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  dtype = jnp.dtype(args.dtype)
  variants = [v for v in args.variants.split(",") if v]
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    sys.exit(f"unknown variants {sorted(unknown)}: choose from {VARIANTS}")
  ceilings = {args.dtype: matmul_ceiling(dtype, args.ceiling_n, fp8=False),
              "fp8_e4m3": matmul_ceiling(dtype, args.ceiling_n, fp8=True)}
  print(f"machine:  {dev.platform} / {dev.device_kind} x{jax.device_count()}, jax {jax.__version__}")
  print(f"ceiling:  {args.ceiling_n}^3 matmul: "
        + ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in ceilings.items()))
  print(f"batch:    {args.batch} x {args.seq} tokens, {args.layers} layers, vocab {args.vocab}, compute {args.dtype}")
  print(f"{'d_model':>8} {'variant':>12} {'params':>9} {'step ms':>9} {'tokens/s':>11} {'TFLOP/s':>8} "
        f"{'vs sp_bf16':>10} {'compile s':>9}")
  rows = []
  for d in [int(w) for w in args.widths.split(",") if w]:
    base = None
    for variant in variants:
      r = time_variant(args, variant, d)
      base = r["step_time_median_s"] if variant == "sp_bf16" else base
      r["speedup_vs_sp_bf16"] = base / r["step_time_median_s"] if base else None
      rows.append(r)
      speed = f"{r['speedup_vs_sp_bf16']:.2f}x" if base else "-"
      print(f"{d:>8} {variant:>12} {r['params'] / 1e6:>8.1f}M {r['step_time_median_s'] * 1e3:>9.1f} "
            f"{r['tokens_per_s']:>11,.0f} {r['model_flops_per_s'] / 1e12:>8.3f} {speed:>10} {r['compile_s']:>9.1f}")
  result = {"machine": {"platform": dev.platform, "device_kind": dev.device_kind, "jax": jax.__version__},
            "ceilings_flops_per_s": ceilings, "args": vars(args), "rows": rows}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
