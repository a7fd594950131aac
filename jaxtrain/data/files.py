"""Dataset files as a document source (`data.name=files`): parquet, JSONL, Arrow and saved Hugging Face datasets.

Read with pyarrow and the standard library (the `datasets` package is not needed), from local paths or `gs://`
(through etils epath, as everything in jaxtrain.paths):

- `parquet`: the column `data.text_key`, one document per row, one task per row group.
- `jsonl` (.jsonl, .ndjson, .json): one JSON object per line, its field `data.text_key`; blank lines are skipped.
- `arrow` (.arrow, .feather, .ipc): Arrow IPC in either framing, the random-access file (feather v2) or the
  stream that Hugging Face `datasets` writes its shards in.
- `hf_saved`: a directory written by `datasets`' `save_to_disk`: a Dataset (state.json naming its arrow shards) or
  a DatasetDict (dataset_dict.json and one such directory per split; `data.train_split` / `data.eval_split` name
  them, and a missing eval split is held out of the train one as below).

`data.files` is one or more comma-separated globs (`**` recurses), matched files sorted within each glob, globs in
the order given, or one hf_saved directory. `data.format=auto` tells each file's format from its name.

Splits: with `data.eval_files` set, its files are the validation split and `data.files` the train split. Without
it a document is held out for validation iff a hash of (its file's content hash, its row) falls in the lowest
`VAL_FRACTION` (if none does, the lowest-hash document of all): deterministic, host-independent, and a document's
split does not depend on the other files.

The token cache is keyed by the files' *content*: each file's sha256 (of its bytes), memoized by path, size and
mtime in `memo_dir` so later runs do not re-read the files. Content, not size+mtime alone: copies of one file on
several hosts or re-uploaded to a bucket have other mtimes but must name the same cache, and an edit that keeps
size and mtime (a copy with `cp -p` over another) must not reuse a stale one.

`open_split` indexes the files (row counts, and for JSONL the byte offset of every `DOCS_PER_CHUNK`-th line) and
returns `Chunk`s: self-contained, picklable tasks that `read_chunk` turns into that chunk's documents (in order,
already filtered by split) in any process, so token_cache's worker processes tokenize them without re-indexing.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from jaxtrain import paths
from jaxtrain.config import ConfigError
from jaxtrain.data.errors import DataError

FORMATS = ("auto", "parquet", "jsonl", "arrow", "hf_saved")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
VAL_FRACTION = 0.02
DOCS_PER_CHUNK = 512     # JSONL lines / Arrow rows per task (parquet: one row group per task)
INDEX_VERSION = 1        # part of the memo key: bump when an index's layout changes
_MIX = np.uint64(0x9E3779B97F4A7C15)


class Chunk(NamedTuple):
  """One task: rows of one file. jsonl: bytes [start, stop) beginning at line `row0`; parquet: row group `start`;
  arrow: rows [start, stop). `select`: 0 every document, 1 those not held out, 2 the held out ones (with
  `forced_row`, the file's row held out when no document of the corpus fell below VAL_FRACTION, or -1)."""
  path: str
  fmt: str
  start: int
  stop: int
  row0: int
  key: str
  select: int
  file_key: int
  forced_row: int


@dataclasses.dataclass(frozen=True)
class FilesSplit:
  identity: str            # files/<hash of the files' content, the text field and the split rule>
  key: str
  chunks: tuple            # Chunk, in document order
  num_documents: int
  files: tuple             # the files read, in order


# ---------------------------------------------------------------- which files


def _glob(pattern: str) -> list[str]:
  """The files matching `pattern` (local or a URL), sorted; a pattern without wildcards is itself if it exists."""
  if not any(c in pattern for c in "*?["):
    return [pattern] if paths.resolve(pattern).exists() else []
  if not paths.is_remote(pattern):
    return sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f))
  parts = pattern.split("/")
  first = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
  base = paths.resolve("/".join(parts[:first]))
  return sorted(os.fspath(p) for p in base.glob("/".join(parts[first:])) if not p.is_dir())


def _expand(spec: str, field: str) -> list[str]:
  globs = [g.strip() for g in spec.split(",") if g.strip()]
  if not globs:
    raise DataError(f"data.{field} is empty: set --config.data.{field} to the corpus files, e.g. "
                    "'/data/corpus/*.parquet' (comma-separated globs, local or gs://)")
  found = []
  for g in globs:
    matched = _glob(g)
    if not matched:
      raise DataError(f"data.{field}: {g!r} matches no file: fix the path or glob")
    found += [f for f in matched if f not in found]
  return found


