"""jaxtrain/trackers.py: another tracker is one class and sees every line; Weights & Biases offline, read back from
its .wandb file (the config, every metric line, the per-layer charts, the summary), a resume continuing the same
W&B run; bad input in one line each."""

import glob
import importlib.util
import json
import os
import struct

import jax
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import preflight, trackers, train
from jaxtrain.metrics import MetricWriter, read_metrics

ONE = jax.devices()[:1]


def validate(c):
  return preflight.validate(c, num_devices=1, vocab_size=256, platform="cpu")


def test_unknown_tracker_is_one_line(tiny):
  with pytest.raises(cfg_lib.ConfigError, match=r"^train.trackers: unknown tracker 'wandbb'; did you mean 'wandb'\? "
                     r"Choose from jsonl, tensorboard, wandb") as e:
    validate(tiny(train__trackers="jsonl,wandbb"))
  assert "\n" not in str(e.value)
  assert trackers.names(" tensorboard, ,wandb,tensorboard") == ["jsonl", "tensorboard", "wandb"]  # jsonl always


def test_wandb_requested_but_not_installed_is_one_line(tiny, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
  with pytest.raises(cfg_lib.ConfigError, match=r"^train.trackers names wandb but the wandb package is not "
                     r"installed: pip install 'jaxtrain\[wandb\]' \(or leave wandb out of train.trackers\)$"):
    validate(tiny(train__trackers="jsonl,tensorboard,wandb"))
  validate(tiny(train__trackers="jsonl,tensorboard"))  # nothing asks for it
  with pytest.raises(cfg_lib.ConfigError, match=r"^wandb.mode='ofline' is not one of"):
    validate(tiny(wandb__mode="ofline"))


class Recorder:
  """A tracker in a few lines: what the trainer tells it, kept."""

  made = []

  def __init__(self, workdir, first_step, config=None):
    self.workdir, self.first_step, self.lines, self.config, self.summary_, self.finished = workdir, first_step, [], \
        None, None, False
    Recorder.made.append(self)

  def log_config(self, config):
    self.config = config

  def log(self, step, metrics):
    self.lines.append({"step": step, **metrics})

  def flush(self):
    pass

  def summary(self, values):
    self.summary_ = values

  def finish(self):
    self.finished = True


def test_another_tracker_is_one_class_and_sees_every_line(tiny, tmp_path, monkeypatch):
  monkeypatch.setitem(trackers.TRACKERS, "recorder", Recorder)
  monkeypatch.setattr(Recorder, "made", [])
  summary = train.train(tiny(train__trackers="recorder", train__diagnostics_every=7), str(tmp_path), devices=ONE)
  (r,) = Recorder.made
  rows = read_metrics(str(tmp_path))
  assert r.lines == rows  # metrics.jsonl (always on) and the tracker got the same lines
  assert [x["step"] for x in rows if "layers/grad_norm" in x] == [7, 14]  # the per-layer lists too
  assert not (tmp_path / "tensorboard").exists()  # only the trackers named
  assert r.config == json.load(open(tmp_path / "config.json")) and r.first_step == 0
  assert r.summary_["final_eval_loss"] == summary["final_eval_loss"] and r.summary_["step"] == 20
  assert r.summary_ == json.load(open(tmp_path / "summary.json"))
  assert r.finished


def test_every_tracker_is_closed_when_one_fails_to_close(tmp_path, monkeypatch):
  class Fails(Recorder):
    def finish(self):
      raise OSError("disk full")

  monkeypatch.setitem(trackers.TRACKERS, "fails", Fails)
  monkeypatch.setitem(trackers.TRACKERS, "recorder", Recorder)
  monkeypatch.setattr(Recorder, "made", [])
  c = cfg_lib.base()
  c.train.trackers = "fails,recorder"
  writer = MetricWriter(str(tmp_path), total_steps=2, first_step=0, progress="log", config=c)
  writer.write(1, {"loss": 2.0})
  with pytest.raises(OSError, match="disk full"):
    writer.close()
  assert Recorder.made[1].finished and Recorder.made[1].lines == [{"step": 1, "loss": 2.0}]


def wandb_records(path: str) -> list:
  """The records of a .wandb file: W&B's LevelDB-log framing (a 7-byte ':W&B' header, then 32 KiB blocks of
  records, each with a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST) around wandb_internal_pb2.Record
  protobufs. W&B's own Python reader left the package when its internals moved to Go (wandb-core)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  data, block = open(path, "rb").read(), 32768
  assert data[:4] == b":W&B"
  pos, chunks, part = 7, [], b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
    if kind == 1:
      chunks.append(chunk)
    elif kind == 2:
      part = chunk
    elif kind == 3:
      part += chunk
    elif kind == 4:
      chunks.append(part + chunk)
  records = []
  for chunk in chunks:
    r = wandb_internal_pb2.Record()
    r.ParseFromString(chunk)
    records.append(r)
  return records


def wandb_run(path: str) -> dict:
  """{'id', 'project', 'name', 'tags', 'config', 'history' {step: {key: value}}, 'summary'} of an offline run file."""
  out = {"config": {}, "history": {}, "summary": {}}
  key = lambda item: item.key or "/".join(item.nested_key)
  for r in wandb_records(path):
    kind = r.WhichOneof("record_type")
    if kind == "run":
      out |= {"id": r.run.run_id, "project": r.run.project, "name": r.run.display_name, "tags": list(r.run.tags)}
      out["config"] |= {key(i): json.loads(i.value_json) for i in r.run.config.update}
    elif kind == "config":
      out["config"] |= {key(i): json.loads(i.value_json) for i in r.config.update}
    elif kind == "history":
      row = {key(i): json.loads(i.value_json) for i in r.history.item}
      out["history"].setdefault(row["_step"], {}).update(row)
    elif kind == "summary":
      out["summary"] |= {key(i): json.loads(i.value_json) for i in r.summary.update if key(i)}
  return out


def test_wandb_offline_run_read_back_and_a_resume_continues_it(tiny, tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")  # no network: the run stays in <workdir>/wandb
  monkeypatch.setenv("WANDB_SILENT", "true")
  c = lambda steps: tiny(train__steps=steps, train__trackers="jsonl,wandb", train__diagnostics_every=4,
                         wandb__project="jt-test", wandb__tags="a,b")
  train.train(c(10), str(tmp_path), devices=ONE)
  run_id = (tmp_path / "wandb_run_id").read_text()
  train.train(c(20), str(tmp_path), devices=ONE)  # resumes from step 10: the same W&B run
  assert (tmp_path / "wandb_run_id").read_text() == run_id
  files = sorted(glob.glob(os.fspath(tmp_path / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")))
  assert len(files) == 2, os.listdir(tmp_path / "wandb")
  first, second = map(wandb_run, files)
  for run in (first, second):
    assert (run["id"], run["project"], run["name"], run["tags"]) == (run_id, "jt-test", tmp_path.name, ["a", "b"])
    assert run["config"]["model"]["d_model"] == 32 and run["config"]["train"]["trackers"] == "jsonl,wandb"
  assert max(first["history"]) == 10 and min(second["history"]) > 10  # the resume goes on after its checkpoint
  history = first["history"] | second["history"]
  # Every metric line, at its step: training, evaluation, the end-of-run time breakdown...
  for row in read_metrics(str(tmp_path)):
    logged = history[row["step"]]
    for k, v in row.items():
      if isinstance(v, float):
        assert logged[k] == pytest.approx(v, rel=1e-12), (row["step"], k)
      elif isinstance(v, list):  # ... and the per-layer lists: a series per layer, and the layers/ ones by depth
        assert [logged[f"{k}/{l:02d}"] for l in range(len(v))] == pytest.approx(v, rel=1e-12)
        assert not k.startswith("layers/") or any(x.startswith(f"{k}/by_layer_table") for x in logged), k
  assert [s for s, r in history.items() if "layers/grad_norm/01" in r] == [4, 8, 12, 16, 20]
  assert history[20]["time/train"] > 0 and history[10]["eval_loss"] > history[20]["eval_loss"]
  summary = json.load(open(tmp_path / "summary.json"))
  assert second["summary"]["final_eval_loss"] == pytest.approx(summary["final_eval_loss"])
  assert second["summary"]["time/total"] == pytest.approx(summary["time/total"])
