"""The profiler switch: a JAX profiler trace of a window of steps, a device-memory profile, and compile time.

`train.profile_steps="A:B"` traces the steps that take the state from step A to step B (B - A steps: the metrics
rows A+1..B) with `jax.profiler.start_trace`/`stop_trace`, the window decided by `loop.due` (`profile_start` at
boundary A, `profile_stop` at B or at an earlier stop). The loop waits for the device at both ends
(`block_until_ready`), so the trace holds those steps' device work whole and nothing of the steps around it, and
leaves the window's steps out of the throughput figures (`loop.Clock` is paused over them: tracing slows them).
`train.memory_profile_step=N` saves `jax.profiler.save_device_memory_profile` after step N (pprof format).

Every process traces its own devices into a directory of its own, `<workdir>/profile/process_<i>/`: the
profiler writes one `<hostname>.xplane.pb` per process under `plugins/profile/<timestamp>/`, and two processes on
one host (the CPU harness, a GPU box with a process per GPU) would otherwise write the same name. TensorBoard's
profile plugin opens the whole directory (`tensorboard --logdir <workdir>/profile`, each process a run);
`perfetto_trace.json.gz` beside each xplane opens in https://ui.perfetto.dev without installing anything
(docs/metrics.md). A bucket workdir is traced to a local temporary directory and copied up at the window's end.

`compile_seconds()` counts this thread's compile time from JAX's own events (jax.monitoring: tracing, lowering
to MLIR, the XLA compile, a persistent-cache hit included), for `loop.Breakdown`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading

import jax

from jaxtrain import paths
from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")

# JAX's events for the three stages of compiling a program (jax/_src/dispatch.py); disjoint, and the backend
# compile's covers a persistent-cache lookup.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def parse_steps(text: str) -> tuple[int, int] | None:
  """'A:B' as (A, B); '' as None. ConfigError (one line) for anything else."""
  if not text.strip():
    return None
  m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
  if not m:
    raise ConfigError(f"train.profile_steps={text!r} is not a range of steps: write 'A:B' to trace the steps from "
                      "state A to state B (e.g. '10:15'), or '' for none")
  return int(m.group(1)), int(m.group(2))


def check(config, target) -> None:
  """The profile window and the memory-profile step lie inside the run (one line each, before compiling)."""
  del target
  t = config.train
  window = parse_steps(t.profile_steps)
  if window is not None and not 0 <= window[0] < window[1] <= t.steps:
    raise ConfigError(f"train.profile_steps={t.profile_steps!r} is outside the run's steps 0..{t.steps} "
                      f"(train.steps) or empty: choose 0 <= A < B <= {t.steps}, e.g. "
                      f"'{min(10, t.steps - 1)}:{min(15, t.steps)}'")
  if not 0 <= t.memory_profile_step <= t.steps:
    raise ConfigError(f"train.memory_profile_step={t.memory_profile_step} is outside the run's steps 1..{t.steps} "
                      "(train.steps): choose a step in it, or 0 for none")


class Profiler:
  """This process's traces and memory profiles in `<workdir>/profile/process_<i>/` (module docstring)."""

  def __init__(self, workdir, process_index: int):
    self.directory = paths.resolve(workdir) / "profile" / f"process_{process_index}"
    self._tracing = None  # the local directory of the trace in progress

  def _local(self) -> str:
    if paths.is_remote(self.directory):
      return tempfile.mkdtemp(prefix="jaxtrain-profile-")
    paths.makedirs(self.directory)
    return os.fspath(self.directory)

  def start(self, step: int) -> None:
    self._tracing = self._local()
    jax.profiler.start_trace(self._tracing, create_perfetto_trace=True)
    log.info("step %d: profiler trace started", step)

  def stop(self, step: int) -> None:
    """Ends the trace in progress (if any) and writes it."""
    if self._tracing is None:
      return
    local, self._tracing = self._tracing, None
    jax.profiler.stop_trace()
    if paths.is_remote(self.directory):
      _upload(local, self.directory)
      shutil.rmtree(local, ignore_errors=True)
    log.info("step %d: profiler trace written to %s (tensorboard --logdir %s, or its perfetto_trace.json.gz in "
             "https://ui.perfetto.dev)", step, self.directory, self.directory.parent)

  def memory(self, step: int) -> None:
    """The device memory in use after `step` (live buffers by allocation site), as a pprof file."""
    name = f"memory_step_{step}.prof"
    local = self._local()
    jax.profiler.save_device_memory_profile(os.path.join(local, name))
    if paths.is_remote(self.directory):
      _upload(local, self.directory)
      shutil.rmtree(local, ignore_errors=True)
    log.info("step %d: device memory profile written to %s (pprof -http=: %s)", step, self.directory / name, name)


def _upload(local: str, directory) -> None:
  for root, _, files in os.walk(local):
    for f in files:
      src = os.path.join(root, f)
      (directory / os.path.relpath(src, local)).write_bytes(open(src, "rb").read())


class _CompileCounter:
  """Compile seconds per thread, from one process-wide listener (jax.monitoring's listeners are process-wide)."""

  def __init__(self):
    self.seconds, self.lock, self.listening = {}, threading.Lock(), False

  def __call__(self, event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
      ident = threading.get_ident()
      self.seconds[ident] = self.seconds.get(ident, 0.0) + seconds

  def read(self) -> float:
    if not self.listening:  # once per process
      with self.lock:
        if not self.listening:
          jax.monitoring.register_event_duration_secs_listener(self)
          self.listening = True
    return self.seconds.get(threading.get_ident(), 0.0)


_COUNTER = _CompileCounter()


def compile_seconds() -> float:
  """This thread's compile time so far (monotone: a run reads its difference), from JAX's COMPILE_EVENTS."""
  return _COUNTER.read()
