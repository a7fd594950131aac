"""Random-access document sources: `data_cfg` -> a sequence of text documents.

Everything is read with TFDS data sources (array_record files, no TensorFlow).
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import tensorflow_datasets as tfds

from jaxtrain.data import builders
from jaxtrain.data.errors import DataError

LOCAL = ("pystdlib", "text_files")


def data_dir(data_cfg) -> str:
  return os.path.expanduser(data_cfg.get("data_dir", "~/.cache/jaxtrain/tensorflow_datasets"))


def _tfds_builder(name: str, ddir: str):
  """A prepared, array_record TFDS builder from `ddir` (never downloads)."""
  if not os.path.isdir(ddir) or not os.access(ddir, os.R_OK | os.X_OK):
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
  return builder


class Split(NamedTuple):
  source: Sequence[dict]  # random access to the examples
  key: str                # the feature holding their text
  identity: str           # the data set's TFDS full name (name/config/version; for local files it hashes the set)


def open_split(data_cfg, split: str) -> Split:
  """Opens one split of `data_cfg.name` for random access."""
  name, ddir = data_cfg.name, data_dir(data_cfg)
  if name in LOCAL:
    try:
      builder, key = builders.prepared_builder(name, ddir, data_cfg.get("text_glob", "")), "text"
    except OSError as e:
      raise DataError(f"cannot prepare {name!r} in data_dir {ddir} ({e}): set "
                      "--config.data.data_dir to a writable directory") from e
  else:
    builder, key = _tfds_builder(name, ddir), data_cfg.get("text_key", "text")
  if key not in builder.info.features:
    raise DataError(f"dataset {name!r} has no feature {key!r} (it has "
                    f"{sorted(builder.info.features)}): set --config.data.text_key")
  if split.split("[")[0] not in builder.info.splits:  # Allow 'train[:90%]'.
    raise DataError(f"dataset {name!r} has no split {split!r} (it has "
                    f"{sorted(builder.info.splits)}): set --config.data.train_split/eval_split")
  return Split(builder.as_data_source(split=split), key, builder.info.full_name)
