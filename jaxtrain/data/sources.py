"""Random-access document sources: `data_cfg` -> a sequence of text documents.

Everything is read with TFDS data sources (array_record files, no TensorFlow),
except `data.name=files`: dataset files read with pyarrow (files.py).

`data.data_dir` may be a bucket (`gs://...`). array_record and the token
cache's memmap read local files only, so what must be local lives in a local
mirror of the bucket path (`local_dir`: `$JAXTRAIN_BUCKET_CACHE/gs/<bucket>/<path>`,
by default under ~/.cache/jaxtrain/buckets): a TFDS dataset prepared in the
bucket (`tfds build --data_dir=gs://...`) is copied there on first use (its
metadata is read from the bucket), and `pystdlib` / `text_files`, made from local
files, are prepared there. Token caches are shared through the bucket
(token_cache.py).
"""

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import NamedTuple

import tensorflow_datasets as tfds

from jaxtrain import paths
from jaxtrain.data import builders, files
from jaxtrain.data.errors import DataError

LOCAL = ("pystdlib", "shakespeare", "text_files")
BUCKET_CACHE = "~/.cache/jaxtrain/buckets"  # the default root of local mirrors of bucket data dirs


def data_dir(data_cfg) -> str:
  """`data.data_dir` as given: a local path (expanded) or a URL."""
  return expand(data_cfg.get("data_dir", "~/.cache/jaxtrain/tensorflow_datasets"))


def expand(ddir: str) -> str:
  """A data dir as jaxtrain names it: a local path with ~ expanded, a URL without a trailing slash."""
  return ddir.rstrip("/") if paths.is_remote(ddir) else os.path.expanduser(ddir)


def local_dir(ddir: str) -> str:
  """Where the files of data dir `ddir` that must be local live: `ddir` itself, or for a bucket its local mirror."""
  if not paths.is_remote(ddir):
    return ddir
  root = os.path.expanduser(os.environ.get("JAXTRAIN_BUCKET_CACHE") or BUCKET_CACHE)
  scheme, rest = ddir.split("://", 1)
  return os.path.join(root, scheme, rest)


def _stage(remote: str, local: str) -> None:
  """Copies the directory `remote` (a prepared dataset version in a bucket) to `local`, whole or not at all."""
  if os.path.isfile(os.path.join(local, "dataset_info.json")):
    return
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(local) + ".incomplete-", dir=os.path.dirname(local))
  try:
    _copy_tree(paths.resolve(remote), tmp)
    try:
      os.rename(tmp, local)  # atomic: a reader sees all of it or nothing
    except OSError:
      if not os.path.isfile(os.path.join(local, "dataset_info.json")):
        raise  # else another process staged it first
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _copy_tree(src, dst: str) -> None:
  """Copies the directory tree `src` (an epath.Path) into the local directory `dst`. (Not with epath's recursive
  glob, which a bucket refuses, nor its walk, which loses the gs:// of the paths it yields, in etils 1.15.)"""
  os.makedirs(dst, exist_ok=True)
  for f in src.iterdir():
    if f.is_dir():
      _copy_tree(f, os.path.join(dst, f.name))
    else:
      with f.open("rb") as r, open(os.path.join(dst, f.name), "wb") as w:
        shutil.copyfileobj(r, w, 1 << 24)


