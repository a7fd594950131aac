"""Two processes as two hosts (tests/multihost.py): the same losses as one process, exact resume after both are
killed, one stop decision for all hosts, resume onto another process count, and one restore step for all hosts;
every run grows its model mid-run.

Every run is the real CLI; the processes share one 8-device mesh (4 simulated CPU devices each, gloo collectives).
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import multihost
from jaxtrain import data
from jaxtrain.metrics import read_metrics
from tiny import tiny_config

STEPS = 16
OVERRIDES = {"train.steps": STEPS, "train.log_every": 1, "train.checkpoint_every": 4, "train.eval_every": 8,
             "train.keep_checkpoints": 4, "train.stop_check_every": 2,
             "mesh.data": 1, "mesh.fsdp": 8,  # FSDP over both processes
             # The model grows at a checkpoint's step (jaxtrain/growth/), with fresh entries drawn: every run here
             # crosses the event, on both processes alike.
             "growth.events": [{"step": 8, "op": "expand_mlp", "mlp_dim": 128, "opt": "copy"}]}

# One worker runs them all (`make test` runs `pytest -n 2 --dist loadfile`; xdist 3.8 ignored a module-level
# xdist_group here): two runs of two processes at once on 2 cores would skew a run's processes towards gloo's 30 s
# rendezvous limit. The reference runs are shared across workers all the same (`multihost.once`).
pytestmark = pytest.mark.slow


def losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def checkpoints(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="session")
def shared(tmp_path_factory, data_dir):
  """(this worker's config path, a directory shared by all pytest-xdist workers for the reference runs)."""
  mine = tmp_path_factory.getbasetemp()
  root = (mine.parent if os.environ.get("PYTEST_XDIST_WORKER") else mine) / "multihost"
  root.mkdir(exist_ok=True)
  config = multihost.config_file(mine, data_dir, **OVERRIDES)
  c = tiny_config(data_dir, **OVERRIDES)  # the token caches, built once here rather than by a run's first process
  data.TrainData(c.data, seq_len=c.data.seq_len, global_batch=c.train.global_batch, seed=c.seed)
  data.eval_batches(c.data, seq_len=c.data.seq_len, global_batch=c.train.global_batch, num_batches=1)
  return config, str(root)


@pytest.fixture(scope="session")
def two_process_run(shared):
  """The uninterrupted two-process run: its workdir (checkpoints at 4, 8, 12, 16)."""
  config, root = shared
  return multihost.once(os.path.join(root, "two"), lambda w: multihost.run(config, w, processes=2))


@pytest.fixture(scope="session")
def one_process_run(shared):
  """The same run in one process of 8 devices."""
  config, root = shared
  return multihost.once(os.path.join(root, "one"), lambda w: multihost.run(config, w, processes=1))


def copy_until(workdir, step, target):
  """A copy of `workdir` as it would have been had the run stopped after checkpoint `step`."""
  shutil.copytree(workdir, target)
  for s in checkpoints(target):
    if s > step:
      shutil.rmtree(os.path.join(target, "checkpoints", str(s)))
  return str(target)


def test_two_processes_match_one(two_process_run, one_process_run):
  two, one = losses(two_process_run), losses(one_process_run)
  assert sorted(two) == list(range(1, STEPS + 1)) and sorted(one) == sorted(two)
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
  assert two[STEPS] < two[1]  # it learned
  assert checkpoints(two_process_run) == [4, 8, 12, 16]


def test_both_killed_then_restarted_resume_exactly(shared, two_process_run, tmp_path):
  config, _ = shared
  workdir = str(tmp_path / "killed")
  r = multihost.start(config, workdir, processes=2)
  multihost.wait_for_checkpoint(r, workdir)
  r.signal(multihost.SIGKILL)
  assert r.wait() == [-multihost.SIGKILL] * 2
  assert max(losses(workdir), default=0) < STEPS, "the run finished before it could be killed"
  again = multihost.run(config, workdir, processes=2)
  assert all("resumed from step" in log for log in again.logs), again.tails()
  assert losses(workdir) == losses(two_process_run)  # bit-identical to the uninterrupted run


def assert_continues(workdir, reference, after):
  """`workdir` has every step's loss, and those after step `after` equal `reference`'s to float32 tolerance (another
  process count may reduce in another order)."""
  got, want = losses(workdir), losses(reference)
  assert sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in range(after + 1, STEPS + 1)],
                             [want[s] for s in range(after + 1, STEPS + 1)], rtol=1e-5)


