"""Packing's data side (jaxtrain/data/packing.py): segment ids and loss weights from the end-of-document tokens,
whole-document packing with padding, and what the batches carry with data.document_mask on and off."""

import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import data
from jaxtrain.data import packing

EOS = 0


def corpus(root, lengths):
  """Files whose document i is the marker `<iii>` repeated to about lengths[i] bytes: a row's text tells its docs."""
  os.makedirs(root, exist_ok=True)
  for i, n in enumerate(lengths):
    with open(os.path.join(root, f"doc{i:03d}.txt"), "w") as f:
      f.write((f"<{i:03d}>" * (n // 5 + 1))[:max(n, 5)])
  return os.path.join(root, "*.txt")


def cfg(tmp_path, lengths=None, **kw):
  root = str(tmp_path / "corpus")
  glob_ = os.path.join(root, "*.txt") if os.path.isdir(root) else corpus(
      root, lengths or [7 + (37 * i) % 90 for i in range(80)])
  c = ml_collections.ConfigDict(dict(name="text_files", data_dir=str(tmp_path / "tfds"), text_key="text",
                                     tokenizer="byte", train_split="train", eval_split="validation",
                                     num_workers=0, text_glob=glob_, packing="concat", document_mask=False))
  c.update(kw)
  return c


def test_segments_by_hand():
  # a row of T + 1 = 9 tokens: doc A (1 2), eos, doc B (3 4 5), eos, doc C (6 7)
  row = np.array([[1, 2, EOS, 3, 4, 5, EOS, 6, 7]])
  seg, w = packing.segments(row, EOS)
  np.testing.assert_array_equal(seg, [[1, 1, 1, 2, 2, 2, 2, 3]])  # the eos ends (belongs to) its document
  np.testing.assert_array_equal(w, [[1, 1, 0, 1, 1, 1, 0, 1]])    # eos -> the next doc's first token: not trained
  assert seg.dtype == np.int32 and w.dtype == np.float32
  # padded after 6 tokens: the inputs at 6, 7 are padding; the input at 5 (eos) has a padding target anyway
  seg, w = packing.segments(np.array([[1, 2, EOS, 3, 4, EOS, 0, 0, 0]]), EOS, lengths_B=np.array([6]))
  np.testing.assert_array_equal(seg, [[1, 1, 1, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(w, [[1, 1, 0, 1, 1, 0, 0, 0]])
  # a piece of a long document ending the row without eos: its last input still predicts a real token
  _, w = packing.segments(np.array([[5, 6, 7, 8]]), EOS, lengths_B=np.array([4]))
  np.testing.assert_array_equal(w, [[1, 1, 1]])


def test_pack_documents_whole_documents_next_fit():
  T = 8  # rows of 9 tokens
  lengths = [3, 4, 2, 9, 20, 5, 1]  # each with its eos; the 20-token one is longer than a row
  ends = np.cumsum(lengths)
  starts, lens = packing.pack_documents(ends, T)
  rows = [(int(s), int(s) + int(n)) for s, n in zip(starts, lens)]
  # 3+4 fit (7), +2 = 9 fits; 9 alone; 20 -> pieces 9 and 9 overlapping by one, tail 4 (+5 = 9 fits), then 1
  assert rows == [(0, 9), (9, 18), (18, 27), (26, 35), (34, 43), (43, 44)]
  assert all(n <= T + 1 for n in lens)
  # Every token but each document's first is a target exactly once in an epoch of rows.
  targets = np.zeros(ends[-1], int)
  for s, e in rows:
    targets[s + 1:e] += 1
  firsts = np.concatenate([[0], ends[:-1]])
  assert set(np.flatnonzero(targets == 0)) <= set(firsts) and targets.max() == 1


def test_pack_documents_covers_a_random_stream():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 70, size=500)
  ends = np.cumsum(lengths)
  starts, lens = packing.pack_documents(ends, 31)
  assert np.all(lens >= 1) and np.all(lens <= 32) and np.all(np.diff(starts) > 0)
  covered = np.zeros(ends[-1], int)
  for s, n in zip(starts, lens):
    covered[s:s + n] += 1
  assert covered.min() >= 1  # nothing dropped
  # rows begin at a document's start, or one token before the end of the previous (a long document's next piece)
  doc_starts = set(np.concatenate([[0], ends[:-1]]).tolist())
  assert all(s in doc_starts or covered[s] == 2 for s in starts.tolist())


def docs_of(row_tokens, seg_ids, weights):
  """{segment id: set of doc markers its input tokens spell} for one row."""
  tok = data.ByteTokenizer()
  out = {}
  for sid in set(seg_ids.tolist()) - {0}:
    text = tok.decode(row_tokens[seg_ids == sid])
    out[sid] = {int(m) for m in re.findall(r"(\d{3})", text)}
  return out


@pytest.mark.parametrize("scheme", ["concat", "pad"])
def test_batches_carry_document_boundaries(tmp_path, scheme):
  c = cfg(tmp_path, packing=scheme, document_mask=True)
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  for step in range(6):
    b = td.batch(step)
    assert set(b) == {"inputs", "targets", "segment_ids", "weights"}
    assert b["segment_ids"].shape == b["weights"].shape == (8, 32)
    assert b["segment_ids"].dtype == np.int32 and b["weights"].dtype == np.float32
    rows = td.read(step)
    seg, w = packing.segments(rows, EOS, td.lengths(step))
    np.testing.assert_array_equal(b["segment_ids"], seg)
    np.testing.assert_array_equal(b["weights"], w)
    for x, y, s, wt in zip(b["inputs"], b["targets"], b["segment_ids"], b["weights"]):
      assert np.all(np.diff(s[s > 0]) >= 0)
      pad = np.flatnonzero(s == 0)
      assert (not len(pad) if scheme == "concat" else np.array_equal(pad, np.arange(32 - len(pad), 32)))  # at the end
      for sid, markers in docs_of(x, s, wt).items():
        assert len(markers) <= 1, (sid, markers)  # one document per segment
      # a weighted target is never an input's next document: no eos input, no padding target
      assert np.all(x[wt > 0] != EOS) and np.all(s[wt > 0] > 0)
      if scheme == "pad":  # rows start at a document's start (or continue a long one): the first input is real
        assert s[0] == 1


def test_pad_rows_whole_documents_and_efficiency(tmp_path):
  c = cfg(tmp_path, packing="pad")
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  b = td.batch(0)
  assert set(b) == {"inputs", "targets", "weights"}  # padding needs weights; no segment ids without the mask
  r = td.rows[0]
  assert 0.5 < r.efficiency < 1.0
  real = np.minimum(r._lengths, 32).sum() / (len(r._lengths) * 32)  # pylint: disable=protected-access
  assert r.efficiency == pytest.approx(real)
  n = np.concatenate([td.lengths(s) for s in range(3, 7)])
  assert td.log_fields(7, 3)["packing_efficiency"] == pytest.approx(np.minimum(n, 32).mean() / 32)
  fp = td.fingerprint()
  assert fp["packing"] == "pad"  # another packing is other data: a resume refuses it


def test_document_mask_off_keeps_the_batch_as_it_was(tmp_path):
  """Off: exactly {'inputs', 'targets'}, the same arrays, the same fingerprint keys as before packing. On is the
  schema's default for packed text (as MaxText's packing with segment ids)."""
  c = cfg(tmp_path)
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  b = td.batch(3)
  assert set(b) == {"inputs", "targets"}
  on = data.TrainData(cfg(tmp_path, document_mask=True), seq_len=32, global_batch=8, seed=0).batch(3)
  np.testing.assert_array_equal(b["inputs"], on["inputs"])  # the mask adds keys, never changes rows
  assert set(td.fingerprint()) == {"name", "split", "tokenizer", "seq_len", "seed", "global_batch", "cache"}
  assert td.log_fields(10, 0) == {}
  assert cfg_lib.base().data.document_mask is True and cfg_lib.base().data.packing == "concat"


def test_sharded_batches_carry_the_same_boundaries(tmp_path):
  c = cfg(tmp_path, packing="pad", document_mask=True)
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
  got, want = td.batch(5, sh), td.batch(5)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_eval_sets_count_the_loss_tokens(tmp_path):
  c = cfg(tmp_path, packing="pad", document_mask=True)
  sets = data.eval_sets(c, seq_len=32, global_batch=4, num_batches=3)
  (name, s), = sets.items()
  assert name == "text_files" and len(s.batches) == 3
  assert s.tokens == sum(b["weights"].sum() for b in s.batches) < 3 * 4 * 32
  plain = data.eval_sets(cfg(tmp_path), seq_len=32, global_batch=4, num_batches=3)["text_files"]
  assert plain.tokens == 3 * 4 * 32 and set(plain.batches[0]) == {"inputs", "targets"}


@pytest.mark.parametrize("override, match", [
    ("data.packing=zip", r"data.packing='zip' is not one of \('concat', 'pad'\)"),
])
def test_bad_settings_are_one_line(tiny, override, match):
  from jaxtrain import preflight  # pylint: disable=import-outside-toplevel
  c = tiny()
  cfg_lib.set_field(c, *override.split("="))
  with pytest.raises(cfg_lib.ConfigError, match=match) as e:
    preflight.validate(c, num_devices=8)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("scheme,mask", [("concat", False), ("concat", True), ("pad", False), ("pad", True)])
def test_batch_dtypes_name_the_batch_the_loader_makes(tmp_path, scheme, mask):
  """What the ahead-of-time compile lowers the step for (python -m jaxtrain.compile) is what training feeds it."""
  c = cfg(tmp_path, packing=scheme, document_mask=mask)
  b = data.TrainData(c, seq_len=32, global_batch=8, seed=0).batch(0)
  assert {k: str(v.dtype) for k, v in b.items()} == packing.batch_dtypes(c)
