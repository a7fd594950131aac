"""The token cache: a split tokenized once into one flat array on disk, read back as a memmap.

As Levanter's tokenized cache and nanoGPT's `train.bin`: the split's documents, in
order, are tokenized and each followed by eos, and the ids concatenated into
`tokens.bin` (uint16 when the vocabulary fits, else int32). `meta.json` beside it
holds the counts, `eos_id` and a sha256 of the tokens, the fingerprint a resume checks.

The end-of-document convention, which packing's segment ids derive from: the
stream is `d0 EOD d1 EOD ... dn EOD`, exactly one EOD (`meta["eos_id"]`, the
tokenizer's `eos_id`) after every document, the EOD being its document's last
token; no tokenizer produces that id from text (tokenizer.py), no BOS is added, an
empty document is a lone EOD.

The cache lives in `{data.data_dir}/token_cache/<dataset>.<split>.<tokenizer>/`,
keyed by the dataset's identity (a TFDS full name, name/config/version, where for
`pystdlib` and `text_files` the config name hashes the file set; for
`data.name=files` a hash of the files' contents, files.py), the split and the
tokenizer's identity (for a file, a hash of it; for a tokenizer.json, also its EOD
id). The first process to take the lock builds it into a temporary directory
and renames it into place; the others wait, then read it. Building is
deterministic, so hosts that share no disk each build the same bytes.

With `data.data_dir` in a bucket the memmapped copy lives in the data dir's
local mirror (sources.local_dir) and the bucket's `token_cache/` shares it: a
host fetches it from there (checking its sha256) if any host or earlier run has
uploaded it, else builds it and uploads it (tokens.bin first, meta.json last: a
reader takes meta.json as the sign that the cache is complete).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import functools
import glob
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time

from etils import epath
import ml_collections
import numpy as np

from jaxtrain import paths
from jaxtrain.data import files, sources
from jaxtrain.data.errors import DataError
from jaxtrain.data.tokenizer import make_tokenizer

FORMAT = 1                 # part of the directory name: bump it when the layout changes
DOCS_PER_CHUNK = 512       # documents read and tokenized at once (one worker task)


@dataclasses.dataclass(frozen=True)
class TokenCache:
  tokens: np.ndarray       # uint16 or int32 [num_tokens], a read-only memmap
  meta: dict               # dataset, split, tokenizer, dtype, num_documents, num_tokens, sha256, ...
  path: str

  @property
  def fingerprint(self) -> str:
    return self.meta["sha256"][:16]


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _tokenize(docs, tok, dtype: str) -> np.ndarray:
  """The tokens of `docs` (str or bytes), each document followed by eos."""
  eos = np.array([tok.eos_id], np.int32)
  if not docs:
    return np.zeros(0, dtype)
  return np.concatenate([a for ids in tok.encode_batch(docs) for a in (ids, eos)]).astype(dtype)


def _one_thread_each() -> None:
  """A worker's initializer: the pool is the parallelism, so `tokenizers` runs one thread per worker."""
  os.environ["TOKENIZERS_PARALLELISM"] = "false"


@functools.lru_cache(maxsize=2)
def _open_in_worker(cfg_json: str, split: str, tfds: bool):
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))
  return sources.open_split(cfg, split) if tfds else None, make_tokenizer(cfg)


def _worker_tokenize(cfg_json: str, split: str, task, dtype: str) -> np.ndarray:
  """`_tokenize` of one task in a worker process, which opens the split (TFDS) and the tokenizer once."""
  opened, tok = _open_in_worker(cfg_json, split, not isinstance(task, files.Chunk))
  return _tokenize(sources.documents(opened, task), tok, dtype)


def load(data_cfg, split: str) -> TokenCache:
  """The token cache of `split` of `data_cfg`, built on first use (`data.num_workers` processes tokenize); with a
  bucket data_dir, fetched from the bucket if it is there (module docstring)."""
  ddir = sources.data_dir(data_cfg)
  remote = paths.is_remote(ddir)
  # From a bucket, a TFDS dataset is copied to the local mirror only if the cache must be built from it.
  opened, tok = sources.open_split(data_cfg, split, stage=not remote), make_tokenizer(data_cfg)
  name = _safe(f"{opened.identity}.{split}.{tok.identity}.v{FORMAT}")
  root = os.path.join(sources.local_dir(ddir), "token_cache")
  final = os.path.join(root, name)
  shared = paths.resolve(ddir) / "token_cache" / name if remote else None
  if not os.path.isfile(os.path.join(final, "meta.json")):
    try:
      os.makedirs(root, exist_ok=True)
      with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait here, then find it built
        if not os.path.isfile(os.path.join(final, "meta.json")):
          for stale in glob.glob(final + ".incomplete-*"):  # left by a builder killed mid-way (it held the lock)
            shutil.rmtree(stale, ignore_errors=True)
          if shared is not None and (shared / "meta.json").exists():
            _fetch(shared, root, final)
          else:
            if isinstance(opened, sources.Split) and opened.source is None:
              opened = sources.open_split(data_cfg, split)  # the dataset, copied from the bucket now
            _build(data_cfg, split, opened, tok, root, final)
            if shared is not None:
              _upload(final, shared)
    except OSError as e:
      raise DataError(f"cannot write the token cache in {root} ({e}): set --config.data.data_dir "
                      "to a writable directory" + (" or JAXTRAIN_BUCKET_CACHE to a writable local one" if remote
                                                    else "")) from e
  with open(os.path.join(final, "meta.json")) as f:
    meta = json.load(f)
  tokens = np.memmap(os.path.join(final, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))
  return TokenCache(tokens, meta, final)


