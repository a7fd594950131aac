"""What the training loop does around each step, decided by one pure function (no JAX here).

`due(step, ...)` is asked once at every step boundary, `step` being the number of steps done (the state's
`step`), from the start or resume to the last step. It answers what happens there, in this order:

  after the step that ended here: log, save, eval, stop (nothing at the start or resume: no step ran yet);
  before the next step:           grow (at an event's step, after its small model was saved), diagnose (run the
                                  diagnostics variant of the next step: when (step + 1) % diagnostics_every == 0).

A save comes on its cadence, at the last step, at a stop and before a growth event. A stop comes from the hosts'
agreed signal (`stop_signal`, a collective on several hosts: asked only every `stop_check_every` steps, on every
host alike, so each waits at the same step). Neither growth nor another step follows a stop or the last step.
The loop's two small helpers are here too: `Signals` (SIGTERM, SIGINT as a flag) and `Clock` (throughput time).
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

  @property
  def acts(self) -> bool:
    """Whether the step that ended here is logged, saved, evaluated or stopped at: its metrics must be known."""
    return self.log or self.save or self.eval or self.stop


def due(step: int, *, start: int, last_step: int, log_every: int, eval_every: int, checkpoint_every: int,
        diagnostics_every: int = 0, stop_check_every: int = 1, stop_signal: Callable[[], bool] = lambda: False,
        growth_steps: Collection[int] = ()) -> Actions:
  """The actions at the boundary after `step` steps, in a run (re)started at `start` that ends at `last_step`.

  `stop_signal()`: whether any host received a signal, asked only at the steps a stop is checked (every
  `stop_check_every` steps; pass 1 on one host). `growth_steps`: the steps whose end a growth event follows.
  `diagnostics_every`: 0 never runs the diagnostics variant.
  """
  ran = step > start  # a step ended here
  end = step >= last_step
  stop = ran and step % stop_check_every == 0 and bool(stop_signal())
  grow = step in growth_steps
  go_on = not (stop or end)
  return Actions(
      log=ran and (step % log_every == 0 or end),
      eval=ran and (step % eval_every == 0 or end),
      save=ran and (step % checkpoint_every == 0 or end or stop or grow),
      stop=stop,
      grow=go_on and grow,
      diagnose=go_on and bool(diagnostics_every) and (step + 1) % diagnostics_every == 0)


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
  """Wall time and steps counted since the last restart, with paused intervals left out."""

  def __init__(self):
    self.restart()

  def restart(self):
    self._t0, self.steps = time.perf_counter(), 0

  def count(self):
    self.steps += 1

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self._t0 += time.perf_counter() - t