def _tfds_builder(name: str, ddir: str, stage: bool = True):
  """A prepared, array_record TFDS builder from `ddir` (never downloads). From a bucket: the builder of the local
  copy (`stage`, made on first use), or of the bucket itself, for its metadata only."""
  readable = paths.is_remote(ddir) or os.access(ddir, os.R_OK | os.X_OK)
  if not paths.resolve(ddir).is_dir() or not readable:
    raise DataError(f"data_dir {ddir} does not exist or is not readable: set "
                    "--config.data.data_dir to the directory where you ran `tfds build`")
  fix = (f"run `tfds build {name} --data_dir={ddir} --file_format=array_record` "
         "on a machine with network access, or set --config.data.name=pystdlib")
  try:
    builder = tfds.builder(name, data_dir=ddir)
    prepared = builder.is_prepared()
  except Exception as e:  # Unknown names, missing configs, broken metadata...
    raise DataError(f"dataset {name!r} is not prepared in {ddir} "
                    f"({type(e).__name__}): {fix}") from e
  if not prepared:
    raise DataError(f"dataset {name!r} is not prepared in {ddir}: {fix}")
  if "array_record" not in {str(f.value) for f in builder.info.available_file_formats()}:
    raise DataError(f"dataset {name!r} in {ddir} is not in array_record format "
                    f"(needed for random access without TensorFlow): {fix}")
  if not stage or not paths.is_remote(ddir):
    return builder
  version_dir = os.fspath(builder.data_dir)  # <ddir>/<name>/<config>/<version>
  local = local_dir(ddir)
  try:
    _stage(version_dir, os.path.join(local, os.path.relpath(version_dir, ddir)))
  except OSError as e:
    raise DataError(f"cannot copy dataset {name!r} from {ddir} to {local} ({e}): make room there, or set "
                    "JAXTRAIN_BUCKET_CACHE to a writable local directory") from e
  return tfds.builder(name, data_dir=local)


class Split(NamedTuple):
  source: Sequence[dict]  # random access to the examples
  key: str                # the feature holding their text
  identity: str           # the data set's TFDS full name (name/config/version; for local files it hashes the set)


def open_split(data_cfg, split: str, stage: bool = True) -> Split | files.FilesSplit:
  """Opens one split of `data_cfg.name` for random access. `stage=False`: a TFDS dataset in a bucket is not copied
  to the local mirror, and its `source` cannot be read (for its identity only). `data.name=files`: the split's
  documents as chunks (files.FilesSplit), its files indexed once (memoized in the data dir's token_cache/)."""
  name, ddir = data_cfg.get("name", "pystdlib"), data_dir(data_cfg)
  if name == "files":
    return files.open_split(data_cfg, split, os.path.join(local_dir(ddir), "token_cache", "file_index"))
  if name in LOCAL:  # made from local files: prepared locally, also for a bucket data_dir (in its mirror)
    local = local_dir(ddir)
    try:
      builder, key = builders.prepared_builder(name, local, data_cfg.get("text_glob", "")), "text"
    except OSError as e:
      raise DataError(f"cannot prepare {name!r} in data_dir {local} ({e}): set "
                      "--config.data.data_dir to a writable directory") from e
  else:
    builder, key = _tfds_builder(name, ddir, stage), data_cfg.get("text_key", "text")
  if key not in builder.info.features:
    raise DataError(f"dataset {name!r} has no feature {key!r} (it has "
                    f"{sorted(builder.info.features)}): set --config.data.text_key")
  if split.split("[")[0] not in builder.info.splits:  # Allow 'train[:90%]'.
    raise DataError(f"dataset {name!r} has no split {split!r} (it has "
                    f"{sorted(builder.info.splits)}): set --config.data.train_split/eval_split")
  if not stage and paths.is_remote(ddir) and name not in LOCAL:
    return Split(None, key, builder.info.full_name)
  return Split(builder.as_data_source(split=split), key, builder.info.full_name)


DOCS_PER_TASK = 512  # documents of a TFDS split read and tokenized at once (one worker task)


def tasks(opened, docs_per_task: int = DOCS_PER_TASK) -> list:
  """The split `opened` cut into tasks, in document order: files.Chunks, or index ranges (lo, hi) of a TFDS split."""
  if isinstance(opened, files.FilesSplit):
    return list(opened.chunks)
  n = len(opened.source)
  return [(lo, min(lo + docs_per_task, n)) for lo in range(0, n, docs_per_task)]


def documents(opened, task) -> list:
  """The documents (str or bytes) of one task of `tasks(opened)`."""
  if isinstance(task, files.Chunk):
    return files.read_chunk(task)
  lo, hi = task
  return [ex[opened.key] for ex in opened.source.__getitems__(list(range(lo, hi)))]
