"""Growth mid-run (jaxtrain/growth/events.py, jaxtrain/train.py's loop): the learning-rate policies, the FLOP
count across events, bad growth events, exact resume across an event, and growth on the 8-device meshes.
(A SIGKILL after an event, through the CLI: tests/test_train.py::test_exact_resume_after_sigkill_past_a_growth_event.)"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import flops, growth, optim, sharding, train
from jaxtrain.config import ConfigError
from jaxtrain.metrics import read_metrics

from test_train import losses_by_step

ONE = jax.devices()[:1]


def with_events(c, *events, **growth_fields):
  c.unlock()
  c.growth.update(events=tuple(events), **growth_fields)
  c.lock()
  return c


# ---------------------------------------------------------------- the plan: schedules and FLOPs


def test_learning_rate_policies(tiny):
  c = with_events(tiny(train__steps=100, optim__warmup_steps=10, optim__lr=1e-2, optim__schedule="cosine"),
                  {"step": 30, "op": "stack", "g": 2, "lr": "continue"},
                  {"step": 50, "op": "stack", "g": 2, "lr": "rewind"},
                  {"step": 70, "op": "stack", "g": 2, "warmup_steps": 5, "peak_lr": 4e-3})
  phases = growth.plan(c)
  base = lambda t: float(optim.schedule(c.optim, 100)(t))
  lr = [float(p.lr_schedule(t)) for p, t in ((phases[growth.phase_at(phases, t + 1)], t) for t in range(100))]
  np.testing.assert_allclose(lr[:50], [base(t) for t in range(50)], rtol=1e-6)  # continue: as if nothing happened
  assert lr[50] == pytest.approx(1e-2) and lr[50:70] == pytest.approx([base(10 + t - 50) for t in range(50, 70)])
  assert lr[70] == 0 and lr[75] == pytest.approx(4e-3)  # restart_warmup: from 0 to the new peak in 5 steps
  assert 4e-4 <= lr[99] < 4.2e-4  # then decays over the rest of the run to min_lr_ratio·peak (one step short)
  assert [p.peak_lr for p in phases] == [1e-2, 1e-2, 1e-2, 4e-3]
  defaults = growth.plan(with_events(tiny(train__steps=100), {"step": 40, "op": "stack", "g": 2}))[1]
  assert defaults.event["opt"] == "reset" and defaults.event["lr"] == "restart_warmup"  # G_stack's code
  assert defaults.event["warmup_steps"] == 5 and defaults.peak_lr == 3e-3  # optim's, where growth's are unset


def test_total_flops_add_up_across_events(tiny):
  c = with_events(tiny(train__steps=100), {"step": 30, "op": "stack", "g": 2},
                  {"step": 60, "op": "expand_mlp", "mlp_dim": 128})
  phases = growth.plan(c)
  f = [flops.train_flops_per_step(p.config.model, 32, 8) for p in phases]
  assert f[0] < f[1] < f[2]
  assert [p.config.model.num_layers for p in phases] == [2, 4, 4] and phases[2].config.model.mlp_dim == 128
  assert growth.total_flops(phases, 20) == 20 * f[0]
  assert growth.total_flops(phases, 100) == 30 * f[0] + 30 * f[1] + 40 * f[2]


# ---------------------------------------------------------------- bad growth events


@pytest.mark.parametrize("events, message", [
    ([{"step": 20, "op": "stack", "g": 2}], "must be an integer in [1, train.steps=20)"),
    ([{"step": 5, "op": "stack", "g": 2}, {"step": 5, "op": "stack", "g": 2}], "list events in increasing steps"),
    ([{"step": 5, "op": "stak", "g": 2}], "unknown op 'stak'"),
    ([{"step": 5, "op": "stack", "factor": 2}], "stack takes ['g', 'layer_map']"),
    ([{"step": 5, "op": "stack", "layer_map": [0, 5]}], "must be a non-empty list of layer indices in [0, 2)"),
    ([{"step": 5, "op": "expand_mlp"}], "missing 1 required keyword-only argument: 'mlp_dim'"),
    ([{"step": 5, "op": "add_heads", "num_heads": 6, "num_kv_heads": 4}], "not a multiple of num_kv_heads=4"),
    ([{"step": 5, "op": "expand_head_dim", "head_dim": 12}], "not function-preserving under RoPE"),
    ([{"step": 5, "op": "stack", "g": 2, "opt": "keep"}], "opt='keep' is not one of ('reset', 'copy', 'duplicate')"),
    ([{"step": 5, "op": "stack", "g": 2}, {"step": 9, "op": "g_random", "num_layers": 3}], "must exceed the model's 4"),
])
def test_bad_events_are_one_line_errors(tiny, events, message):
  with pytest.raises(ConfigError) as e:
    growth.plan(with_events(tiny(), *events))
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fields, message", [
    (dict(opt="keep"), "growth.opt='keep' is not one of ('reset', 'copy', 'duplicate')"),
    (dict(lr="cosine"), "growth.lr='cosine' is not one of ('restart_warmup', 'continue', 'rewind')"),
])
def test_growth_policies_are_checked_by_the_growth_package(tiny, fields, message):
  """growth.check (run by preflight.validate) and growth.plan both refuse them, with or without events."""
  for events in ((), ({"step": 5, "op": "stack", "g": 2},)):
    c = with_events(tiny(), *events, **fields)
    for check in (growth.check, growth.plan):
      with pytest.raises(ConfigError) as e:
        check(c)
      assert str(e.value) == message


def test_a_grown_model_the_mesh_cannot_hold_is_refused_before_anything_is_written(tiny, tmp_path):
  c = with_events(tiny(mesh__data=2, mesh__tensor=4), {"step": 5, "op": "add_heads", "num_heads": 6})
  (tmp_path / "config.json").write_text("{}")  # a previous run's
  with pytest.raises(ConfigError, match=r"after growth event add_heads at step 5: model.num_heads=6 is not "
                                        r"divisible by the tensor axis \(mesh.tensor=4\)"):
    train.train(c, str(tmp_path))
  assert os.listdir(tmp_path) == ["config.json"] and (tmp_path / "config.json").read_text() == "{}"


# ---------------------------------------------------------------- mid-run growth in the trainer


EVENTS = ({"step": 6, "op": "expand_mlp", "mlp_dim": 128, "opt": "copy", "lr": "continue"},  # function-preserving
          {"step": 12, "op": "g_learn", "g": 2, "fit_steps": 3, "lr": "rewind"})  # not; fits on the next 3 batches


def test_growth_in_the_loop_resumes_exactly_from_a_kill_during_an_event(tiny, tmp_path):
  c = with_events(tiny(train__steps=20, train__log_every=1, train__checkpoint_every=10, train__eval_every=100,
                       train__keep_checkpoints=5),
                  *EVENTS)
  ref = train.train(c, str(tmp_path / "ref"), devices=ONE)
  rows = read_metrics(str(tmp_path / "ref"))
  events = [r for r in rows if "growth/event" in r]
  assert [(r["step"], r["growth/event"]) for r in events] == [(6, 1), (12, 2)]
  assert events[0]["growth/eval_loss_after"] == pytest.approx(events[0]["growth/eval_loss_before"], rel=1e-5)
  assert abs(events[1]["growth/eval_loss_after"] - events[1]["growth/eval_loss_before"]) > 1e-3  # G_learn jumps
  phases = growth.plan(c)
  by_step = {r["step"]: r for r in rows if "loss" in r}
  f = [flops.train_flops_per_step(p.config.model, 32, 8) for p in phases]
  assert by_step[20]["total_flops"] == ref["total_flops"] == 6 * f[0] + 6 * f[1] + (3 + 8) * f[2]  # g_learn's 3
  assert by_step[20]["tokens"] == 20 * 8 * 32
  assert sorted(int(s) for s in os.listdir(tmp_path / "ref" / "checkpoints")) == [6, 10, 12, 20]
  saved = lambda s: ocp.JsonCheckpointHandler().restore(tmp_path / "ref" / "checkpoints" / str(s) / "config")
  assert [(saved(s)["model"]["num_layers"], saved(s)["model"]["mlp_dim"]) for s in (6, 10, 12, 20)] == [
      (2, 64), (2, 128), (2, 128), (4, 128)]  # an event's own step holds the model before it

  # Killed during the second event: on disk, what the run had saved by then (its step-12 save is the small model).
  crashed = str(tmp_path / "crashed")
  shutil.copytree(tmp_path / "ref", crashed)
  shutil.rmtree(os.path.join(crashed, "checkpoints", "20"))
  train.train(c, crashed, devices=ONE)  # resumes from step 12 (the small model) and grows again
  assert losses_by_step(crashed) == losses_by_step(str(tmp_path / "ref"))  # bit-identical
  assert [r["step"] for r in read_metrics(crashed) if "growth/event" in r] == [6, 12]  # not written twice


def test_a_mask_ramp_in_the_loop_keeps_the_loss_at_growth_then_fades_the_layers_in(tiny, tmp_path):
  """G↑random with MSG's mask (ramp_steps): the grown model's eval at the event is the small model's, bit for bit,
  and the first step after it too (m = 0); without the mask the loss moves at the event."""
  def run(name, *events):
    c = with_events(tiny(train__steps=12, train__log_every=1, train__eval_every=100), *events)
    train.train(c, str(tmp_path / name), devices=ONE)
    rows = read_metrics(str(tmp_path / name))
    return [r for r in rows if "growth/event" in r][:1], losses_by_step(str(tmp_path / name))

  event = {"step": 5, "op": "g_random", "num_layers": 4}
  ([masked], m_loss), ([plain], p_loss) = run("masked", dict(event, ramp_steps=4)), run("plain", event)
  _, small_loss = run("small")  # no growth: the same schedule and batches
  assert masked["growth/eval_loss_after"] == masked["growth/eval_loss_before"]
  assert plain["growth/eval_loss_after"] != plain["growth/eval_loss_before"]
  # the same base to step 5; at step 6 the masked model is the small one (m = 0), the unmasked one is not
  assert m_loss[5] == p_loss[5] == small_loss[5] and m_loss[6] == small_loss[6] != p_loss[6]
  assert m_loss[8] != small_loss[8]  # m = 2/4: the new layers act


def test_a_width_ramp_in_the_loop_keeps_the_loss_at_growth_then_fades_the_units_in(tiny, tmp_path):
  """MSG's width mask (ramp_steps on expand_mlp, add_heads): fresh new units whose input columns (W_in; W_Q, W_K,
  W_V) the train and eval steps scale by m: the eval at the event and the first step after it (m = 0) are the
  small model's, to float rounding; then the units act."""
  def run(name, *events):
    c = with_events(tiny(train__steps=12, train__log_every=1, train__eval_every=100), *events)
    train.train(c, str(tmp_path / name), devices=ONE)
    return [r for r in read_metrics(str(tmp_path / name)) if "growth/event" in r], losses_by_step(str(tmp_path / name))

  _, small_loss = run("small")
  for op in ({"op": "expand_mlp", "mlp_dim": 96}, {"op": "add_heads", "num_heads": 8}):
    [row], loss = run(op["op"], {"step": 5, "ramp_steps": 4, **op})
    assert row["growth/eval_loss_after"] == pytest.approx(row["growth/eval_loss_before"], rel=1e-6)
    assert loss[6] == pytest.approx(small_loss[6], rel=1e-6) and loss[5] == small_loss[5]
    assert abs(loss[8] - small_loss[8]) > 1e-6  # m = 2/4: the new units act


