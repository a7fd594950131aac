"""What the training loop does around each step, decided by one pure function (no JAX here).

`due(step, ...)` is asked once at every step boundary, `step` being the number of steps done (the state's
`step`), from the start or resume to the last step. It answers what happens there, in this order:

  after the step that ended here: profile_stop (end the profiler trace, before anything else runs into it),
                                  memory_profile, log, save, eval, stop (nothing at the start or resume: no step
                                  ran yet);
  before the next step:           grow (at an event's step, after its small model was saved), diagnose (run the
                                  diagnostics variant of the next step: when (step + 1) % diagnostics_every == 0),
                                  profile_start (begin the trace: the next steps up to the window's end are in it).

A save comes on its cadence, at the last step, at a stop and before a growth event. A stop comes from the hosts'
agreed signal (`stop_signal`, a collective on several hosts: asked only every `stop_check_every` steps, on every
host alike, so each waits at the same step). Neither growth nor another step follows a stop or the last step.
A profiler window `profile=(a, b)` (train.profile_steps, jaxtrain/profiling.py) traces the steps from state a to
state b: it starts at boundary a if this run reaches a before stepping past it (a resume past a skips it) and ends
at b, or earlier at a stop. The loop's small helpers are here too: `Signals` (SIGTERM, SIGINT as a flag), `Clock`
(throughput time) and `Breakdown` (where a run's wall time went).
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Callable, Collection, NamedTuple


class Actions(NamedTuple):
  """What the loop does at one step boundary (see the module docstring for the order)."""
  log: bool = False
  eval: bool = False
  save: bool = False
  stop: bool = False
  grow: bool = False
  diagnose: bool = False
  profile_start: bool = False
  profile_stop: bool = False
  memory_profile: bool = False

  @property
  def acts(self) -> bool:
    """Whether the step that ended here is logged, saved, evaluated or stopped at: its metrics must be known."""
    return self.log or self.save or self.eval or self.stop


def due(step: int, *, start: int, last_step: int, log_every: int, eval_every: int, checkpoint_every: int,
        diagnostics_every: int = 0, stop_check_every: int = 1, stop_signal: Callable[[], bool] = lambda: False,
        growth_steps: Collection[int] = (), profile: tuple[int, int] | None = None,
        memory_profile_step: int = 0) -> Actions:
  """The actions at the boundary after `step` steps, in a run (re)started at `start` that ends at `last_step`.

  `stop_signal()`: whether any host received a signal, asked only at the steps a stop is checked (every
  `stop_check_every` steps; pass 1 on one host). `growth_steps`: the steps whose end a growth event follows.
  `diagnostics_every`: 0 never runs the diagnostics variant. `profile`: (a, b), the profiler traces the steps from
  state a to state b (None: never). `memory_profile_step`: a device-memory profile after that step (0: never).
  """
  ran = step > start  # a step ended here
  end = step >= last_step
  stop = ran and step % stop_check_every == 0 and bool(stop_signal())
  grow = step in growth_steps
  go_on = not (stop or end)
  # The window is this run's only if it starts here, at or after the (re)start: a resume inside it skips it.
  traced = profile is not None and start <= profile[0] < profile[1]
  return Actions(
      log=ran and (step % log_every == 0 or end),
      eval=ran and (step % eval_every == 0 or end),
      save=ran and (step % checkpoint_every == 0 or end or stop or grow),
      stop=stop,
      grow=go_on and grow,
      diagnose=go_on and bool(diagnostics_every) and (step + 1) % diagnostics_every == 0,
      profile_start=traced and go_on and step == profile[0],
      profile_stop=traced and profile[0] < step <= profile[1] and (step == profile[1] or not go_on),
      memory_profile=ran and step == memory_profile_step)


class Signals:
  """SIGTERM and SIGINT set `received` (the first one's name) while in context; a second Ctrl-C stops at once."""

  def __init__(self):
    self.received, self._old = None, {}

  def _on_signal(self, signum, _):
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, keep what is saved
    self.received = self.received or signal.Signals(signum).name

  def __enter__(self):
    self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *_):
    for s, h in self._old.items():
      signal.signal(s, h)


