"""jaxtrain/profiling.py and the end-of-run time breakdown: the trace of train.profile_steps holds exactly the
window's steps, the losses are those of the same run without it, a device-memory profile on request, the time
breakdown in the log, metrics.jsonl and summary.json; a profile range outside the run is one line."""

import glob
import gzip
import json
import logging
import re

import jax
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import loop, preflight, profiling, train
from jaxtrain.run import load_run
from jaxtrain.metrics import read_metrics

ONE = jax.devices()[:1]


def validate(c):
  return preflight.validate(c, num_devices=1, vocab_size=256, platform="cpu")


def test_a_profile_range_outside_the_run_is_one_line(tiny):
  for steps, match in (("15:25", r"^train.profile_steps='15:25' is outside the run's steps 0..20 \(train.steps\) or "
                                 r"empty: choose 0 <= A < B <= 20, e.g. '10:15'$"),
                       ("9:9", r"^train.profile_steps='9:9' is outside"),
                       ("5-10", r"^train.profile_steps='5-10' is not a range of steps: write 'A:B'")):
    with pytest.raises(cfg_lib.ConfigError, match=match):
      validate(tiny(train__profile_steps=steps))
  with pytest.raises(cfg_lib.ConfigError, match=r"^train.memory_profile_step=21 is outside the run's steps 1..20"):
    validate(tiny(train__memory_profile_step=21))
  validate(tiny(train__profile_steps=" 0 : 20", train__memory_profile_step=20))  # the whole run is a window
  assert profiling.parse_steps("") is None and profiling.parse_steps("3:7") == (3, 7)


def losses(workdir):
  return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in read_metrics(workdir) if "loss" in r or
          "eval_loss" in r]


def test_trace_of_the_window_written_and_losses_unchanged(tiny, tmp_path, caplog):
  c = dict(train__steps=12, train__log_every=1, train__eval_every=6, train__checkpoint_every=12)
  train.train(tiny(**c), str(tmp_path / "plain"), devices=ONE)
  with caplog.at_level(logging.INFO, logger="jaxtrain"):
    summary = train.train(tiny(train__profile_steps="6:9", train__memory_profile_step=10, **c),
                          str(tmp_path / "profiled"), devices=ONE)
  assert losses(str(tmp_path / "profiled")) == losses(str(tmp_path / "plain"))  # exactly
  profile = tmp_path / "profiled" / "profile" / "process_0"
  (run,) = glob.glob(str(profile / "plugins" / "profile" / "*"))  # one trace, TensorBoard's layout
  assert glob.glob(f"{run}/*.xplane.pb")
  events = json.load(gzip.open(f"{run}/perfetto_trace.json.gz"))
  events = events["traceEvents"] if isinstance(events, dict) else events
  # The three steps from state 6 to 9, whole, and no other: each a call of the jitted step's mesh wrapper.
  calls = [e for e in events if e.get("ph") == "X" and re.fullmatch(r"\$train\.py:\d+ run", e.get("name", ""))]
  assert len(calls) == 3, sorted({e.get("name") for e in events if "train.py" in e.get("name", "")})
  assert (profile / "memory_step_10.prof").stat().st_size > 0
  assert "step 9: profiler trace written to" in caplog.text
  # The profiled steps are left out of the throughput figures: not timed, and the rows they end have none.
  rows = {r["step"]: r for r in read_metrics(str(tmp_path / "profiled")) if "loss" in r}
  assert [s for s, r in rows.items() if "tokens_per_second" not in r] == [1, 7, 8, 9]  # 1: it compiled
  assert summary["time"]["profile"] > 0


def test_the_time_breakdown_is_logged_in_one_line_and_kept(tiny, tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger="jaxtrain"):
    summary = train.train(tiny(train__steps=10), str(tmp_path), devices=ONE)
  (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wall time ")]
  assert re.fullmatch(r"wall time [\d.]+ s: .*", line) and "training steps" in line, line
  t = summary["time"]
  assert set(t) == set(loop.PHASES) | {"other", "total"}
  assert t["train"] > 0 and t["eval"] > 0 and t["save"] > 0 and t["compile"] > 0 and t["setup"] > 0
  assert sum(v for k, v in t.items() if k != "total") == pytest.approx(t["total"], rel=1e-6)
  (row,) = [r for r in read_metrics(str(tmp_path)) if "time/total" in r]  # for load_run(...).metrics
  assert row["step"] == 10 and row == {"step": 10, **{f"time/{k}": v for k, v in t.items()}}
  kept = json.load(open(tmp_path / "summary.json"))
  assert kept["final_eval_loss"] == summary["final_eval_loss"] and kept["time/train"] == t["train"]
  run = load_run(str(tmp_path))
  assert run.summary == kept and run.metrics.dropna(subset=["time/total"])["time/train"].tolist() == [t["train"]]