def test_growth_on_the_mesh_gives_the_one_device_state(tiny):
  """On an FSDP × tensor-parallel mesh of the 8 devices: parameters and moments sharded both ways."""
  mesh = dict(data=1, fsdp=2, tensor=4)
  c = with_events(tiny(), {"step": 5, "op": "add_heads", "num_heads": 8, "opt": "copy"},
                  {"step": 6, "op": "split_mlp", "mlp_dim": 96, "opt": "copy"},
                  {"step": 7, "op": "g_random", "num_layers": 3, "opt": "copy"})
  c.unlock()
  c.mesh.update(mesh)
  phases = growth.plan(c)

  def programs_on(devices, mesh_cfg):
    m = sharding.make_mesh(cfg_lib.mesh_shape(mesh_cfg, len(devices)), devices)
    return [train.build(p.config, m, p.lr_schedule, p.peak_lr) for p in phases]

  def grown(programs, state):
    state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, programs[0].abstract_state))
    for k in (1, 2, 3):
      state = train.grow(phases, k, programs, state)
    return jax.device_get(state)

  single = programs_on(ONE, dict(data=1, fsdp=1, tensor=1))
  state = jax.device_get(single[0].init(jax.random.key(0)))
  state["opt_state"] = jax.tree.map(lambda x: x + 1 if x.ndim else x, state["opt_state"])  # moments to copy
  one, sharded = grown(single, state), grown(programs_on(jax.devices(), c.mesh), state)
  assert one["params"]["blocks"]["attn"]["wq"]["w"].shape[:2] == (3, 32)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), one, sharded)
  mu = one["opt_state"][1].mu["blocks"]["mlp"]["down"]["w"]
  # copy: the old moments kept in place; split_mlp's new units and g_random's new layer start at zero
  assert (mu[:2, :64] == 1).all() and not mu[:2, 64:].any() and not mu[2].any()
