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
