"""Decode speed: tokens/s of generation with the KV cache against the windowed sampler, the same model and prompts.

    python benchmarks/decode.py                                   # d 512, 4 layers, prompt 128, 128 new tokens
    python benchmarks/decode.py --batch 8 --new 256 --json out.json
    python benchmarks/decode.py --d_model 64 --layers 1 --heads 2 --prompt 8 --new 8 --max_len 64 --repeats 1

Both methods are `jaxtrain.sample.generate` on fresh parameters (greedy, temperature 0): `cache` prefills the
prompt once and decodes one position per token against a KV cache (jaxtrain/decode.py); `window` runs the whole
window (prompt and tokens so far, padded to a power of two) per token. Each is compiled by a first call, then
timed `--repeats` times (median); decode tokens/s = batch · new tokens / the call's time (prefill included, as a
user waits for it). The tokens of the two are compared (greedy: equal up to float rounding of near-ties).
It prints the machine (as benchmarks/throughput.py does) and writes the figures with `--json`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import write_json  # noqa: E402  (the shared --json writer)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=0, help="grouped-query kv heads (0: as many as --heads)")
  p.add_argument("--vocab", type=int, default=256)
  p.add_argument("--max_len", type=int, default=512, help="model.max_seq_len: the cache's largest size")
  p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
  p.add_argument("--new", type=int, default=128, help="new tokens per row")
  p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per method (after one compiling call)")
  p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxtrain import config as cfg_lib, model, run, sample  # pylint: disable=g-import-not-at-top

  c = cfg_lib.base()
  c.model.update(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                 num_kv_heads=args.kv_heads or None, vocab_size=args.vocab, max_seq_len=args.max_len,
                 compute_dtype=args.dtype)
  dev = jax.devices()[0]
  machine = {
      "platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
  }
  print(f"date:     {machine['date']}")
  print(f"machine:  {machine['platform']} / {machine['device_kind']} x{machine['device_count']}, "
        f"{machine['cpu_count']} CPUs ({machine['cpu']}), jax {machine['jax']}")
  params = jax.device_put(model.init(c.model, jax.random.key(0)), dev)
  mdl = run.Model(c, model.abstract(c.model)[0], params, step=0)
  n_params = model.count_params(params)
  print(f"model:    d_model {args.d_model}, {args.layers} layers, {args.heads} heads "
        f"({cfg_lib.num_kv_heads(c.model)} kv), vocab {args.vocab}, max_seq_len {args.max_len}, compute {args.dtype}; "
        f"{n_params / 1e6:.2f}M parameters")
  print(f"decode:   batch {args.batch}, prompt {args.prompt} tokens, {args.new} new tokens, greedy")
  prompt = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.prompt)).astype(np.int32)

  res = {"machine": machine, "config": vars(args) | {"params": n_params}, "methods": {}}
  outs = {}
  for method in ("cache", "window"):
    t0 = time.perf_counter()
    outs[method] = sample.generate(mdl, prompt, args.new, temperature=0.0, method=method)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      sample.generate(mdl, prompt, args.new, temperature=0.0, method=method)  # returns numpy: waited for
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rate = args.batch * args.new / med
    res["methods"][method] = {"first_call_s": first, "times_s": times, "median_s": med, "tokens_per_s": rate}
    print(f"{method:7s}   {rate:12,.1f} tokens/s (median of {args.repeats}: {med * 1e3:.1f} ms per call; "
          f"first call with compiling {first:.1f} s)")
  speedup = res["methods"]["cache"]["tokens_per_s"] / res["methods"]["window"]["tokens_per_s"]
  same = float((outs["cache"] == outs["window"]).mean())
  res |= {"speedup": speedup, "same_tokens_fraction": same}
  print(f"speed-up: {speedup:.2f}x (KV cache over window); the same greedy tokens: {same:.1%}")
  return write_json(args.json, res)


if __name__ == "__main__":
  main()