def _format(path: str, fmt: str) -> str:
  if fmt != "auto":
    return fmt
  if paths.resolve(path).is_dir():
    return "hf_saved"
  name = path.lower()
  for suffix, f in SUFFIXES.items():
    if name.endswith(suffix):
      return f
  raise DataError(f"cannot tell the format of {path} from its name: set --config.data.format to one of "
                  f"{FORMATS[1:]}")


def _saved_arrow_files(directory: str) -> list[str]:
  """The arrow shards of a saved HF Dataset directory, in its order (state.json's `_data_files`)."""
  state = paths.resolve(directory) / "state.json"
  if not state.is_file():
    raise DataError(f"{directory} is not a saved Hugging Face dataset (no state.json or dataset_dict.json): point "
                    "data.files at the directory `save_to_disk` wrote, or set data.format")
  return [os.fspath(paths.resolve(directory) / f["filename"]) for f in json.loads(state.read_text())["_data_files"]]


def _sources(data_cfg, role: str) -> tuple[list[tuple[str, str]], bool]:
  """([(file, format)], holdout): the files of split role 'train'/'validation'; holdout: split them by hash."""
  fmt = data_cfg.get("format", "auto")
  if fmt not in FORMATS:
    raise DataError(f"data.format={fmt!r} is not one of {FORMATS}: set --config.data.format")
  eval_spec = data_cfg.get("eval_files", "")
  spec = eval_spec if role == "validation" and eval_spec else data_cfg.get("files", "")
  field = "eval_files" if role == "validation" and eval_spec else "files"
  holdout = not eval_spec
  found = _expand(spec, field)
  out = []
  for f in found:
    f_fmt = _format(f, fmt)
    if f_fmt != "hf_saved":
      out.append((f, f_fmt))
      continue
    root = paths.resolve(f)
    if (root / "dataset_dict.json").is_file():  # a DatasetDict: one directory per split
      splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
      train, val = data_cfg.get("train_split", "train"), data_cfg.get("eval_split", "validation")
      if role == "validation" and val in splits:
        name, holdout = val, False
      else:  # the train split, or the validation documents held out of it
        name, holdout = train, holdout and val not in splits
      if name not in splits:
        raise DataError(f"{f} has no split {name!r} (it has {splits}): set --config.data.train_split")
      out += [(a, "arrow") for a in _saved_arrow_files(os.fspath(root / name))]
    else:
      out += [(a, "arrow") for a in _saved_arrow_files(f)]
  return out, holdout


# ---------------------------------------------------------------- reading


def _open(path: str):
  return open(path, "rb") if not paths.is_remote(path) else paths.resolve(path).open("rb")


def _arrow_table(path: str):
  """The Arrow IPC file or stream at `path` as a table (memory-mapped when local: reading it copies nothing)."""
  return _arrow_table_of(path, _stat_key(path))  # a file rewritten since is read again


@functools.lru_cache(maxsize=2)
def _arrow_table_of(path: str, stat_key: str):
  del stat_key  # the cache's key only
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  with _open(path) as f:
    if paths.is_remote(path):
      data = f.read()
      head, source = data[:6], pa.py_buffer(data)
    else:
      head, source = f.read(6), pa.memory_map(path)
  try:
    if head == b"ARROW1":  # the file framing (feather v2); else the stream framing (HF datasets' shards)
      return pa.ipc.open_file(source).read_all()
    return pa.ipc.open_stream(source).read_all()
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path} is not an Arrow IPC file or stream ({str(e).splitlines()[0][:100]}): fix the file, "
                    "or set --config.data.format to its format") from None


def _parquet(path: str):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with _open(path) as f:
    head = f.read(4)
  if head != b"PAR1":
    raise DataError(f"{path} is not a Parquet file (it does not start with PAR1): fix the file, or set "
                    "--config.data.format to its format")
  try:
    return pq.ParquetFile(_open(path) if paths.is_remote(path) else path)
  except Exception as e:  # pylint: disable=broad-except  # pyarrow's errors for a damaged footer vary
    raise DataError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0][:100]}): fix the file") from None


def _json_line(path: str, line: bytes, lineno: int) -> dict:
  try:
    obj = json.loads(line)
  except ValueError:
    obj = None
  if not isinstance(obj, dict):
    raise DataError(f"{path}:{lineno} is not a JSON object (JSON Lines: one object per line): fix the file, or set "
                    "--config.data.format to its format")
  return obj


