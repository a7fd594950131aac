"""The sweep package (jaxtrain/sweep/, issues 12 and 21): grid expansion, naming, the definition check, statuses;
the runner over a list of points (another launch module, seeds as an axis, grouping, the point check); signals,
--parallel and the lock with stand-in points (small scripts, no JAX: fast); and one small sweep of the tiny model
through the real CLIs: the results table, a diverging point, skipping finished points, a killed sweep resumed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import sweep

import multihost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(fn, *args, match, **kw):
  with pytest.raises(cfg_lib.ConfigError, match=match) as e:
    fn(*args, **kw)
  assert "\n" not in str(e.value)
  return str(e.value)


# ---------------------------------------------------------------- the grid


def test_grid_is_the_product_of_the_axes_last_fastest():
  assert sweep.expand(["model.d_model=64,128", "optim.lr=1e-3,2e-3,4e-3"]) == [
      {"model.d_model": d, "optim.lr": lr} for d in (64, 128) for lr in (1e-3, 2e-3, 4e-3)]


def test_zipped_fields_vary_together():
  points = sweep.expand(["model.d_model=64,128,256;model.num_heads=2,4,8", "model.qk_norm=true,false"])
  assert [(p["model.d_model"], p["model.num_heads"], p["model.qk_norm"]) for p in points] == [
      (64, 2, True), (64, 2, False), (128, 4, True), (128, 4, False), (256, 8, True), (256, 8, False)]


def test_geometric_ranges():
  assert sweep.expand(["optim.lr=2e-4:1.6e-2:x2"]) == [{"optim.lr": 2e-4 * 2**i} for i in range(7)]  # up to 1.28e-2
  # 1e-4·3² is 0.0009000000000000001 > 9e-4 in floats: the tolerance keeps it, and values are the decimals meant.
  assert sweep.geometric(1e-4, 9e-4, 3) == [1e-4, 3e-4, 9e-4]
  assert sweep.geometric(3e-5, 3e-2, 10) == [3e-5, 3e-4, 3e-3, 3e-2]
  assert sweep.geometric(1e-4, 8.9e-4, 3) == [1e-4, 3e-4]  # a real gap is not closed by the tolerance
  assert [type(v) for v in sweep.geometric(64, 512, 2)] == [int] * 4  # integers stay integers (widths)
  assert sweep.expand(["model.d_model=64:600:x2"]) == [{"model.d_model": d} for d in (64, 128, 256, 512)]


def test_values_take_the_fields_types_with_a_config():
  base = cfg_lib.base()
  assert sweep.expand(["optim.lr=1,2", "model.mlp=gelu"], config=base) == [
      {"optim.lr": 1.0, "model.mlp": "gelu"}, {"optim.lr": 2.0, "model.mlp": "gelu"}]
  assert isinstance(sweep.expand(["optim.lr=1"], config=base)[0]["optim.lr"], float)
  one_line_error(sweep.expand, ["optim.lrr=1,2"], config=base, match="unknown config key 'optim.lrr'; did you mean "
                 "'optim.lr'")
  one_line_error(sweep.expand, ["model.d_model=64,wide"], config=base, match="expected a value of type int")


@pytest.mark.parametrize("grid, message", [
    (["optim.lr"], "expected FIELD=VALUES"),
    (["optim.lr="], "expected FIELD=VALUES"),
    (["=1,2"], "expected FIELD=VALUES"),
    (["optim.lr=1,,2"], "an empty value"),
    (["optim.lr=1e-2:1e-4:x2"], "0 < LO <= HI and K > 1"),
    (["optim.lr=1e-4:1e-2:x1"], "0 < LO <= HI and K > 1"),
    (["optim.lr=0:1:x2"], "0 < LO <= HI and K > 1"),
    (["optim.lr=a:1:x2"], "'a' is not a number"),
    (["optim.lr=1e-9:1:x1.0001"], "more than 1000 values"),
    (["model.d_model=64,128;model.num_heads=2,4,8"], "equally many values, got 2 for model.d_model, 3 for "),
    (["optim.lr=1,2;optim.lr=3,4"], "optim.lr appears twice"),
    (["optim.lr=1,2", "model.d_model=1;optim.lr=3"], "optim.lr is swept by two --grid axes"),
    ([], "at least one --grid"),
])
def test_bad_grids_are_one_line_errors(grid, message):
  one_line_error(sweep.expand, grid, match=message)


# ---------------------------------------------------------------- names


def test_names_are_the_shortest_unique_suffixes():
  assert sweep.short_names(["model.d_model", "optim.lr", "model.norm.eps", "optim.eps", "seed"]) == {
      "model.d_model": "d_model", "optim.lr": "lr", "model.norm.eps": "norm.eps", "optim.eps": "optim.eps",
      "seed": "seed"}
  assert sweep.short_names(["model.mus.d_base", "model.d_model"]) == {"model.mus.d_base": "d_base",
                                                                       "model.d_model": "d_model"}


def test_point_names_are_stable(tmp_path):
  """The names are the resume key: these exact strings must not change between versions."""
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  grid = ["model.d_model=32,64;model.num_heads=2,4", "optim.lr=2e-4:8e-4:x2", "model.qk_norm=true",
          "data.name=c4/en"]
  names = [p.name for p in sweep.plan(config, grid, str(tmp_path / "s")).points]
  assert names[:3] == ["d_model=32,num_heads=2,lr=0.0002,qk_norm=True,name=c4_en",
                       "d_model=32,num_heads=2,lr=0.0004,qk_norm=True,name=c4_en",
                       "d_model=32,num_heads=2,lr=0.0008,qk_norm=True,name=c4_en"]
  assert len(set(names)) == 6 and names == [p.name for p in sweep.plan(config, grid, str(tmp_path / "s")).points]
  assert sweep.format_value(1e-5) == "1e-05" and sweep.format_value(1.0) == "1" and sweep.format_value(64) == "64"


def test_plan_refuses_what_cannot_run(tmp_path):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  d = str(tmp_path / "s")
  one_line_error(sweep.plan, config, ["optim.lr=1e-3,abc"], d, match="--grid point optim.lr=abc: .*expected a value "
                 "of type float")
  one_line_error(sweep.plan, config, ["optim.lr=1e-3,1e-3"], d, match="both named 'lr=0.001'")
  one_line_error(sweep.plan, config, ["optim.lr=1e-3"], d, ["optim.lr=1"], match="both swept .* and fixed")
  one_line_error(sweep.plan, config, ["optim.lr=1e-3"], d, ["optim.lrr=1"], match="did you mean 'optim.lr'")
  one_line_error(sweep.plan, str(tmp_path / "nope.py"), ["optim.lr=1e-3"], d, match="does not exist")


def test_a_different_sweep_on_the_same_dir_is_refused(tmp_path):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"), **{"train.steps": 12})
  d = str(tmp_path / "s")
  os.makedirs(d)

  def check(grid, overrides=(), config=config):
    p = sweep.plan(config, grid, d, overrides)
    sweep.check_definition(d, dict(p.definition, points=[x.name for x in p.points]), None)

  check(["optim.lr=1e-3,2e-3"], ["train.steps=10"])
  check(["optim.lr=0.001,0.002"], ["train.steps=10"])  # the same values, written otherwise: the same sweep
  check(["optim.lr=1e-3,2e-3"], ["train.log_every=5", "train.steps=10"])  # fixing a value as it is: no change ...
  check(["optim.lr=1e-3,2e-3"], ["train.steps=10", "train.log_every=5"])  # ... nor is the overrides' order
  one_line_error(check, ["optim.lr=1e-3,4e-3"], ["train.steps=10"], match="holds another sweep: the grid differs")
  one_line_error(check, ["optim.lr=1e-3,2e-3"], ["train.steps=11"], match="the config's train.steps was 10 there "
                 "and is 11 now")
  other = tmp_path / "other"
  other.mkdir()
  one_line_error(check, ["optim.lr=1e-3,2e-3"], ["train.steps=10"],
                 config=multihost.config_file(other, str(tmp_path / "tfds")), match="the config file differs")
  multihost.config_file(tmp_path, str(tmp_path / "tfds"), **{"train.steps": 12, "optim.warmup_steps": 3})
  one_line_error(check, ["optim.lr=1e-3,2e-3"], ["train.steps=10"],
                 match="the config's optim.warmup_steps was 5 there and is 3 now")
  # A field the schema gained since (a newer jaxtrain) is no change of the sweep.
  saved = json.load(open(os.path.join(d, "sweep.json")))
  del saved["base_config"]["optim"]["warmup_steps"]
  json.dump(saved, open(os.path.join(d, "sweep.json"), "w"))
  check(["optim.lr=1e-3,2e-3"], ["train.steps=10"])
  # run() refuses before starting anything, and the CLI says it in one line with exit code 2.
  one_line_error(sweep.run, config, ["optim.lr=1e-3"], d, log=lambda s: None, match="holds another sweep")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  for argv, message in [
      ([f"--config={config}", f"--workdir={tmp_path}/s", "--grid", "optim.lrr=1,2"], "did you mean 'optim.lr'"),
      ([f"--config={config}", "--grid", "optim.lr=1,2"], "the following arguments are required: --workdir"),
      ([f"--config={config}", f"--workdir={tmp_path}/s", "--grid", "optim.lr=1", "--plot", "d_model"],
       "--plot 'd_model' is not a swept field"),
      ([f"--config={config}", f"--workdir={tmp_path}/s", "--grid", "optim.lr=1", "--parallel", "10000"],
       "--parallel=10000 exceeds the"),
  ]:
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxtrain.sweep: error: ") and message in err and err.count("\n") == 1, err
  assert not os.path.exists(tmp_path / "s" / "points" / "lr=1")  # nothing ran


def test_dry_run_lists_the_points_and_runs_nothing(tmp_path, capsys):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  d = tmp_path / "s"
  argv = [f"--config={config}", f"--workdir={d}", "--grid", "model.d_model=32,64;model.num_heads=2,4", "--grid",
          "optim.lr=1e-3:4e-3:x2", "--config.train.steps=7", "--dry_run"]
  assert sweep.main(argv) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 7 and out[-1] == "6 points, 1 at a time"
  assert out[0].startswith("[1/6] d_model=32,num_heads=2,lr=0.001: would run: ")
  assert out[0].endswith(f"-m jaxtrain --config={config} --workdir={d}/points/d_model=32,num_heads=2,lr=0.001 "
                         "--config.train.steps=7 --config.model.d_model=32 --config.model.num_heads=2 "
                         "--config.optim.lr=0.001")
  assert out[5].startswith("[6/6] d_model=64,num_heads=4,lr=0.004: would run")
  assert not d.exists()


# ---------------------------------------------------------------- devices for --parallel


def test_parallel_points_get_disjoint_devices(monkeypatch):
  assert sweep.slots(1) == [sweep.Slot()]  # one at a time: the whole machine, untouched
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
  assert [s.env for s in sweep.slots(2)] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
  assert [s.env["CUDA_VISIBLE_DEVICES"] for s in sweep.slots(3, log=lambda s: None)] == ["0", "1", "2"]
  one_line_error(sweep.slots, 5, match="exceeds the 4 GPU")
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # then nvidia-smi -L says which GPUs there are
  monkeypatch.setattr(sweep.runner.shutil, "which", lambda name: "/usr/bin/" + name)
  listing = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n"
  monkeypatch.setattr(sweep.runner.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
  assert [s.env for s in sweep.slots(2)] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  one_line_error(sweep.slots, 2, match="not supported yet")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6})
  groups = [s.cpus for s in sweep.slots(3)]
  assert groups == [(0, 1), (2, 3), (4, 5, 6)]
  one_line_error(sweep.slots, 8, match="exceeds the 7 CPU cores")
  one_line_error(sweep.slots, 0, match="must be at least 1")


# ---------------------------------------------------------------- one point's status


def _finish(tmp_path, rc, log_text="", metrics=(), steps=10, forwarded=False, name=None):
  workdir = tmp_path / (name or f"p{rc}{forwarded}")
  workdir.mkdir()
  (workdir / "log.txt").write_text("=== sweep: an earlier attempt\nold line\n" + log_text)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
  point = sweep.Point("lr=1", overrides=["optim.lr=1"], values={"optim.lr": 1.0}, steps=steps, workdir=str(workdir))
  offset = len("=== sweep: an earlier attempt\nold line\n")
  return sweep.finish(sweep.Attempt(point, sweep.Slot(), None, offset, time.monotonic()), rc, forwarded)


def test_exit_codes_decide_the_status(tmp_path):
  done = [{"step": 5, "loss": 5.0}, {"step": 10, "loss": 4.0}, {"step": 10, "eval_loss": 4.5}]
  row = _finish(tmp_path, 0, "final validation loss\n", done)
  assert (row["status"], row["initial_loss"], row["final_train_loss"], row["final_eval_loss"], row["steps"],
          row["error"]) == ("ok", 5.0, 4.0, 4.5, 10, None)
  assert json.loads((tmp_path / "p0False" / "result.json").read_text())["status"] == "ok"
  row = _finish(tmp_path, 2, "INFO x\njaxtrain: error: model.d_model=30 is not divisible by model.num_heads=4\n")
  assert (row["status"], row["error"]) == ("error", "jaxtrain: error: model.d_model=30 is not divisible by "
                                           "model.num_heads=4")
  assert _finish(tmp_path, 3, "jaxtrain: stopped: step 3: loss became nan\n")["status"] == "diverged"
  row = _finish(tmp_path, 1, "Traceback\n  ...\nRuntimeError: boom\r\n")
  assert (row["status"], row["error"]) == ("failed", "RuntimeError: boom")
  row = _finish(tmp_path, -9, metrics=done[:1])
  assert (row["status"], row["error"], row["steps"]) == ("failed", "killed by SIGKILL", 5)
  # Exit 0 short of train.steps (a signal sent to the point itself): saved and stopped, not finished.
  row = _finish(tmp_path, 0, "stopped at step 5 (SIGTERM)\n", done[:1], name="short")
  assert row["status"] == "failed" and "stopped at step 5 of 10" in row["error"]
  # Stopped by the sweep's own Ctrl-C: unfinished, no result at all (the rerun resumes it).
  assert _finish(tmp_path, -15, forwarded=True) is None and not (tmp_path / "p-15True" / "result.json").exists()


def test_missing_matplotlib_is_one_line_and_the_tables_are_still_written(tmp_path, monkeypatch):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  p = sweep.plan(config, ["optim.lr=1e-3,2e-3"], str(tmp_path))
  monkeypatch.setattr(sweep.results, "has_matplotlib", lambda: False)
  said = []
  reporter = sweep.Reporter(p.points, str(tmp_path), "lr", log=said.append)
  reporter.write({"lr=0.001": {"status": "ok", "final_train_loss": 1.0, "final_eval_loss": 2.0, "steps": 3,
                               "wall_s": 4.0, "error": None}})
  assert said == ["sweep: matplotlib is not installed, so no plot (pip install -e '.[plots]'); the tables are written"]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [(r["optim.lr"], r["status"], r["final_eval_loss"]) for r in rows] == [("0.001", "ok", "2.0"),
                                                                               ("0.002", "pending", "")]
  assert not (tmp_path / "loss_vs_lr.png").exists()


def test_plot_x_axis_is_logarithmic_for_geometric_or_wide_positive_values(tmp_path):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))

  def log_x(grid, x):
    p = sweep.plan(config, grid, str(tmp_path))
    return sweep.Reporter(p.points, str(tmp_path), x, log=lambda s: None, geometric=p.geometric).log_x

  assert log_x(["optim.lr=1e-3:4e-3:x2"], "lr")  # geometric, however narrow
  assert log_x(["optim.lr=3e-4,1e-3,3e-3,1e-2"], "lr")  # a decade or more, written out
  assert not log_x(["optim.lr=1e-3,2e-3,4e-3"], "lr")
  assert not log_x(["seed=0,1,2", "optim.lr=1e-4,1e-2"], "seed")  # 0 has no logarithm


# ---------------------------------------------------------------- signals and --parallel, with stand-in points

# The sweep CLI in a subprocess whose points are this small script instead of a training run (no JAX: fast).
DRIVER = """
import sys
from jaxtrain import sweep
sweep.runner.command_line = lambda point: [sys.executable, "-c", sys.argv[1], point.workdir]
sys.exit(sweep.main(sys.argv[2:]))
"""
POINT = """
import os, signal, sys, time
workdir = sys.argv[1]
def on_signal(signum, _):
  open(os.path.join(workdir, "got"), "w").write(signal.Signals(signum).name)
  sys.exit(0)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
