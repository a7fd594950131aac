"""jaxtrain/loop.py: what the training loop does at each step boundary, without JAX."""

import functools
import subprocess
import sys

from jaxtrain import loop

# A run of 20 steps from scratch, as tests/tiny.py's: log every 5, eval and save every 10.
due = functools.partial(loop.due, start=0, last_step=20, log_every=5, eval_every=10, checkpoint_every=10)


def actions(step, **kw):
  return {name for name, on in due(step, **kw)._asdict().items() if on}


def run(**kw):
  """{step: actions} of a whole run, walked as train.train does: stop at a stop or the last step."""
  start = kw.get("start", 0)
  out = {}
  for step in range(start, kw.get("last_step", 20) + 1):
    out[step] = actions(step, **kw)
    if "stop" in out[step]:
      break
  return out


def test_loop_needs_no_jax():
  code = "import sys, jaxtrain.loop; assert 'jax' not in sys.modules"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_cadences_and_the_last_step():
  steps = run()
  assert steps[0] == set()  # nothing ran yet
  assert [s for s, a in steps.items() if "log" in a] == [5, 10, 15, 20]
  assert [s for s, a in steps.items() if "eval" in a] == [10, 20]
  assert [s for s, a in steps.items() if "save" in a] == [10, 20]
  assert not any({"stop", "grow", "diagnose"} & a for a in steps.values())
  # The last step is logged, evaluated and saved off its cadences.
  assert actions(17, last_step=17) == {"log", "eval", "save"}
  assert due(10).acts and not due(3).acts and not due(0).acts


def test_resume_does_not_act_at_its_own_step():
  assert actions(10, start=10) == set()  # restored there: nothing to log or save again
  assert actions(20, start=20) == set()  # a finished run resumed: nothing, and no step after it
  assert actions(15, start=10) == {"log"}


def test_diagnostics_run_on_the_step_that_ends_at_the_cadence():
  steps = run(diagnostics_every=4)
  # (step + 1) % 4 == 0: the step from 3 to 4, 7 to 8, ...; never after the last step.
  assert [s for s, a in steps.items() if "diagnose" in a] == [3, 7, 11, 15, 19]
  assert "diagnose" in actions(3, start=3, diagnostics_every=4)  # also right after a resume
  assert "diagnose" not in actions(4, last_step=4, diagnostics_every=5)


def test_a_stop_is_asked_only_at_its_checks_and_saves():
  asked = []

  def signal():
    asked.append(True)
    return True

  assert actions(0, stop_signal=signal) == set() and not asked  # before any step: not asked
  assert actions(7, stop_signal=signal) == {"stop", "save"}  # on one host: checked every step
  assert len(asked) == 1
  assert actions(7, stop_signal=signal, stop_check_every=5) == set() and len(asked) == 1  # several hosts
  assert actions(10, stop_signal=signal, stop_check_every=5) == {"stop", "save", "eval", "log"}
  assert actions(5, stop_signal=lambda: False, stop_check_every=5) == {"log"}


def test_a_stop_at_a_cadence_and_at_the_last_step():
  stop = lambda: True
  assert actions(5, stop_signal=stop) == {"log", "save", "stop"}
  assert actions(20, stop_signal=stop) == {"log", "eval", "save", "stop"}
  # Nothing runs after a stop: no diagnostics step, no growth.
  assert actions(3, stop_signal=stop, diagnostics_every=4, growth_steps={3}) == {"save", "stop"}
  assert run(stop_signal=lambda: True).keys() == {0, 1}


def test_growth_saves_the_small_model_then_grows():
  steps = run(growth_steps={6, 12})
  assert steps[6] == {"save", "grow"} and steps[12] == {"save", "grow"}
  assert steps[10] == {"log", "eval", "save"}
  # Resumed at an event's step (its small model saved there): grow at once, before the next step, save nothing.
  assert actions(12, start=12, growth_steps={6, 12}) == {"grow"}
  # A growth step that is also the last one is not possible (growth.plan refuses it); at any rate no growth after it.
  assert "grow" not in actions(20, growth_steps={20})


def test_diagnostics_and_growth_at_one_boundary():
  assert actions(7, growth_steps={7}, diagnostics_every=4) == {"save", "grow", "diagnose"}


def test_the_profile_window_starts_and_stops_once():
  steps = run(profile=(6, 9), memory_profile_step=10)
  assert [s for s, a in steps.items() if "profile_start" in a] == [6]  # before the step from 6 to 7
  assert [s for s, a in steps.items() if "profile_stop" in a] == [9]   # after the step from 8 to 9
  assert [s for s, a in steps.items() if "memory_profile" in a] == [10]
  assert "profile_start" in actions(0, profile=(0, 20)) and "profile_stop" in actions(20, profile=(0, 20))
  assert "profile_start" in actions(6, start=6, profile=(6, 9))  # resumed at its start: traced
  # Resumed inside the window: its start never comes, so neither does a stop.
  assert not {"profile_start", "profile_stop"} & set().union(*run(start=7, profile=(6, 9)).values())
  # A stop inside the window ends the trace there; one before it never starts it.
  assert {"stop", "profile_stop"} <= actions(8, profile=(6, 9), stop_signal=lambda: True)
  assert "profile_start" not in actions(6, profile=(6, 9), stop_signal=lambda: True)
  assert "memory_profile" not in actions(10, start=10, memory_profile_step=10)  # no step ran


class FakeTime:
  def __init__(self, monkeypatch):
    self.now = 100.0
    monkeypatch.setattr(loop.time, "perf_counter", lambda: self.now)


def test_clock_leaves_paused_intervals_and_their_steps_out(monkeypatch):
  t = FakeTime(monkeypatch)
  clock = loop.Clock()
  t.now += 1
  clock.count()
  clock.pause()  # a profiled window: its steps neither timed nor counted
  t.now += 5
  clock.count()
  with clock.paused():  # nested: a save inside it
    t.now += 2
  assert clock.elapsed() == 1 and clock.steps == 1
  clock.resume()
  t.now += 1
  clock.count()
  assert clock.elapsed() == 2 and clock.steps == 2
  clock.pause()
  clock.restart()  # a log line inside the window
  t.now += 3
  clock.resume()
  assert clock.elapsed() == 0 and clock.steps == 0


def test_breakdown_moves_compile_time_out_of_the_phase_it_happened_in(monkeypatch):
  t, compiled = FakeTime(monkeypatch), [0.0]
  b = loop.Breakdown(lambda: compiled[0])
  t.now += 2
  compiled[0] += 1  # the setup compiles init for 1 s of its 3
  t.now += 1
  b.lap("setup")
  with b.phase("train"):  # the first step: 4 s compiling, 1 s running
    t.now += 5
    compiled[0] += 4
  t.now += 0.5  # between phases: other
  with b.phase("eval"), b.phase("log"):  # nested: charged to the outer
    t.now += 2
  with b.phase("data"):
    t.now += 0.25
  totals = b.totals()
  assert totals == {"compile": 5, "train": 1, "eval": 2, "save": 0, "data": 0.25, "log": 0, "profile": 0, "grow": 0,
                    "setup": 2, "other": 0.5, "total": 10.75}
  assert b.line() == ("wall time 10.8 s: compiling 5.0 s (47%), evaluation 2.0 s (19%), setup 2.0 s (19%), training "
                      "steps 1.0 s (9%), other 0.5 s (5%), waiting for data 0.2 s (2%)")