def _text(path: str, where, value, key: str):
  if isinstance(value, (str, bytes)):
    return value
  raise DataError(f"{path} {where}: field {key!r} is {type(value).__name__}, not text: set --config.data.text_key "
                  "to a text field")


def fields(path: str, fmt: str) -> list[str]:
  """The field names of a file's documents (the first document's, for JSONL); DataError if it is not `fmt`."""
  if fmt == "parquet":
    return list(_parquet(path).schema_arrow.names)
  if fmt == "arrow":
    return list(_arrow_table(path).schema.names)
  with _open(path) as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        return list(_json_line(path, line, lineno))
  return []


def _check_file(path: str, fmt: str, key: str) -> None:
  """DataError (one line) for an empty file, one not in `fmt`, or one without the text field."""
  if paths.resolve(path).stat().length == 0:
    raise DataError(f"{path} is empty (0 bytes): remove it from data.files, or fix it")
  names = fields(path, fmt)
  if key not in names:
    raise DataError(f"{path} has no field {key!r} (its fields: {names}): set --config.data.text_key to the one "
                    "holding the text")


def _stat_key(path: str) -> str:
  if paths.is_remote(path):
    st = paths.resolve(path).stat()
    return f"{path}\0{st.length}\0{st.mtime}"
  st = os.stat(path)
  return f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"


def _make_index(path: str, fmt: str) -> dict:
  """{'sha256', 'rows', 'chunks': [[start, stop, row0], ...]} of one file (reads all of it once)."""
  sha, chunks = hashlib.sha256(), []
  if fmt == "jsonl":  # a chunk ends after every DOCS_PER_CHUNK-th line
    lines, pos, start, last = 0, 0, 0, b"\n"
    with _open(path) as f:
      while block := f.read(1 << 24):
        sha.update(block)
        ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + pos + 1  # the byte after each newline
        for j in range((DOCS_PER_CHUNK - 1 - lines) % DOCS_PER_CHUNK, ends.size, DOCS_PER_CHUNK):
          chunks.append([start, int(ends[j]), (lines + j + 1) - DOCS_PER_CHUNK])
          start = int(ends[j])
        lines, pos, last = lines + ends.size, pos + len(block), block[-1:]
    if start < pos:  # the last lines (the last one perhaps without a newline)
      chunks.append([start, pos, len(chunks) * DOCS_PER_CHUNK])
    return {"sha256": sha.hexdigest(), "rows": lines + (last != b"\n"), "chunks": chunks}
  with _open(path) as f:
    while block := f.read(1 << 24):
      sha.update(block)
  if fmt == "parquet":
    meta = _parquet(path).metadata
    row0 = 0
    for g in range(meta.num_row_groups):
      chunks.append([g, g + 1, row0])
      row0 += meta.row_group(g).num_rows
    return {"sha256": sha.hexdigest(), "rows": row0, "chunks": chunks}
  rows = _arrow_table(path).num_rows
  chunks = [[lo, min(lo + DOCS_PER_CHUNK, rows), lo] for lo in range(0, rows, DOCS_PER_CHUNK)]
  return {"sha256": sha.hexdigest(), "rows": rows, "chunks": chunks}


def _index(path: str, fmt: str, memo_dir: str | None) -> dict:
  """`_make_index(path, fmt)`, memoized in `memo_dir` by path, size and mtime (and the index's layout)."""
  key = hashlib.sha256(f"{_stat_key(path)}\0{fmt}\0{DOCS_PER_CHUNK}\0{INDEX_VERSION}".encode()).hexdigest()[:32]
  memo = os.path.join(memo_dir, key + ".json") if memo_dir else None
  if memo and os.path.isfile(memo):
    with open(memo) as f:
      return json.load(f)
  index = _make_index(path, fmt)
  if memo:
    try:
      os.makedirs(memo_dir, exist_ok=True)
      tmp = f"{memo}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(index, f)
      os.replace(tmp, memo)
    except OSError:
      pass  # a read-only data dir: index again next time
  return index


def held_out(file_key: int, rows: np.ndarray) -> np.ndarray:
  """float64 in [0, 1) per row: the hash deciding the split (splitmix64 of the file's key and the row)."""
  with np.errstate(over="ignore"):
    x = np.uint64(file_key) ^ (np.asarray(rows, np.uint64) * _MIX)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
  return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def _keep(chunk: Chunk, rows: np.ndarray) -> np.ndarray:
  if chunk.select == 0:
    return np.ones(rows.shape, bool)
  out = held_out(chunk.file_key, rows) < VAL_FRACTION
  if chunk.forced_row >= 0:
    out |= rows == chunk.forced_row
  return out if chunk.select == 2 else ~out


