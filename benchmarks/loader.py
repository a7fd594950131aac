"""Loader throughput: global batches per second from the token cache, with a mixture and packing.

    python benchmarks/loader.py                                   # two pystdlib halves 0.7/0.3, pad packing, masks
    python benchmarks/loader.py --packing concat --no-document_mask --source code=1   # the default job's batches
    python benchmarks/loader.py --source web=0.6:name=files,files=/data/c4/*.parquet --source code=0.4:name=pystdlib
    python benchmarks/loader.py --steps 5 --batch 4 --seq 64 --json out.json          # a check that it runs

What a training run's data thread does per step, timed by the wall clock: `jaxtrain.data.TrainData.batch(step)`
for steps 0 .. --steps-1 (the mixture plan, each source's Feistel order, reading the rows from the memmapped
token caches, whole-document packing and the segment ids and weights of `data.document_mask`), in three ways:

- `numpy`: the whole global batch as numpy arrays, in this thread (what one host of a one-host run reads);
- `sharded`: global jax.Arrays over this machine's devices (`jax.make_array_from_callback`, as the trainer builds
  them; with --cpu_devices N simulated CPU devices);
- `prefetched`: the trainer's background-thread iterator (`TrainData.iterate`), consumed as fast as it yields.

It prints batches/s and tokens/s (global_batch · seq_len per batch) of each, the packing efficiency, and the
machine; `--json PATH` writes the same (benchmarks/throughput.py's writer). Each source's token cache is built
(and its dataset prepared) before anything is timed; the first pass over the rows warms the page cache.

`--source NAME=WEIGHT[:field=value,...]` (repeatable) names a mixture source: its weight and the `data` fields it
sets (`name`, `files`, `text_glob`, `train_split`, ...); without any, two halves of the embedded corpus
(`pystdlib`, train[:50%] at 0.7 and train[50%:] at 0.3). A single `--source` is a mixture of one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import write_json  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_SOURCES = ("code=0.7:name=pystdlib,train_split=train[:50%]", "more=0.3:name=pystdlib,train_split=train[50%:]")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--source", action="append", default=[], help="NAME=WEIGHT[:field=value,...] (repeatable)")
  p.add_argument("--data_dir", default="~/.cache/jaxtrain/tensorflow_datasets", help="data.data_dir")
  p.add_argument("--tokenizer", default="byte", help="data.tokenizer")
  p.add_argument("--seq", type=int, default=256, help="data.seq_len")
  p.add_argument("--batch", type=int, default=32, help="train.global_batch")
  p.add_argument("--steps", type=int, default=200, help="batches timed per way")
  p.add_argument("--packing", default="pad", choices=("concat", "pad"), help="data.packing")
  p.add_argument("--document_mask", action=argparse.BooleanOptionalAction, default=True, help="data.document_mask")
  p.add_argument("--block", type=int, default=2048, help="data.mixture_block_size")
  p.add_argument("--cpu_devices", type=int, default=0, help="simulated CPU devices for `sharded` (0: as JAX finds)")
  p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
  return p.parse_args(argv)


def parse_source(spec: str) -> tuple[str, dict]:
  """'web=0.6:name=files,files=/d/*.parquet' -> ('web', {'weight': 0.6, 'name': 'files', 'files': '/d/*.parquet'})."""
  head, _, fields = spec.partition(":")
  name, _, weight = head.partition("=")
  out = {"weight": float(weight or 1)}
  for item in filter(None, fields.split(",")):
    key, _, value = item.partition("=")
    out[key] = value
  return name, out


def data_config(args):
  from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
  c = cfg_lib.base().data
  c.update(dict(data_dir=args.data_dir, tokenizer=args.tokenizer, seq_len=args.seq, packing=args.packing,
                document_mask=args.document_mask, mixture_block_size=args.block))
  c.mixture = dict(parse_source(s) for s in (args.source or DEFAULT_SOURCES))
  return c


def timed(make, steps: int) -> float:
  t0 = time.perf_counter()
  for s in range(steps):
    make(s)
  return time.perf_counter() - t0


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.cpu_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxtrain import data  # pylint: disable=g-import-not-at-top

  c = data_config(args)
  t0 = time.perf_counter()
  td = data.TrainData(c, seq_len=args.seq, global_batch=args.batch, seed=0)  # builds the token caches
  setup = time.perf_counter() - t0
  devices = jax.devices()
  n = len(devices) if args.batch % len(devices) == 0 else 1
  mesh = jax.make_mesh((n,), ("data",), devices=devices[:n])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
  td.batch(0)  # the first read of each source's rows
  tokens = args.batch * args.seq
  res = {"numpy": timed(td.batch, args.steps),
         "sharded": timed(lambda s: jax.block_until_ready(td.batch(s, sharding)), args.steps)}
  with td.iterate(0, sharding) as it:
    res["prefetched"] = timed(lambda _: jax.block_until_ready(next(it)), args.steps)
  ways = {k: {"seconds": v, "batches_per_second": args.steps / v, "tokens_per_second": args.steps * tokens / v}
          for k, v in res.items()}
  shares = td.plan.rows_before(args.steps) / (args.steps * args.batch)
  efficiency = float(np.mean([td.log_fields(s + 1, s).get("packing_efficiency", 1.0) for s in range(args.steps)]))
  machine = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "platform": devices[0].platform, "device_kind": devices[0].device_kind, "device_count": len(devices),
             "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "jax": jax.__version__,
             "python": platform.python_version()}
  print(f"date:     {machine['date']}")
  print(f"machine:  {machine['platform']} / {machine['device_kind']} x{machine['device_count']}, "
        f"{machine['cpu_count']} CPUs ({machine['cpu']}), jax {machine['jax']}")
  print(f"data:     {', '.join(f'{k} {w:.2f}' for k, w in zip(td.sources, shares))} (rows' shares), "
        f"{args.packing} packing, document_mask={args.document_mask}, block {td.plan.L} rows; "
        f"batch {args.batch} x {args.seq}; packing efficiency {efficiency:.3f}; caches opened in {setup:.1f} s")
  print(f"{'way':<11} {'batches/s':>10} {'tokens/s':>14}")
  for k, v in ways.items():
    print(f"{k:<11} {v['batches_per_second']:>10.1f} {v['tokens_per_second']:>14,.0f}")
  return write_json(args.json, {
      "benchmark": "loader", "machine": machine, "steps": args.steps, "global_batch": args.batch, "seq_len": args.seq,
      "packing": args.packing, "document_mask": args.document_mask, "mixture_block_rows": td.plan.L,
      "sources": {k: dict(c.mixture[k]) | {"share": float(s)} for k, s in zip(td.sources, shares)},
      "packing_efficiency": efficiency, "setup_seconds": setup, "ways": ways})


if __name__ == "__main__":
  main()
