"""One device vs the simulated 8-device mesh: same losses under DP, FSDP, TP and a mix; FSDP divides memory."""

import jax
import numpy as np
import pytest

from jaxtrain import analysis, sharding, train


def batches(c, n, seed=0):
  rng = np.random.default_rng(seed)
  B, T, V = c.train.global_batch, c.data.seq_len, c.model.vocab_size
  out = []
  for _ in range(n):
    x = rng.integers(0, V, (B, T + 1), dtype=np.int32)
    out.append({"inputs": x[:, :-1], "targets": x[:, 1:]})
  return out


def run(c, mesh_shape, devices, steps=3):
  mesh = sharding.make_mesh(mesh_shape, devices)
  prog = train.build(c, mesh)
  state = prog.init(jax.random.key(0))
  losses = []
  for b in batches(c, steps):
    state, metrics = prog.train_step(state, sharding.host_to_global(b, mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state["params"]), prog, state


@pytest.fixture(scope="module")
def reference(request):
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  c = tiny_config("unused", **{"model.num_kv_heads": 2, "model.vocab_size": 64, "train.global_batch": 16,
                               "train.steps": 10, "optim.warmup_steps": 1})
  losses, params, _, _ = run(c, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  return c, losses, params


@pytest.mark.parametrize("mesh_shape", [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 1, "fsdp": 8, "tensor": 1},
    {"data": 1, "fsdp": 4, "tensor": 2},
    {"data": 2, "fsdp": 2, "tensor": 2},
], ids=["dp8", "fsdp8", "fsdp4_tp2", "dp2_fsdp2_tp2"])
def test_mesh_matches_one_device(reference, mesh_shape):
  c, ref_losses, ref_params = reference
  losses, params, _, _ = run(c, mesh_shape, jax.devices())
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert ref_losses[-1] < ref_losses[0]  # the steps did something
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params, ref_params)


def test_microbatches_match_full_batch(reference):
  c, ref_losses, ref_params = reference
  c = c.copy_and_resolve_references()
  c.train.microbatches = 2
  losses, params, prog, state = run(c, {"data": 4, "fsdp": 2, "tensor": 1}, jax.devices())
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params, ref_params)
  # Evaluation runs in microbatches too (its inputs split to [M, B/M, T]), with the same result as one pass.
  b = batches(c, 1, seed=1)[0]
  hlo = prog.eval_step.jitted.lower(state["params"], sharding.host_to_global(b, prog.mesh)).as_text()
  assert f"tensor<2x{c.train.global_batch // 2}x{c.data.seq_len}xi32>" in hlo
  ce_sum, tokens = prog.eval_step(state["params"], sharding.host_to_global(b, prog.mesh))
  assert int(tokens) == c.train.global_batch * c.data.seq_len
  np.testing.assert_allclose(float(ce_sum / tokens), analysis.eval_loss(prog.graphdef, params, [b]), rtol=1e-5)


def test_fsdp_divides_parameter_and_optimizer_memory(reference):
  c = reference[0].copy_and_resolve_references()
  c.model.update(d_model=256, mlp_dim=512)  # large enough that parameters dominate the arguments

  def argument_bytes(mesh_shape):
    mesh = sharding.make_mesh(mesh_shape, jax.devices())
    prog = train.build(c, mesh)
    b = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(
        mesh, sharding.spec(("batch", None)))), batches(c, 1)[0])
    compiled = prog.train_step.jitted.lower(prog.abstract_state, b).compile()
    return compiled.memory_analysis().argument_size_in_bytes

  dp, fsdp = argument_bytes({"data": 8, "fsdp": 1, "tensor": 1}), argument_bytes({"data": 1, "fsdp": 8, "tensor": 1})
  assert fsdp < dp / 5, (dp, fsdp)  # params + Adam moments split 8 ways (small replicated leaves aside)


def test_state_is_sharded_as_the_rules_say(reference):
  c = reference[0]
  _, _, prog, state = run(c, {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices(), steps=1)
  wq = state["params"]["blocks"]["attn"]["wq"]["w"]
  assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  mu = jax.tree.leaves(state["opt_state"])  # Adam moments follow their parameters
  assert any(getattr(x, "sharding", None) is not None and x.shape == wq.shape and x.sharding.spec == wq.sharding.spec
             for x in mu)


def test_steps_keep_their_sharding_constraints_when_lowered_outside_the_mesh(reference):
  """A step lowered ahead of time, outside `jax.set_mesh`, still pins its activations (the traced step carries its
  mesh): as many sharding constraints as when lowered inside the mesh, and more than none."""
  c = reference[0]
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  prog = train.build(c, mesh)
  b = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(
      mesh, sharding.spec(("batch", None)))), batches(c, 1)[0])
  outside = prog.train_step.jitted.lower(prog.abstract_state, b).as_text()
  with jax.set_mesh(mesh):
    inside = prog.train_step.jitted.lower(prog.abstract_state, b).as_text()
  count = lambda hlo: hlo.count("sharding_constraint")
  assert count(outside) == count(inside) > 0