def _fetch(shared: epath.Path, root: str, final: str) -> None:
  """Copies the cache `shared` (in a bucket) to `final`, checking the tokens against meta.json's sha256."""
  tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".incomplete-", dir=root)
  try:
    meta = json.loads((shared / "meta.json").read_text())
    sha = hashlib.sha256()
    with (shared / "tokens.bin").open("rb") as r, open(os.path.join(tmp, "tokens.bin"), "wb") as w:
      while chunk := r.read(1 << 24):
        sha.update(chunk)
        w.write(chunk)
    if sha.hexdigest() != meta["sha256"]:
      raise DataError(f"the token cache in {shared} is damaged (its tokens.bin does not match meta.json's sha256): "
                      "delete that directory, and the next run rebuilds it")
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isfile(os.path.join(final, "meta.json")):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _upload(final: str, shared: epath.Path) -> None:
  """Copies the built cache `final` to the bucket: tokens.bin, then meta.json, which marks it complete."""
  with open(os.path.join(final, "tokens.bin"), "rb") as r, (shared / "tokens.bin").open("wb") as w:
    shutil.copyfileobj(r, w, 1 << 24)
  (shared / "meta.json").write_text((epath.Path(final) / "meta.json").read_text())


def _build(data_cfg, split, opened, tok, root, final):
  t0 = time.perf_counter()
  n_docs = opened.num_documents if isinstance(opened, files.FilesSplit) else len(opened.source)
  if not n_docs:
    raise DataError(f"split {split!r} of {data_cfg.get('name')!r} has no documents: use another split "
                    "(--config.data.train_split/eval_split)" + (", or other data.files" if
                                                                isinstance(opened, files.FilesSplit) else ""))
  dtype = "uint16" if tok.vocab_size <= 2**16 else "int32"
  tasks = sources.tasks(opened, DOCS_PER_CHUNK)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".incomplete-", dir=root)
  try:
    sha, n_tokens, n_docs = hashlib.sha256(), 0, 0
    with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
      workers = data_cfg.get("num_workers", 0)
      if workers > 0:  # spawned, not forked: this process may run JAX's threads
        cfg = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
        cfg["tokenizer"] = getattr(tok, "path", cfg.get("tokenizer", "byte"))  # bpe:N: its file, not trained again
        cfg_json = json.dumps(cfg)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_one_thread_each)
        parts = pool.map(_worker_tokenize, *zip(*[(cfg_json, split, task, dtype) for task in tasks]))
      else:
        pool, parts = None, (_tokenize(sources.documents(opened, task), tok, dtype) for task in tasks)
      try:
        for part in parts:  # in document order, whatever the number of workers
          f.write(part.tobytes())
          sha.update(part.tobytes())
          n_tokens += part.size
          n_docs += int(np.count_nonzero(part == tok.eos_id))  # one EOD per document, none from text
      finally:
        if pool is not None:
          pool.shutdown(cancel_futures=True)
    if not n_docs:
      raise DataError(f"split {split!r} of {data_cfg.get('name')!r} has no documents: use another split or other "
                      "files")
    meta = dict(format=FORMAT, dataset=opened.identity, split=split, tokenizer=tok.identity, dtype=dtype,
                vocab_size=tok.vocab_size, eos_id=tok.eos_id, num_documents=n_docs, num_tokens=n_tokens,
                sha256=sha.hexdigest(), build_seconds=round(time.perf_counter() - t0, 2))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1)
    try:
      os.rename(tmp, final)  # atomic: readers see all of it or nothing
    except OSError:
      if not os.path.isfile(os.path.join(final, "meta.json")):
        raise  # else another host on a lock-less shared disk built the same bytes first
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
