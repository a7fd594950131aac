"""Tests of dataset files as a source (`data.name=files`, jaxtrain/data/files.py): parquet, JSONL, Arrow (file and
stream framing), a saved Hugging Face dataset (Dataset and DatasetDict, written here with pyarrow as `save_to_disk`
lays them out); the held-out split; the token cache keyed by content; worker processes; gs:// files; the one-line
errors for bad input; and a run on files with a tokenizer.json that keeps its tokenizer and exports it."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain.data import DataError, files, token_cache, tokenizer

DOCS = [f"<{i:04d}>" + " words" * (i % 9) for i in range(1500)]


def write(root, fmt, docs=DOCS, name=None, field="text"):
  """`docs` as one file of `fmt` under `root`; returns its path."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, name or {"jsonl": "d.jsonl", "parquet": "d.parquet", "feather": "d.feather",
                                     "stream": "d.arrow"}[fmt])
  table = pa.table({field: docs, "id": list(range(len(docs)))})
  if fmt == "jsonl":
    with open(path, "w") as f:
      f.writelines(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
  elif fmt == "parquet":
    pq.write_table(table, path, row_group_size=400)
  elif fmt == "feather":
    feather.write_feather(table, path, chunksize=300)
  else:  # the IPC stream framing, as Hugging Face `datasets` writes its shards
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
      for batch in table.to_batches(max_chunksize=250):
        w.write_batch(batch)
  return path


def save_to_disk_layout(root, splits):
  """A directory as `datasets`' save_to_disk writes it: per split, arrow stream shards named by state.json."""
  for split, docs in splits.items():
    d = os.path.join(root, split) if len(splits) > 1 else root
    half = len(docs) // 2
    names = [write(d, "stream", part, name=f"data-{i:05d}-of-00002.arrow") for i, part in
             enumerate((docs[:half], docs[half:]))]
    with open(os.path.join(d, "state.json"), "w") as f:
      json.dump({"_data_files": [{"filename": os.path.basename(n)} for n in names], "_split": split}, f)
    with open(os.path.join(d, "dataset_info.json"), "w") as f:
      json.dump({"features": {"text": {"dtype": "string", "_type": "Value"}}}, f)
  if len(splits) > 1:
    with open(os.path.join(root, "dataset_dict.json"), "w") as f:
      json.dump({"splits": list(splits)}, f)
  return root


def cfg(tmp_path, spec, **kw):
  return ml_collections.ConfigDict(dict(dict(name="files", files=spec, eval_files="", format="auto", text_key="text",
                                             tokenizer="byte", eod_token="", data_dir=str(tmp_path / "dd"),
                                             train_split="train", eval_split="validation", num_workers=0), **kw))


def documents(c, split):
  opened = files.open_split(c, split)
  return [d.decode() if isinstance(d, bytes) else d for ch in opened.chunks for d in files.read_chunk(ch)]


def stream_docs(cache):
  """The documents of a byte token cache, split at its EODs (the convention packing relies on)."""
  tokens = np.asarray(cache.tokens)
  assert tokens[-1] == cache.meta["eos_id"]
  return bytes(tokens.astype(np.uint8)).decode().split("\0")[:-1]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "feather", "stream"])
def test_each_format_gives_the_documents_in_order_split_by_hash(tmp_path, monkeypatch, fmt):
  monkeypatch.setattr(files, "DOCS_PER_CHUNK", 128)  # several chunks per file
  c = cfg(tmp_path, write(tmp_path / "corpus", fmt))
  train, val = documents(c, "train"), documents(c, "validation")
  assert train + val and not set(train) & set(val) and sorted(train + val) == sorted(DOCS)
  assert train == sorted(train) and val == sorted(val)  # file order kept within each split
  assert 0.005 < len(val) / len(DOCS) < 0.04  # VAL_FRACTION = 0.02
  cache = token_cache.load(c, "train")
  assert stream_docs(cache) == train and cache.meta["num_documents"] == len(train)


def test_formats_agree_and_globs_concatenate_in_order(tmp_path):
  a = write(tmp_path / "a", "jsonl", DOCS[:700])
  b = write(tmp_path / "b", "parquet", DOCS[700:])
  c = cfg(tmp_path, f"{a},{tmp_path}/b/*.parquet", eval_files=write(tmp_path / "v", "stream", DOCS[:50]))
  assert documents(c, "train") == DOCS and documents(c, "validation") == DOCS[:50]
  assert files.open_split(c, "train").files == (a, str(tmp_path / "b" / "d.parquet"))