def read_chunk(chunk: Chunk) -> list:
  """The documents (str or bytes) of `chunk`, in order: those its split keeps."""
  path, key = chunk.path, chunk.key
  if chunk.fmt == "jsonl":
    with _open(path) as f:
      f.seek(chunk.start)
      lines = f.read(chunk.stop - chunk.start).split(b"\n")
    if lines and not lines[-1]:
      lines.pop()  # the chunk ends with a newline
    docs = []
    for i in np.flatnonzero(_keep(chunk, chunk.row0 + np.arange(len(lines)))).tolist():
      if not lines[i].strip():
        continue
      lineno = chunk.row0 + i + 1
      obj = _json_line(path, lines[i], lineno)
      if key not in obj:
        raise DataError(f"{path}:{lineno} has no field {key!r} (its fields: {list(obj)}): fix that line, or set "
                        "--config.data.text_key")
      docs.append(_text(path, f"line {lineno}", obj[key], key))
    return docs
  if chunk.fmt == "parquet":
    values = _parquet(path).read_row_group(chunk.start, columns=[key]).column(0).to_pylist()
  else:
    values = _arrow_table(path).slice(chunk.start, chunk.stop - chunk.start).column(key).to_pylist()
  rows = chunk.row0 + np.arange(len(values))
  return [_text(path, f"row {r}", v, key) for r, v, k in zip(rows.tolist(), values, _keep(chunk, rows)) if k]


def open_split(data_cfg, split: str, memo_dir: str | None = None) -> FilesSplit:
  """The documents of `split` (data.train_split or data.eval_split) of the files `data_cfg` names, as chunks."""
  train, val = data_cfg.get("train_split", "train"), data_cfg.get("eval_split", "validation")
  if split not in (train, val):
    raise DataError(f"data.name=files has the splits data.train_split={train!r} and data.eval_split={val!r}, "
                    f"not {split!r}")
  role = "train" if split == train else "validation"
  key = data_cfg.get("text_key", "text")
  files, holdout = _sources(data_cfg, role)
  indexes = []
  for path, fmt in files:
    _check_file(path, fmt, key)
    indexes.append(_index(path, fmt, memo_dir))
  file_keys = [int.from_bytes(bytes.fromhex(ix["sha256"])[:8], "big") for ix in indexes]
  forced, n_held = {}, 0
  if holdout:
    scores = [held_out(k, np.arange(ix["rows"])) for k, ix in zip(file_keys, indexes)]
    n_held = sum(int((s < VAL_FRACTION).sum()) for s in scores)
    if not n_held and any(s.size for s in scores):  # a small corpus: hold out its lowest-hash document
      best = min((s.min(), i) for i, s in enumerate(scores) if s.size)[1]
      forced, n_held = {best: int(scores[best].argmin())}, 1
  total = sum(ix["rows"] for ix in indexes)
  select = 0 if not holdout else 1 if role == "train" else 2
  chunks = tuple(Chunk(path, fmt, start, stop, row0, key, select, fk, forced.get(i, -1))
                 for i, ((path, fmt), ix, fk) in enumerate(zip(files, indexes, file_keys))
                 for start, stop, row0 in ix["chunks"])
  num = total if select == 0 else total - n_held if select == 1 else n_held
  digest = hashlib.sha256(json.dumps([key, "holdout" if holdout else "all", VAL_FRACTION,
                                      [[fmt, ix["sha256"]] for (_, fmt), ix in zip(files, indexes)]]).encode())
  return FilesSplit("files/" + digest.hexdigest()[:16], key, chunks, num, tuple(f for f, _ in files))


def check_source(data_cfg) -> None:
  """DataError (one line) unless the files of `data_cfg` (any data-like ConfigDict with name=files) exist, are not
  empty, are the format they claim and have the text field. Cheap: headers, schemas and first lines only."""
  for role in ("train", "validation"):
    for path, fmt in _sources(data_cfg, role)[0]:
      _check_file(path, fmt, data_cfg.get("text_key", "text"))


def check(config, target) -> None:
  """Preflight for data.name=files (`check_source`), ConfigError (one line) before anything compiles."""
  del target
  if config.data.get("name") != "files" or config.data.get("mixture"):  # a mixture's sources: mixture.check
    return
  try:
    check_source(config.data)
  except DataError as e:
    raise ConfigError(str(e)) from None
