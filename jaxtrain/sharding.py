"""The device mesh and the one table that maps logical axis names to it.

Every parameter carries logical axis names (`("embed", "mlp")`), and so do the
main activations (`("batch", None, "heads", None)`). `RULES` maps each logical
name to mesh axes; names it does not list are replicated. The same model then
runs as pure data parallel (mesh.data=N), FSDP (mesh.fsdp=N: every matrix is
split along its model dimension, and gathered for use), tensor parallel
(mesh.tensor=N: heads, MLP hidden units and the vocabulary are split), or any mix.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain.config import MESH_AXES, ConfigError

RULES: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),  # activations: the batch is split over both data axes
    ("embed", "fsdp"),            # parameters: FSDP shards the model dimension
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
)


def make_mesh(shape: dict[str, int], devices=None) -> jax.sharding.Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor') of the given sizes."""
  devices = devices if devices is not None else jax.devices()
  return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def spec(logical: tuple[str | None, ...]) -> P:
  """The PartitionSpec of a tuple of logical axis names, by `RULES`."""
  table = dict(RULES)
  return P(*(table.get(name) if name else None for name in logical))


def is_axes(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def shardings(mesh, axes_tree):
  """NamedShardings for a pytree whose leaves are tuples of logical names."""
  return jax.tree.map(lambda a: NamedSharding(mesh, spec(a)), axes_tree, is_leaf=is_axes)


def check_divisible(abstract_tree, axes_tree, mesh_shape: dict[str, int]) -> None:
  """Raises ConfigError, before compiling, for any array dimension its mesh axes do not divide."""
  paths = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  axes = jax.tree.leaves(axes_tree, is_leaf=is_axes)
  for (path, leaf), names in zip(paths, axes):
    for dim, s in zip(leaf.shape, spec(names)):
      if s is None:
        continue
      mesh_axes = (s,) if isinstance(s, str) else s
      n = math.prod(mesh_shape[a] for a in mesh_axes)
      if dim % n:
        where = jax.tree_util.keystr(path)
        raise ConfigError(
            f"parameter {where} of shape {leaf.shape} cannot be split {n} ways over mesh axes {mesh_axes}: "
            f"dimension {dim} is not divisible; change the mesh or the model size")


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
  """Pins an activation's sharding inside jit when a mesh is set (`traced_on`, `jax.set_mesh`); a no-op otherwise."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec(logical))


def traced_on(mesh: jax.sharding.Mesh, f):
  """`f`, tracing with `mesh` as its abstract mesh: jit(traced_on(mesh, f)) keeps every `constrain` wherever it is
  lowered or called (an ahead-of-time `.lower()` outside `jax.set_mesh` would otherwise drop them all)."""

  def on_mesh(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return f(*args, **kwargs)

  return on_mesh


def host_to_global(batch, mesh, logical=("batch", None)):
  """Assembles per-host numpy batches into global arrays split over the batch axes."""
  sharding = NamedSharding(mesh, spec(logical))

  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(put, batch)