def test_jsonl_edges(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"text": "a"}\n\n{"text": "b", "more": 1}\n{"text": ""}\n{"text": "last, no newline"}')
  c = cfg(tmp_path, str(path), eval_files=str(path))
  assert documents(c, "train") == ["a", "b", "", "last, no newline"]  # a blank line is no document
  cache = token_cache.load(c, "train")
  assert stream_docs(cache) == ["a", "b", "", "last, no newline"]  # an empty document is a lone EOD


def test_saved_hugging_face_dataset(tmp_path):
  one = save_to_disk_layout(str(tmp_path / "ds"), {"train": DOCS})
  c = cfg(tmp_path, one)
  train, val = documents(c, "train"), documents(c, "validation")
  assert sorted(train + val) == sorted(DOCS) and val and not set(train) & set(val)
  both = save_to_disk_layout(str(tmp_path / "dd_saved"), {"train": DOCS[:1000], "test": DOCS[1000:]})
  c = cfg(tmp_path, both, eval_split="test")
  assert documents(c, "train") == DOCS[:1000] and documents(c, "test") == DOCS[1000:]
  c = cfg(tmp_path, both)  # no 'validation' saved: held out of train
  assert sorted(documents(c, "train") + documents(c, "validation")) == DOCS[:1000]
  with pytest.raises(DataError, match=r"has no split 'tr' \(it has \['train', 'test'\]\)"):
    files.open_split(cfg(tmp_path, both, train_split="tr"), "tr")


def test_saved_by_the_datasets_package(tmp_path):
  datasets = pytest.importorskip("datasets")  # not a dependency: the layout test above runs without it
  datasets.Dataset.from_dict({"text": DOCS[:300]}).save_to_disk(str(tmp_path / "real"))
  c = cfg(tmp_path, str(tmp_path / "real"))
  assert sorted(documents(c, "train") + documents(c, "validation")) == sorted(DOCS[:300])


def test_small_corpus_holds_out_one_document(tmp_path):
  c = cfg(tmp_path, write(tmp_path / "c", "jsonl", DOCS[:5]))
  assert len(documents(c, "validation")) == 1 and len(documents(c, "train")) == 4


def test_cache_is_keyed_by_content(tmp_path):
  path = write(tmp_path / "c", "parquet")
  c = cfg(tmp_path, path)
  first = token_cache.load(c, "train")
  os.utime(path, (1, 1))  # another mtime, the same bytes: the same cache
  assert token_cache.load(c, "train").path == first.path
  shutil.copytree(tmp_path / "c", tmp_path / "elsewhere")  # the same bytes elsewhere: the same cache
  assert token_cache.load(cfg(tmp_path, str(tmp_path / "elsewhere" / "d.parquet")), "train").path == first.path
  write(tmp_path / "c", "parquet", DOCS[:-1])  # other content: another cache
  assert token_cache.load(c, "train").path != first.path
  tok_json = tmp_path / "t.json"  # another tokenizer: another cache
  from test_tokenizers import bpe_json  # pylint: disable=import-outside-toplevel
  other = token_cache.load(cfg(tmp_path, path, tokenizer=bpe_json(tok_json)), "train")
  assert other.path != first.path and other.meta["tokenizer"].startswith("hf-")


@pytest.mark.slow  # worker processes
def test_workers_give_the_same_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(files, "DOCS_PER_CHUNK", 100)
  from test_tokenizers import bpe_json  # pylint: disable=import-outside-toplevel
  spec = f"{write(tmp_path / 'a', 'jsonl')},{write(tmp_path / 'b', 'parquet')}"
  tok = bpe_json(tmp_path / "t.json")
  one = token_cache.load(cfg(tmp_path, spec, tokenizer=tok), "train")
  two = token_cache.load(cfg(tmp_path, spec, tokenizer=tok, num_workers=2, data_dir=str(tmp_path / "dd2")), "train")
  assert one.meta["sha256"] == two.meta["sha256"] and one.meta["num_documents"] == two.meta["num_documents"]


