"""Where jaxtrain reads and writes: local paths and bucket URLs (`gs://bucket/...`) alike, through etils `epath`.

Every file the trainer and its tools touch in a work directory or a data
directory (config.json, metrics.jsonl, TensorBoard events, checkpoints, token
caches, grow and sweep outputs) goes through `epath.Path`, the library Orbax
writes checkpoints with. A local path is expanded (`~`) and made absolute; a
URL is kept as it is and read and written with fsspec (`gcsfs` for `gs://`,
installed by `pip install 'jaxtrain[gcs]'`), while Orbax writes the arrays
through tensorstore's own GCS driver.

Two differences from a disk shape the code that uses this: an object store
has no append (a file is rewritten whole: `metrics.py` keeps the lines) and
no atomic rename of a directory, but a single object write is atomic (a reader
sees the old object or the new one), so `write_text_atomic` writes a bucket
object directly and a local file through a temporary file and a rename.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

from jaxtrain.config import ConfigError

# URL schemes with an fsspec driver and the package that provides it (what `pip install 'jaxtrain[gcs]'` brings).
_DRIVERS = {"gs": "gcsfs"}


def is_remote(path) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in os.fspath(path)


def resolve(path) -> epath.Path:
  """`path` as an epath.Path: local paths expanded and absolute, URLs as given. ConfigError (one line) for a
  URL whose scheme jaxtrain cannot write to, or whose driver is not installed."""
  text = os.fspath(path)
  if not is_remote(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  scheme = text.split("://", 1)[0]
  if scheme not in _DRIVERS:
    raise ConfigError(f"{text}: {scheme}:// paths are not supported; use a local path or gs://bucket/...")
  if importlib.util.find_spec(_DRIVERS[scheme]) is None:
    raise ConfigError(f"{text}: {scheme}:// paths need {_DRIVERS[scheme]}: pip install 'jaxtrain[gcs]'")
  return epath.Path(text.rstrip("/"))


def write_text_atomic(path: epath.Path, text: str) -> None:
  """Writes `path` whole or not at all: a kill mid-write leaves the old file (or none)."""
  if is_remote(path):  # one object upload: committed whole or not at all
    path.write_text(text)
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def makedirs(path: epath.Path) -> None:
  """Creates a local directory and its parents; nothing in a bucket, which has no directories (and gcsfs would
  create a missing bucket)."""
  if not is_remote(path):
    path.mkdir(parents=True, exist_ok=True)


def move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves the directory `src` to `dst` (which must not exist). In a bucket, which cannot rename, each object is
  copied, then `src` deleted: a kill in between leaves both, never neither."""
  if not is_remote(src):
    makedirs(dst.parent)
    src.rename(dst)
    return
  for f in src.iterdir():
    if f.is_dir():
      move_tree(f, dst / f.name)
    else:
      f.copy(dst / f.name)
  src.rmtree(missing_ok=True)