class Clock:
  """Wall time and steps counted since the last restart, with paused intervals left out (and the steps counted
  in them: a profiled step is neither timed nor counted). Pauses nest."""

  def __init__(self):
    self._paused, self._since = 0, 0.0
    self.restart()

  def restart(self):
    self._t0, self.steps = time.perf_counter(), 0
    self._since = self._t0

  def count(self):
    if not self._paused:
      self.steps += 1

  def elapsed(self) -> float:
    return (self._since if self._paused else time.perf_counter()) - self._t0

  def pause(self):
    if not self._paused:
      self._since = time.perf_counter()
    self._paused += 1

  def resume(self):
    self._paused -= 1
    if not self._paused:
      self._t0 += time.perf_counter() - self._since

  @contextlib.contextmanager
  def paused(self):
    self.pause()
    try:
      yield
    finally:
      self.resume()


# Where a run's wall time goes, in the order the end-of-run line shows them; `other` is what no phase covers.
PHASES = ("compile", "train", "eval", "save", "data", "log", "profile", "grow", "setup")


class Breakdown:
  """Where a run's wall time went: compiling, training steps, evaluation, saving, waiting for data, and the rest.

  The method, honest under asynchronous dispatch and with no device sync added to any step: the loop brackets its
  host-side phases with `phase(name)` (a clock read at each end) and charges the time in between two points to
  `lap(name)` (the setup before the loop). Compiling happens on the host, synchronously, inside whatever phase first
  calls a program: `compile_seconds()` is a monotone count of this thread's compile time (JAX's own tracing,
  lowering and XLA compile events, `jaxtrain.profiling.compile_seconds`), and what it grew by inside a phase is
  moved from that phase to `compile`. The device's time lands where the host waits for it: the loop fetches the
  steps' metrics a step late (in `train`: the fetch waits for the step before), and fetches all that are pending
  before it logs, saves or evaluates, so `eval` and `save` are not charged for training steps still running.
  `data` is the host's wait for the next batch: an upper bound of the device's stall, as the device may still run
  the step before meanwhile. `other` is the wall time outside every phase (Python between them, and the end).
  """

  def __init__(self, compile_seconds: Callable[[], float] = lambda: 0.0):
    self.compile_seconds = compile_seconds
    self.seconds = dict.fromkeys(PHASES, 0.0)  # `compile` is filled in by totals()
    self._t0 = self._mark = time.perf_counter()
    self._compiled0 = self._compiled_at_mark = compile_seconds()
    self._charged_at_mark, self._open = 0.0, False

  @contextlib.contextmanager
  def phase(self, name: str):
    """Charges the wall time inside to `name`, less what compiled meanwhile. A nested phase counts in the outer."""
    if self._open:
      yield
      return
    self._open = True
    t, c = time.perf_counter(), self.compile_seconds()
    try:
      yield
    finally:
      self._open = False
      self.seconds[name] += time.perf_counter() - t - (self.compile_seconds() - c)

  def lap(self, name: str) -> None:
    """Charges to `name` the wall time since the last lap (or the start) that no phase took and nothing compiled."""
    now, compiled, charged = time.perf_counter(), self.compile_seconds(), sum(self.seconds.values())
    self.seconds[name] += (now - self._mark) - (charged - self._charged_at_mark) - (compiled - self._compiled_at_mark)
    self._mark, self._compiled_at_mark, self._charged_at_mark = now, compiled, sum(self.seconds.values())

  def totals(self) -> dict[str, float]:
    """{phase: seconds} for every phase, `other`, and `total` (the wall time so far)."""
    total = time.perf_counter() - self._t0
    out = dict(self.seconds, compile=self.compile_seconds() - self._compiled0)  # in a phase or not
    out["other"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return out

  def line(self, totals: dict[str, float] | None = None) -> str:
    """'wall time 61.2 s: training steps 40.3 s (66%), compiling 12.1 s (20%), ...': what took any time, largest
    first."""
    t = totals or self.totals()
    parts = sorted(((k, v) for k, v in t.items() if k != "total" and v >= 0.05), key=lambda kv: -kv[1])
    share = lambda v: f" ({100 * v / t['total']:.0f}%)" if t["total"] > 0 else ""
    return f"wall time {t['total']:.1f} s: " + ", ".join(f"{LABELS[k]} {v:.1f} s{share(v)}" for k, v in parts)


LABELS = {"compile": "compiling", "train": "training steps", "eval": "evaluation", "save": "saving",
          "data": "waiting for data", "log": "logging", "profile": "profiling", "grow": "growth", "setup": "setup",
          "other": "other"}
