"""Weighted mixtures (jaxtrain/data/mixture.py): the plan of which source fills each row, by the step alone; its
counts, schedules, per-source row orders and epochs; tokens per source; eval per source; bad settings."""

import json
import os
import re

import ml_collections
import numpy as np
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import data, preflight
from jaxtrain.data import mixture


# ---------------------------------------------------------------- the plan, without data


def test_apportion_is_within_one_of_the_quota_and_sums():
  rng = np.random.default_rng(0)
  w = rng.dirichlet(np.ones(5), size=200)
  counts = mixture.apportion(w, 37)
  assert np.all(counts.sum(-1) == 37) and np.all(np.abs(counts - 37 * w) < 1)
  np.testing.assert_array_equal(mixture.apportion(np.array([[0.5, 0.5]]), 3), [[2, 1]])  # ties: lower index


def test_weights_follow_a_piecewise_linear_schedule():
  sch = [((0, 1.0), (100, 3.0)), 1.0]
  w = mixture.weights_at([mixture.schedule(s) for s in sch], [0, 50, 100, 1000])
  np.testing.assert_allclose(w[:, 0], [0.5, 2 / 3, 0.75, 0.75])  # linear, then constant after the last point
  np.testing.assert_allclose(w.sum(1), 1)


@pytest.mark.parametrize("weights, B, block", [((0.7, 0.3), 8, 16), ((1, 1, 5), 6, 6), ((0.9, 0.1), 8, 20),
                                               ((((0, 1.0), (40, 0.0)), ((0, 0.0), (40, 1.0)), 0.5), 4, 8)])