@pytest.mark.parametrize("make, kw, match", [
    (lambda d: write(d, "jsonl", field="content"), {},
     r"d.jsonl has no field 'text' \(its fields: \['content', 'id'\]\): set --config.data.text_key"),
    (lambda d: write(d, "parquet", field="body"), {}, r"has no field 'text' \(its fields: \['body', 'id'\]\)"),
    (lambda d: write(d, "stream"), {"text_key": "txt"}, r"has no field 'txt' \(its fields: \['text', 'id'\]\)"),
    (lambda d: open(os.path.join(d, "e.jsonl"), "w").close() or os.path.join(d, "e.jsonl"), {},
     r"e.jsonl is empty \(0 bytes\): remove it from data.files"),
    (lambda d: write(d, "jsonl", name="x.parquet"), {}, r"x.parquet is not a Parquet file"),
    (lambda d: write(d, "parquet", name="x.jsonl"), {}, r"x.jsonl:1 is not a JSON object"),
    (lambda d: write(d, "jsonl", name="x.arrow"), {}, r"x.arrow is not an Arrow IPC file or stream"),
    (lambda d: write(d, "jsonl"), {"format": "parquet"}, r"d.jsonl is not a Parquet file"),
    (lambda d: write(d, "jsonl", name="x.txt"), {}, r"cannot tell the format of .*x.txt from its name"),
    (lambda d: os.path.join(d, "*.parquet"), {}, r"data.files: '.*\*.parquet' matches no file"),
    (lambda d: "", {}, r"data.files is empty"),
    (lambda d: write(d, "jsonl"), {"format": "csv"}, r"data.format='csv' is not one of"),
])
def test_bad_input_is_one_line_before_training(tmp_path, make, kw, match):
  os.makedirs(tmp_path / "c", exist_ok=True)
  c = cfg(tmp_path, make(str(tmp_path / "c")), **kw)
  config = cfg_lib.base()
  config.data.update(c.to_dict())
  from jaxtrain import preflight  # pylint: disable=import-outside-toplevel
  with pytest.raises(cfg_lib.ConfigError, match=match) as e:
    preflight.validate(config, num_devices=1)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match=match):  # and the same from the loader
    token_cache.load(c, "train")


def test_a_bad_line_mid_file_names_its_line(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"text": "a"}\n{"txt": "b"}\n')
  with pytest.raises(DataError, match=r"x.jsonl:2 has no field 'text' \(its fields: \['txt'\]\)"):
    token_cache.load(cfg(tmp_path, str(path), eval_files=str(path)), "train")
  path.write_text('{"text": "a"}\n{"text": 3}\n')
  with pytest.raises(DataError, match=r"x.jsonl line 2: field 'text' is int, not text"):
    token_cache.load(cfg(tmp_path, str(path), eval_files=str(path)), "train")


@pytest.mark.slow  # the GCS emulator
def test_files_in_a_bucket(tmp_path, gcs):
  from jaxtrain import paths  # pylint: disable=import-outside-toplevel
  local = [write(tmp_path / "c", "jsonl", DOCS[:600]), write(tmp_path / "c", "parquet", DOCS[600:900]),
           write(tmp_path / "c", "stream", DOCS[900:])]
  for f in local:
    paths.resolve(f"gs://{BUCKET}/corpus/{os.path.basename(f)}").write_bytes(open(f, "rb").read())
  remote = cfg(tmp_path, f"gs://{BUCKET}/corpus/*.jsonl,gs://{BUCKET}/corpus/d.parquet,gs://{BUCKET}/corpus/*.arrow")
  here = cfg(tmp_path, ",".join(local), data_dir=str(tmp_path / "dd_local"))
  assert documents(remote, "train") == documents(here, "train")
  assert token_cache.load(remote, "train").meta["sha256"] == token_cache.load(here, "train").meta["sha256"]
  from test_tokenizers import bpe_json  # pylint: disable=import-outside-toplevel
  c = cfg(tmp_path, "", tokenizer=bpe_json(tmp_path / "t.json"))  # a run in the bucket keeps its tokenizer there
  tokenizer.save_copy(f"gs://{BUCKET}/run", tokenizer.make_tokenizer(c), replace=True)
  copy = tokenizer.workdir_copy(f"gs://{BUCKET}/run", c)
  assert os.fspath(copy) == f"gs://{BUCKET}/run/tokenizer.json" and copy.read_bytes() == open(c.tokenizer, "rb").read()


from test_bucket import BUCKET, gcs  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import  # noqa: E402,F401


@pytest.mark.parametrize("bad", ["field", "vocabulary"])
def test_bad_input_stops_a_run_before_it_touches_the_workdir(tmp_path, data_dir, bad):
  from jaxtrain import train  # pylint: disable=import-outside-toplevel
  from test_tokenizers import bpe_json  # pylint: disable=import-outside-toplevel
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  if bad == "field":
    kw, match = {"data.files": write(str(tmp_path / "c"), "jsonl", field="body")}, r"has no field 'text' \(its fields"
  else:
    kw = {"data.files": write(str(tmp_path / "c"), "jsonl"), "data.tokenizer": bpe_json(tmp_path / "t.json")}
    match = r"^the tokenizer has 3\d\d tokens \(data.tokenizer=.*t.json\) but model.vocab_size=256; raise"
  with pytest.raises(cfg_lib.ConfigError, match=match):
    train.train(tiny_config(data_dir, **{"data.name": "files", **kw}), str(workdir))
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
  assert (workdir / "config.json").read_text() == "{}"