open(os.path.join(workdir, "cpus"), "w").write(" ".join(map(str, sorted(os.sched_getaffinity(0)))))
others = os.path.join(os.path.dirname(workdir), "{other}", "cpus")
deadline = time.time() + {wait}
while time.time() < deadline and not os.path.exists(others):
  time.sleep(0.01)
print("together" if os.path.exists(others) else "alone")
sys.exit(1)
"""


def _driver(tmp_path, point_script, *flags):
  config = multihost.config_file(tmp_path, str(tmp_path / "tfds"))
  d = tmp_path / "s"
  argv = [f"--config={config}", f"--workdir={d}", "--grid", "seed=0,1", *flags]
  out = open(tmp_path / "out.txt", "w")
  return subprocess.Popen([sys.executable, "-c", DRIVER, point_script, *argv], cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT), d


def _wait_for(path, proc, timeout=60):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert time.time() < deadline and (proc is None or proc.poll() is None), f"no {path}"
    time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_stops_its_point_which_stays_unfinished(tmp_path, sig):
  proc, d = _driver(tmp_path, POINT.format(other="nothing", wait=60))
  _wait_for(d / "points" / "seed=0" / "cpus", proc)
  proc.send_signal(sig)
  assert proc.wait(timeout=60) == 128 + sig
  out = (tmp_path / "out.txt").read_text()
  assert (d / "points" / "seed=0" / "got").read_text() == sig.name  # forwarded, once (a second SIGINT aborts)
  assert not (d / "points" / "seed=0" / "result.json").exists()  # unfinished, not failed: the rerun resumes it
  assert not (d / "points" / "seed=1").exists()  # no point started after the signal
  assert f"seed=0: stopped by {sig.name}, unfinished" in out and out.rstrip().endswith("run the same command to "
                                                                                        "continue")
  assert [r["status"] for r in csv.DictReader(open(d / "results.csv"))] == ["pending", "pending"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_sweep_tells_its_point_to_stop(tmp_path):
  proc, d = _driver(tmp_path, POINT.format(other="nothing", wait=60))
  _wait_for(d / "points" / "seed=0" / "cpus", proc)
  config = str(tmp_path / "tiny_config.py")  # while it runs, a second sweep on its DIR is refused
  one_line_error(sweep.run, config, ["seed=0,1"], str(d), log=lambda s: None,
                 match=f"another sweep \\(pid {proc.pid}\\) is running in {d}")
  proc.kill()
  _wait_for(d / "points" / "seed=0" / "got", None, timeout=30)  # within seconds, not after the point's 60 s
  assert (d / "points" / "seed=0" / "got").read_text() == "SIGTERM"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_parallel_points_run_at_once_on_disjoint_cores(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # Each point waits for the other's file: both end "together" only if they ran at the same time.
  proc, d = _driver(tmp_path, POINT.format(other="seed=*", wait=30).replace(
      'os.path.exists(others)', '(len(__import__("glob").glob(others)) == 2)'), "--parallel", "2")
  assert proc.wait(timeout=90) == 1  # the stand-ins exit 1: failed
  rows = sweep.read_results(str(d))
  assert [(r["status"], r["error"]) for r in rows] == [("failed", "together")] * 2, rows
  cpus = [set(map(int, (d / "points" / f"seed={i}" / "cpus").read_text().split())) for i in (0, 1)]
  assert cpus[0] and cpus[1] and not cpus[0] & cpus[1] and cpus[0] | cpus[1] <= os.sched_getaffinity(0)
  assert "2 at a time" in (tmp_path / "out.txt").read_text()


# ---------------------------------------------------------------- a list of points (the studies' runner)

# A stand-in trainer: `script WORKDIR EXIT --config.seed=S`: a metrics.jsonl whose loss depends on the seed.
TRAINER = """
import json, os, sys
workdir, code = sys.argv[1], int(sys.argv[2])
seed = int(next((a.split("=")[1] for a in sys.argv[3:] if a.startswith("--config.seed=")), "0"))
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
  f.write(json.dumps({"step": 1, "loss": 5.0}) + "\\n")
  f.write(json.dumps({"step": 2, "loss": 4.0 + seed, "eval_loss": 4.5 + seed}) + "\\n")