def test_plan_gives_each_source_its_rows_once_in_order(weights, B, block):
  """Over whole blocks each source gets exactly its apportioned rows, and its row numbers are 0, 1, 2, ... each
  once: nothing skipped or repeated before an epoch ends (the sources' epochs are their own)."""
  plan = mixture.Plan(weights, B, block, seed=3)
  assert plan.L % B == 0 and plan.L >= block
  n_blocks = 12
  src, idx = plan.locate(np.arange(n_blocks * plan.L))
  for b in range(n_blocks):
    at = slice(b * plan.L, (b + 1) * plan.L)
    np.testing.assert_array_equal(np.bincount(src[at], minlength=plan.K), plan.counts([b])[0])
  for k in range(plan.K):
    assert sorted(idx[src == k]) == list(range((src == k).sum()))
  for step in {0, 1, 5, min(17, n_blocks * plan.L // B), n_blocks * plan.L // B}:  # rows before it, from the step
    np.testing.assert_array_equal(plan.rows_before(step), np.bincount(src[:step * B], minlength=plan.K))
  # any slice of positions gives the same answer (a host reads only its rows; a resume starts anywhere)
  s2, i2 = plan.locate(np.arange(5 * B + 1, 9 * B - 3))
  np.testing.assert_array_equal(s2, src[5 * B + 1:9 * B - 3])
  np.testing.assert_array_equal(i2, idx[5 * B + 1:9 * B - 3])


def test_schedule_moves_rows_between_sources():
  plan = mixture.Plan([((0, 1.0), (100, 0.0)), ((0, 0.0), (100, 1.0))], 10, 10, seed=0)
  per_step = [np.bincount(plan.locate(s * 10 + np.arange(10))[0], minlength=2) for s in range(0, 120, 10)]
  firsts = [c[0] for c in per_step]
  assert firsts[0] == 10 and firsts[5] == 5 and firsts[-1] == 0 and firsts == sorted(firsts, reverse=True)


def test_seeds_and_blocks_shuffle_the_layout():
  a = mixture.Plan((0.5, 0.5), 8, 64, seed=0).locate(np.arange(64))[0]
  b = mixture.Plan((0.5, 0.5), 8, 64, seed=1).locate(np.arange(64))[0]
  assert not np.array_equal(a, b) and a.sum() == b.sum() == 32
  assert 0 < a[:8].sum() < 8 or 0 < a[8:16].sum() < 8  # sources interleave within a batch


# ---------------------------------------------------------------- through TrainData on two corpora


def make_corpus(root, first, n, size):
  """Files of documents `<iii>` repeated (made once: rewriting them would make another dataset)."""
  if os.path.isdir(root):
    return os.path.join(root, "*.txt")
  os.makedirs(root)
  for i in range(first, first + n):
    with open(os.path.join(root, f"doc{i:03d}.txt"), "w") as f:
      f.write(f"<{i:03d}>" * size)
  return os.path.join(root, "*.txt")


def mix_cfg(tmp_path, weights=(0.75, 0.25), small_b=False, **kw):
  """Source "a": docs 0-59; source "b": docs 100-159 (or a small one: 101-108)."""
  glob_a = make_corpus(str(tmp_path / "a"), 0, 60, 12)
  glob_b = make_corpus(str(tmp_path / ("b_small" if small_b else "b")), 100 if not small_b else 101,
                       60 if not small_b else 8, 12 if not small_b else 8)
  c = cfg_lib.base().data
  c.update(dict(name="text_files", data_dir=str(tmp_path / "tfds"), seq_len=32))
  c.mixture = {"a": dict(text_glob=glob_a, weight=weights[0]), "b": dict(text_glob=glob_b, weight=weights[1])}
  c.update(kw)
  return c


def markers(rows):
  tok = data.ByteTokenizer()
  return [{int(m) for m in re.findall(r"(\d{3})", tok.decode(r))} for r in rows]


def test_rows_come_from_their_source_in_the_planned_shares(tmp_path):
  c = mix_cfg(tmp_path)
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  assert td.sources == ["a", "b"] and td.plan.L == 2048
  src_counts = np.zeros(2, int)
  for step in range(30):
    source, _ = td._locate(step, 0, None)  # pylint: disable=protected-access
    for k, m in zip(source, markers(td.read(step))):
      assert m and all((i < 100) == (k == 0) for i in m)  # a row of source a holds a's documents only
    src_counts += np.bincount(source, minlength=2)
  assert abs(src_counts[0] / src_counts.sum() - 0.75) < 0.1
  log = td.log_fields(30, 20)
  assert log == {"tokens/a": int(src_counts[0]) * 32, "tokens/b": int(src_counts[1]) * 32}


def test_batches_from_any_step_are_the_uninterrupted_ones(tmp_path):
  td = data.TrainData(mix_cfg(tmp_path, mixture_block_size=16), seq_len=32, global_batch=8, seed=0)
  want = [td.batch(s)["inputs"] for s in range(10)]
  again = data.TrainData(mix_cfg(tmp_path, mixture_block_size=16), seq_len=32, global_batch=8, seed=0)
  with again.iterate(4) as it:
    for s in range(4, 10):
      np.testing.assert_array_equal(next(it)["inputs"], want[s])


def test_a_small_source_repeats_in_epochs(tmp_path):
  c = mix_cfg(tmp_path, weights=(0.5, 0.5), small_b=True, mixture_block_size=8)  # a block per batch
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  n_b = td.rows[1].num_rows
  assert 4 <= n_b < 40
  source, index = td.plan.locate(np.arange(20 * 8))
  rows = td.row_indices(0, 0, 20 * 8)  # the first 20 batches' rows, as one long batch reads them
  q, r = index[source == 1], rows[source == 1]
  by_q = dict(zip(q.tolist(), r.tolist()))
  first_epochs = [[by_q[e * n_b + i] for i in range(n_b)] for e in range(q.max() // n_b) if
                  all(e * n_b + i in by_q for i in range(n_b))]
  assert len(first_epochs) >= 2
  for epoch in first_epochs:  # each epoch visits every row of b once, in its own order
    assert sorted(epoch) == list(range(n_b))
  assert not np.array_equal(first_epochs[0], first_epochs[1])


def test_a_source_smaller_than_its_share_of_a_batch_is_named(tmp_path):
  c = mix_cfg(tmp_path, weights=(0.1, 0.9), small_b=True)
  with pytest.raises(data.DataError, match=r"mixture source 'b' has \d+ rows .* fewer than its share of one global "
                                           r"batch \(58 of 64 rows") as e:
    data.TrainData(c, seq_len=32, global_batch=64, seed=0)
  assert "\n" not in str(e.value)


def test_fingerprint_and_eval_sets(tmp_path):
  c = mix_cfg(tmp_path, mixture_block_size=16)  # blocks of two steps
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  fp = td.fingerprint(7)
  assert json.loads(json.dumps(fp)) == fp and fp["mixture"] == ["a", "b"]
  assert fp["mixture.a.rows_before"] + fp["mixture.b.rows_before"] == 7 * 8 and "mixture.a.block_rows" in fp
  assert "mixture.a.block_rows" not in td.fingerprint(6)  # at a block's start nothing of it is spent
  # Weights that agree up to the resumed step continue the same batches: the fingerprint there is the same.
  later = data.TrainData(mix_cfg(tmp_path, weights=(((0, 0.75), (6, 0.75), (20, 0.1)), 0.25), mixture_block_size=16),
                         seq_len=32, global_batch=8, seed=0)
  for step in (6, 7):
    assert later.fingerprint(step) == td.fingerprint(step)
    np.testing.assert_array_equal(later.batch(step)["inputs"], td.batch(step)["inputs"])
  assert not np.array_equal(later.batch(15)["inputs"], td.batch(15)["inputs"])
  earlier = data.TrainData(mix_cfg(tmp_path, weights=(((0, 0.75), (2, 0.75), (4, 0.1)), 0.25),
                                   mixture_block_size=16), seq_len=32, global_batch=8, seed=0)
  assert earlier.fingerprint(6) != td.fingerprint(6)  # it changed rows before the step: other data
  sets = data.eval_sets(c, seq_len=32, global_batch=4, num_batches=2)
  assert list(sets) == ["a", "b"] and all(s.tokens == 2 * 4 * 32 for s in sets.values())
  for name, s in sets.items():
    for m in markers(np.concatenate([b["inputs"] for b in s.batches])):
      assert all((i < 100) == (name == "a") for i in m)
  assert len(data.eval_batches(c, seq_len=32, global_batch=4, num_batches=2)) == 4


def test_packing_and_masks_apply_to_every_source(tmp_path):
  c = mix_cfg(tmp_path, packing="pad", document_mask=True)
  td = data.TrainData(c, seq_len=32, global_batch=8, seed=0)
  b = td.batch(2)
  assert set(b) == {"inputs", "targets", "segment_ids", "weights"}
  seg, w = data.packing.segments(td.read(2), td.eos_id, td.lengths(2))
  np.testing.assert_array_equal(b["segment_ids"], seg)
  np.testing.assert_array_equal(b["weights"], w)
  assert set(td.log_fields(3, 0)) == {"tokens/a", "tokens/b", "packing_efficiency"}


# ---------------------------------------------------------------- bad settings: one line each, before training


def config_with(mix, **data_kw):
  c = cfg_lib.base()
  c.data.mixture = mix
  c.data.update(data_kw)
  return c


@pytest.mark.parametrize("mix, match", [
    ({"a": dict(weight=0.0), "b": dict(weight=0.0)}, r"the mixture's weights sum to 0 at step 0"),
    ({"a": dict(weight=-1.0), "b": dict(weight=2.0)}, r"data.mixture.a.weight=-1.0 has a negative"),
    ({"a": dict(weight=((0, 1.0), (500, 0.5), (200, 0.2)))}, r"steps must be >= 0 and strictly increasing"),
    ({"a": dict(weight=((0, 1.0), (100, 0.0))), "b": dict(weight=((0, 1.0), (50, 0.0)))},
     r"weights sum to 0 at step 100"),
    ({"a": dict(weight="heavy")}, r"data.mixture.a.weight='heavy' is neither a number"),
    ({"a": dict(name="pystdlib")}, r"data.mixture.a has no weight"),
    ({"a": dict(weight=1.0, seq_len=64)}, r"data.mixture.a.seq_len is set, but data.seq_len is one for the whole run"),
    ({"a": dict(weight=1.0, tokenizer="x.model")}, r"data.tokenizer is one for the whole run"),
    ({"a b": dict(weight=1.0)}, r"mixture source name 'a b' is not"),
])
def test_bad_mixtures_are_one_line_before_training(mix, match):
  with pytest.raises(cfg_lib.ConfigError, match=match) as e:
    preflight.validate(config_with(mix), num_devices=1)
  assert "\n" not in str(e.value)


def test_unknown_source_or_field_is_named(tmp_path):
  path = tmp_path / "mix.py"
  path.write_text("from jaxtrain import config\n"
                  "def get_config(arg=None):\n"
                  "  c = config.base()\n"
                  "  c.data.mixture = {'web': dict(name='pystdlib', weight=0.5), 'code': dict(weight=0.5)}\n"
                  "  return c\n")
  c = cfg_lib.load(str(path), ["data.mixture.code.weight=0.25"])
  assert c.data.mixture.code.weight == 0.25
  with pytest.raises(cfg_lib.ConfigError, match=r"unknown config key 'data.mixture.wbe.weight'; did you mean "
                                                r"'data.mixture.web.weight'\?"):
    cfg_lib.load(str(path), ["data.mixture.wbe.weight=0.3"])
  path.write_text(path.read_text().replace("weight=0.5)}", "weight=0.5, wieght=1)}"))
  with pytest.raises(cfg_lib.ConfigError, match=r"'data.mixture.code.wieght' is not a mixture source field"):
    cfg_lib.load(str(path))


def test_from_json_keeps_a_mixture():
  c = config_with({"a": dict(weight=((0, 1.0), (10, 2.0))), "b": dict(name="pystdlib", weight=1.0)})
  back = cfg_lib.from_json(json.loads(c.to_json_best_effort()))
  assert mixture.names(back.data) == ["a", "b"]
  assert mixture.schedule(back.data.mixture.a.weight) == ((0, 1.0), (10, 2.0))
  assert mixture.source_config(back.data, "b").name == "pystdlib" and not mixture.source_config(back.data, "b").mixture


# ---------------------------------------------------------------- through the trainer


def test_a_mixture_trains_logging_tokens_and_eval_loss_per_source(tiny, tmp_path):
  """Every log line has tokens/<source> (from the step: it adds up to `tokens`), each evaluation eval_loss/<source>
  beside eval_loss, their tokens' mean; a resume continues with the uninterrupted run's losses."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxtrain import train  # pylint: disable=import-outside-toplevel
  from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  c = tiny(train__steps=6, train__log_every=1, train__eval_every=3, train__checkpoint_every=3,
           train__eval_batches=1)
  glob_b = make_corpus(str(tmp_path / "b"), 100, 60, 12)
  c.data.mixture = {"code": dict(weight=((0, 0.5), (6, 0.9))), "prose": dict(name="text_files", text_glob=glob_b,
                                                                           weight=0.5)}
  one = jax.devices()[:1]
  train.train(c, str(tmp_path / "run"), devices=one)
  rows = read_metrics(str(tmp_path / "run"))
  logs = [r for r in rows if "loss" in r]
  assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]
  for r in logs:
    assert r["tokens/code"] + r["tokens/prose"] == r["tokens"] and r["tokens/prose"] > 0
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [3, 6]
  sets = data.eval_sets(c.data, seq_len=32, global_batch=8, num_batches=1)
  for r in evals:
    per = [r["eval_loss/code"], r["eval_loss/prose"]]
    tokens = [sets["code"].tokens, sets["prose"].tokens]
    assert r["eval_loss"] == pytest.approx(np.dot(per, tokens) / sum(tokens), rel=1e-6) and per[0] != per[1]
  # killed after step 3's checkpoint: the resume's losses are the uninterrupted run's
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(tmp_path / "run", tmp_path / "again")
  shutil.rmtree(tmp_path / "again" / "checkpoints" / "6")
  (tmp_path / "again" / "metrics.jsonl").write_text("".join(
      json.dumps(r) + "\n" for r in rows if r["step"] <= 3))
  train.train(c, str(tmp_path / "again"), devices=one)
  again = read_metrics(str(tmp_path / "again"))
  for key in ("loss", "tokens/code", "tokens/prose"):
    assert [r[key] for r in again if "loss" in r and r["step"] > 3] == [r[key] for r in logs if r["step"] > 3]
  c.data.mixture.prose.weight = 0.25  # other rows before the checkpoint's step: refused, naming the field
  with pytest.raises(cfg_lib.ConfigError, match=r"trained on other data \(mixture.code.rows_before: checkpoint"):
    train.train(c, str(tmp_path / "again"), devices=one)
