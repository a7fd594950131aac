"""A pod on one machine: N local processes of D simulated CPU devices each, one global mesh, the real CLI.

Each process is `python -m jaxtrain --distributed ...` with the coordinator
environment the CLI reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) naming
a coordinator on 127.0.0.1 and a free port; `jax.distributed.initialize` makes
the N·D devices one mesh and CPU collectives go over gloo. Every process has a
timeout: a hang fails the test (killing every process of the run) instead of
hanging CI. Output goes to files (two processes writing to pipes that are read
one after the other can block each other).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # seconds a whole run may take before it counts as hung
DEVICE_COUNT = "--xla_force_host_platform_device_count"
# LLVM's optimizations off: these tiny runs are mostly compiling, which then takes half the CPU time (tiny config,
# one process: 33.5 s -> 15.6 s of CPU, the same losses to the last digit). Not for the rest of the suite: a d=256
# step runs 2.4x slower this way (benchmarks/throughput.py, 2026-11-29), and some tests train for a while.
FAST_COMPILE = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def config_file(directory, data_dir, setup: str = "", **overrides) -> str:
  """A config file for the CLI: the tests' tiny config with `overrides` ({"train.steps": 12, ...}), then the
  statements `setup` run on it as `c` (what an override cannot add: `c.data.mixture = {...}`)."""
  path = os.path.join(str(directory), "tiny_config.py")
  with open(path, "w") as f:
    f.write(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from tiny import tiny_config
        def get_config(arg=None):
          c = tiny_config({data_dir!r}, **{overrides!r})
          exec({setup!r}, {{"c": c}})
          return c
    """))
  return path


@dataclasses.dataclass
class Process:
  popen: subprocess.Popen
  log_path: str

  @property
  def log(self) -> str:
    with open(self.log_path, errors="replace") as f:
      return f.read()


@dataclasses.dataclass
class Run:
  """The processes of one multi-process run (process i is procs[i])."""
  procs: list[Process]

  def signal(self, sig, which=None) -> None:
    for i, p in enumerate(self.procs):
      if which is None or i in which:
        p.popen.send_signal(sig)

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    """Exit codes; on a timeout every process is killed and the test fails with their logs' tails."""
    deadline = time.time() + timeout
    for p in self.procs:
      try:
        p.popen.wait(timeout=max(deadline - time.time(), 0.1))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"hung for {timeout} s:\n" + self.tails()) from None
    return [p.popen.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.popen.poll() is None:
        p.popen.kill()
        p.popen.wait()

  def tails(self, n: int = 3000) -> str:
    return "\n".join(f"--- process {i}:\n{p.log[-n:]}" for i, p in enumerate(self.procs))

  @property
  def logs(self) -> list[str]:
    return [p.log for p in self.procs]


def start(config_path: str, workdir: str, *, processes: int = 2, devices: int = 8, extra=(),
          log_dir: str | None = None) -> Run:
  """Starts `processes` CLI processes sharing `devices` simulated CPU devices as one mesh (1: a plain run)."""
  assert devices % processes == 0
  log_dir = log_dir or os.path.dirname(os.path.abspath(workdir))
  port = free_port()
  procs = []
  for i in range(processes):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT)]  # conftest's
    flags += FAST_COMPILE + [f"{DEVICE_COUNT}={devices // processes}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    cmd = [sys.executable, "-m", "jaxtrain", f"--config={config_path}", f"--workdir={workdir}", *extra]
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
      cmd.append("--distributed")
    stamp = f"{os.path.basename(workdir)}.{time.monotonic_ns()}.{i}"
    log_path = os.path.join(log_dir, f"{stamp}.log")
    with open(log_path, "w") as out:
      popen = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    procs.append(Process(popen, log_path))
  return Run(procs)


def run(config_path: str, workdir: str, **kw) -> Run:
  """start(...), waited for; fails the test if any process fails or hangs."""
  r = start(config_path, workdir, **kw)
  codes = r.wait()
  assert codes == [0] * len(codes), f"exit codes {codes}:\n" + r.tails()
  return r


def wait_for_checkpoint(r: Run, workdir: str, timeout: float = TIMEOUT) -> int:
  """Blocks until `workdir` has a committed checkpoint; returns its step (fails if the run ends or hangs first)."""
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(d) for d in (os.listdir(ckpts) if os.path.isdir(ckpts) else []) if d.isdigit()]
    if steps:
      return max(steps)
    if any(p.popen.poll() is not None for p in r.procs):
      r.kill()
      raise AssertionError("a process ended before the first checkpoint:\n" + r.tails())
    time.sleep(0.01)
  r.kill()
  raise AssertionError(f"no checkpoint within {timeout} s:\n" + r.tails())


SIGKILL, SIGTERM = signal.SIGKILL, signal.SIGTERM


def once(directory: str, make) -> str:
  """`directory`, made by make(directory) by the first of the test processes (pytest-xdist workers) to get
  there; the others wait for it and reuse it. Returns the directory."""
  import fcntl  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with open(directory + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(directory + ".done"):
      make(directory)
      open(directory + ".done", "w").close()
  return directory