print("jaxtrain: error: a bad config" if code == 2 else "done")
sys.exit(code)
"""


def _points(code_a=0, code_b=3):
  return [sweep.Point("a", values={"kind": "a"}, command=[sys.executable, "-c", TRAINER, "{workdir}", str(code_a)]),
          sweep.Point("b", values={"kind": "b"}, command=[sys.executable, "-c", TRAINER, "{workdir}", str(code_b)])]


def test_a_list_of_points_runs_with_seeds_as_an_axis_and_groups_over_them(tmp_path):
  d = str(tmp_path / "study")
  points = sweep.with_seeds(_points(), [0, 1, 2])
  assert [p.name for p in points] == [f"{k},seed={s}" for k in "ab" for s in (0, 1, 2)]
  rows = sweep.run_points(points, d, log=lambda s: None)
  assert [(r["name"], r["status"]) for r in rows] == [(p.name, "ok" if p.name < "b" else "diverged") for p in points]
  assert [r["final_eval_loss"] for r in rows[:3]] == [4.5, 5.5, 6.5] and rows[0]["values"] == {"kind": "a", "seed": 0}
  assert all(r["started"] and r["finished"] and r["workdir"] == os.path.join(d, "points", r["name"]) for r in rows)
  table = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
  assert [(r["kind"], r["seed"], r["status"]) for r in table][:2] == [("a", "0", "ok"), ("a", "1", "ok")]
  assert sweep.value(rows[1], "seed") == 1 and sweep.value(rows[1], "kind") == "a"
  with pytest.raises(KeyError, match="lr is not among"):
    sweep.value(rows[1], "lr")
  groups = sweep.group(sweep.read_results(d), over="seed")
  assert [(g, [r["values"]["seed"] for r in rs]) for g, rs in groups] == [({"kind": "a"}, [0, 1, 2]),
                                                                         ({"kind": "b"}, [0, 1, 2])]
  # A rerun skips the finished points; a new point may join; a changed launch under an old name is refused.
  said = []
  more = points + [sweep.Point("c", values={"kind": "c"}, command=[sys.executable, "-c", TRAINER, "{workdir}", "2"])]
  rows = sweep.run_points(more, d, log=said.append)
  assert said[0].endswith("7 points, 6 finished, 1 to run") and rows[-1]["status"] == "error"
  assert [r["name"] for r in sweep.read_results(d)] == [p.name for p in more]  # in the list's order
  assert rows[-1]["error"] == "jaxtrain: error: a bad config"
  changed = sweep.with_seeds(_points(code_a=1), [0, 1, 2])
  one_line_error(sweep.run_points, changed, d, log=lambda s: None, match=r"points/a,seed=0 holds another run")
  one_line_error(sweep.run_points, [points[0], points[0]], d, log=lambda s: None, match="two points are named")
  one_line_error(sweep.with_seeds, points, [3], match="seed is set already")
  # A study's --seeds N: one seed keeps each point as it is (its name, its config's seed), several are with_seeds.
  assert sweep.study_seeds(1) == [None] and sweep.study_seeds(3) == [0, 1, 2]
  one_line_error(sweep.study_seeds, 0, match="--seeds 0: give 1 or more")
  assert sweep.seeded(_points(), 1) == _points()
  assert [(p.name, p.values) for p in sweep.seeded(_points(), 2)] == [
      (sweep.seed_name(k, s), {"kind": k, "seed": s}) for k in "ab" for s in (0, 1)]
  assert sweep.seed_name("a", None) == "a" and sweep.seed_name("a", 1) == "a,seed=1"


def test_a_point_names_its_launch_module_or_command(tmp_path):
  p = sweep.Point("x", config="cfg.py:arg", overrides=["seed=1"], module="grokking", workdir="/w/points/x")
  assert sweep.command_line(p) == [sys.executable, "-m", "grokking", "--config=cfg.py:arg", "--workdir=/w/points/x",
                                   "--config.seed=1"]
  p = sweep.Point("x", overrides=["seed=1"], command=["trainer", "--out={workdir}/o"], workdir="/w/points/x")
  assert sweep.command_line(p) == ["trainer", "--out=/w/points/x/o", "--config.seed=1"]
  p = sweep.grid_points(multihost.config_file(tmp_path, str(tmp_path / "tfds")), ["seed=0,1"], ["train.steps=3"])
  assert [(q.name, q.values, q.overrides, q.module, q.steps) for q in p] == [
      ("seed=0", {"seed": 0}, ["train.steps=3", "seed=0"], "jaxtrain", 3),
      ("seed=1", {"seed": 1}, ["train.steps=3", "seed=1"], "jaxtrain", 3)]
  assert sweep.status_of(0) == "ok" and sweep.status_of(3) == "diverged" and sweep.status_of(2) == "error"
  assert sweep.status_of(1) == sweep.status_of(-9) == "failed"


# ---------------------------------------------------------------- a real sweep of the tiny model

STEPS = 20
GRID = ["seed=0,1,2;optim.lr=3e-3,1e30,3e-3"]  # the middle point diverges: lr 1e30, no clipping (exit code 3)
FIXED = ["--config.optim.clip_norm=0"]
NAMES = ["seed=0,lr=0.003", "seed=1,lr=1e+30", "seed=2,lr=0.003"]


def _sweep_cmd(config, workdir):
  return [sys.executable, "-m", "jaxtrain.sweep", f"--config={config}", f"--workdir={workdir}",
          *[a for g in GRID for a in ("--grid", g)], *FIXED, "--plot", "lr"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_dir):
  """A three-point sweep, SIGKILLed (the sweep and its running point) after the first point's first checkpoint,
  then rerun to the end. Returns (sweep dir, the config file, the first run's output, the rerun's)."""
  root = tmp_path_factory.mktemp("sweep")
  config = multihost.config_file(root, data_dir, **{"train.steps": STEPS, "train.checkpoint_every": 5,
                                                    "train.eval_every": 10})
  d = str(root / "s")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  with open(root / "first.txt", "w") as out:
    first = subprocess.Popen(_sweep_cmd(config, d), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
  ckpts = os.path.join(d, "points", NAMES[0], "checkpoints")
  deadline = time.time() + multihost.TIMEOUT
  while not (os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):
    assert first.poll() is None and time.time() < deadline, (root / "first.txt").read_text()
    time.sleep(0.01)
  with open(f"/proc/{first.pid}/task/{first.pid}/children") as f:
    children = [int(c) for c in f.read().split()]
  first.kill()  # SIGKILL the sweep, then its running point (which the kernel already told to stop: PDEATHSIG)
  for pid in children:
    os.kill(pid, signal.SIGKILL)
  first.wait()
  second = subprocess.run(_sweep_cmd(config, d), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=multihost.TIMEOUT)
  assert second.returncode == 0, second.stdout + second.stderr
  return d, config, (root / "first.txt").read_text(), second.stdout


def _log(d, name):
  with open(os.path.join(d, "points", name, "log.txt")) as f:
    return f.read()


def _metrics(workdir):
  from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  return read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []


@pytest.mark.slow
def test_results_table_holds_every_point_with_its_losses(swept):
  d, _, _, out = swept
  rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
  assert [(r["seed"], r["optim.lr"], r["status"]) for r in rows] == [("0", "0.003", "ok"), ("1", "1e+30", "diverged"),
                                                                   ("2", "0.003", "ok")]
  results = sweep.read_results(d)
  assert [r["name"] for r in results] == NAMES
  for row, result in zip(rows, results):
    metrics = _metrics(result["workdir"])
    train = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert result["final_train_loss"] == (train[-1] if train else None)
    assert result["final_eval_loss"] == (evals[-1] if evals else None)
    assert result["initial_loss"] == (train[0] if train else None)
    for key in ("final_train_loss", "final_eval_loss", "steps", "wall_s"):
      assert row[key] == ("" if result[key] is None else str(result[key]))
    assert result["wall_s"] > 0
  ok = [r for r in results if r["status"] == "ok"]
  assert len(ok) == 2 and all(r["steps"] == STEPS and r["final_eval_loss"] < r["initial_loss"] for r in ok)
  md = open(os.path.join(d, "results.md")).read().splitlines()
  assert md[0] == "| seed | lr | status | final_train_loss | final_eval_loss | steps | wall_s | error |"
  best = min(ok, key=lambda r: r["final_eval_loss"])
  assert [line.count(f"**{best['final_eval_loss']:.4f}**") for line in md[2:]] == [
      int(r["name"] == best["name"]) for r in results]
  assert f"3 points: 2 ok, 1 diverged, 0 error, 0 failed; best final eval loss {best['final_eval_loss']:.4f}" in out
  with open(os.path.join(d, "loss_vs_lr.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_diverging_point_is_recorded_and_the_sweep_goes_on(swept):
  d, _, _, out = swept
  bad = json.load(open(os.path.join(d, "points", NAMES[1], "result.json")))
  assert bad["status"] == "diverged" and bad["final_eval_loss"] is None
  assert bad["error"].startswith("jaxtrain: stopped: step ") and " became " in bad["error"], bad["error"]
  assert out.index(f"{NAMES[1]}: diverged") < out.index(f"{NAMES[2]}: running") < out.index(f"{NAMES[2]}: ok")


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_point_from_the_checkpoint(swept):
  d, _, first, out = swept
  assert f"{NAMES[0]}: running" in first and f"{NAMES[0]}: ok" not in first  # killed mid-point
  assert "3 points, 0 finished, 3 to run" in out  # the rerun found it unfinished
  attempts = _log(d, NAMES[0]).split("=== sweep: ")[1:]
  assert len(attempts) == 2 and "initialized from seed 0" in attempts[0], attempts
  resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in attempts[1].splitlines()
             if "resumed from step " in line]
  assert resumed and 0 < resumed[0] < STEPS, attempts[1][-2000:]
  assert json.load(open(os.path.join(d, "points", NAMES[0], "result.json")))["steps"] == STEPS


@pytest.mark.slow
def test_a_rerun_skips_finished_points(swept):
  d, config, _, _ = swept
  logs = {n: _log(d, n) for n in NAMES}
  results = {n: os.stat(os.path.join(d, "points", n, "result.json")).st_mtime_ns for n in NAMES}
  said = []
  rows = sweep.run(config, GRID, d, [f.removeprefix("--config.") for f in FIXED], plot="lr", log=said.append)
  assert said[0].endswith("3 points, 3 finished, 0 to run"), said
  assert {n: _log(d, n) for n in NAMES} == logs  # no attempt was started: no new header in any log
  assert {n: os.stat(os.path.join(d, "points", n, "result.json")).st_mtime_ns for n in NAMES} == results
  assert [r["status"] for r in rows] == ["ok", "diverged", "ok"]
  assert [r["workdir"] for r in rows] == [os.path.join(d, "points", n) for n in NAMES]