def test_sigterm_to_one_process_stops_both_at_one_saved_step(shared, two_process_run, tmp_path):
  """Both stop at one step and save it; the run resumes from it, here on one process (a 2 -> 1 host move)."""
  config, _ = shared
  workdir = str(tmp_path / "stopped")
  r = multihost.start(config, workdir, processes=2)
  multihost.wait_for_checkpoint(r, workdir)
  r.signal(multihost.SIGTERM, which=[1])  # a preemption notice to one host only
  assert r.wait() == [0, 0], r.tails()
  saved = [re.findall(r"saved step (\d+), exiting", log) for log in r.logs]
  assert "received SIGTERM" in r.logs[1] and len(saved[0]) == len(saved[1]) == 1, r.tails()
  step = int(saved[0][0])
  assert int(saved[1][0]) == step < STEPS and step % 2 == 0  # the hosts agree every 2 steps
  assert checkpoints(workdir)[-1] == step  # the step both stopped at is on disk, newest
  assert os.path.isfile(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA"))
  again = multihost.run(config, workdir, processes=1)
  assert f"resumed from step {step}" in again.logs[0], again.tails()
  assert_continues(workdir, two_process_run, after=step)


def test_damaged_newest_checkpoint_falls_back_to_one_step_on_both(shared, one_process_run, tmp_path):
  """Both processes restore the same older step and the set-aside happens once; the checkpoints come from the
  one-process run, so this is also a 1 -> 2 host move."""
  config, _ = shared
  workdir = copy_until(one_process_run, STEPS, tmp_path / "damaged")
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(STEPS), "state")):
    for f in files:  # every array file of the newest step, emptied
      if not f.endswith(".json") and "METADATA" not in f and f != "_sharding":
        open(os.path.join(root, f), "wb").close()
  r = multihost.run(config, workdir, processes=2)
  for log in r.logs:
    assert f"checkpoint step {STEPS} is unreadable" in log and f"resumed from step {STEPS - 4}" in log, r.tails()
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints")) == [str(STEPS)]  # moved once
  assert checkpoints(workdir) == [4, 8, 12, 16]  # step 16 written again
  assert_continues(workdir, one_process_run, after=STEPS - 4)


DRIFT = """
import sys, time
import jax, numpy as np
from jaxtrain import hosts
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
if sys.argv[3] == "open":
  hosts.open_collectives(mesh)
sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
x = jax.make_array_from_callback((8,), sh, lambda i: np.ones((1,), np.float32))
total = jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
compiled = total.lower(x).compile()
if jax.process_index() == 1:
  time.sleep(35)  # this host compiles 35 s longer than the other (the cache helped the other one)
print("sum", float(compiled(x)), flush=True)
"""


def test_collective_groups_open_before_hosts_drift_apart(tmp_path):
  """A host 35 s late to a program's first collective is waited for once hosts.open_collectives opened the groups.

  Without the open_collectives call the same script fails on both processes after 30 s (`Gloo context initialization
  failed: DEADLINE_EXCEEDED`, or a hang at exit; jax 0.10.2): give the script any other last argument to see it."""
  script = tmp_path / "drift.py"
  script.write_text(DRIFT)
  address = f"127.0.0.1:{multihost.free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen([sys.executable, str(script), address, str(i), "open"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
  assert all("sum 8.0" in o for o in outs)


# A weighted mixture (jaxtrain/data/mixture.py) with a weight schedule, whole-document packing and document masks:
# the plan of rows is the step's alone, so 1 and 2 processes train on the same batches and a resume continues them.
MIXTURE_STEPS = 8
MIXTURE = {"train.steps": MIXTURE_STEPS, "train.log_every": 1, "train.checkpoint_every": 4, "train.eval_every": 4,
           "train.keep_checkpoints": 4, "train.stop_check_every": 2, "mesh.data": 2, "mesh.fsdp": 4,
           "data.packing": "pad", "data.document_mask": True, "data.mixture_block_size": 16}


@pytest.fixture(scope="session")
def mixture_config(tmp_path_factory, data_dir):
  mine = tmp_path_factory.mktemp("mixture")
  corpus = mine / "prose"
  corpus.mkdir()
  for i in range(40):
    (corpus / f"doc{i:02d}.txt").write_text(f"Document {i} says: " + "the quick brown fox " * (3 + i % 7))
  setup = (f"c.data.mixture = {{'code': dict(weight=((0, 0.8), ({MIXTURE_STEPS}, 0.3))), "
           f"'prose': dict(name='text_files', text_glob={str(corpus / '*.txt')!r}, weight=0.4)}}")
  return multihost.config_file(mine, data_dir, setup=setup, **MIXTURE)


def test_mixture_is_the_same_on_two_processes_and_resumes_exactly(mixture_config, tmp_path):
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  multihost.run(mixture_config, two, processes=2)
  multihost.run(mixture_config, one, processes=1)
  rows = {w: [r for r in read_metrics(w) if "loss" in r] for w in (two, one)}
  assert [r["step"] for r in rows[two]] == list(range(1, MIXTURE_STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in rows[two]], [r["loss"] for r in rows[one]], rtol=1e-5)
  for key in ("tokens/code", "tokens/prose"):
    assert [r[key] for r in rows[two]] == [r[key] for r in rows[one]] and rows[two][-1][key] > 0
  evals = [r for r in read_metrics(two) if "eval_loss" in r]
  assert evals and all({"eval_loss/code", "eval_loss/prose"} <= set(r) for r in evals)
  again = copy_until(two, 4, tmp_path / "again")
  (tmp_path / "again" / "metrics.jsonl").write_text("")  # only the resumed steps' lines
  r = multihost.run(mixture_config, again, processes=2)
  assert all("resumed from step 4" in log for log in r.logs), r.tails()
  assert losses(again) == {s: l for s, l in losses(two).items() if s > 4}  # bit-identical to the uninterrupted run
