"""What every host must agree on, and the few collectives that make them agree.

On a pod each host runs this same program; any decision that changes which
collectives run next (stop now, save this step, restore that step) must be the
same on all hosts, or one host waits in a barrier while another runs the next
step's all-reduce: a deadlock. Each decision is therefore made from values every
host has exchanged (`gather`) or received from host 0 (`broadcast`), never from
host-local state alone (a signal, a read error). On one process these are plain
numpy and cost nothing, so a single host runs the same code path.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost

BARRIER_TIMEOUT = 3600  # seconds: a host may still be building the token cache or compiling
_barriers = itertools.count()  # barrier names must be unique; every host calls barrier() in the same order


def gather(value: int) -> np.ndarray:
  """int32[process_count]: `value` of every host, in process order (the same array on every host)."""
  if jax.process_count() == 1:
    return np.array([value], np.int32)
  return np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)


def any_host(flag: bool) -> bool:
  """True on every host if `flag` is true on any host."""
  return bool(gather(int(flag)).max())


def broadcast(values) -> list[int]:
  """Host 0's list of ints, on every host (the lists may differ in length beforehand)."""
  values = [int(v) for v in values]
  if jax.process_count() == 1:
    return values
  barrier("broadcast")  # after host-local work of any length: meet first (see barrier)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  padded = np.zeros(max(n, 1), np.int32)  # steps fit; int64 needs x64 mode
  padded[:min(n, len(values))] = values[:n]
  return [int(v) for v in multihost_utils.broadcast_one_to_all(padded)[:n]]


def barrier(name: str) -> None:
  """Returns on each host once every host has called barrier(name) as often as this one.

  It waits in the coordination service (up to BARRIER_TIMEOUT), not in a device collective: on CPU the first run
  of each collective program must find every host within gloo's 30 s, so call it before a collective that follows
  host-local work of uneven length (building a data cache, compiling, reading a checkpoint).
  """
  if jax.process_count() > 1:
    ocp_multihost.sync_global_processes(f"jaxtrain:{name}:{next(_barriers)}", timeout=BARRIER_TIMEOUT,
                                        processes=set(range(jax.process_count())))


def open_collectives(mesh: jax.sharding.Mesh) -> None:
  """Runs one all-reduce over every group of `mesh` axes, with every host in step, on a multi-process CPU run.

  Gloo (XLA's CPU collectives across processes) opens a device group's connection at its first collective and gives
  every process 30 s to arrive there, whatever the XLA flags say. Before any step runs, hosts drift apart: one reads
  a program from the compilation cache while another compiles it, a minute on a busy machine. Opened here, behind a
  barrier, the groups are in place, and later collectives wait for a slow host as long as it takes.
  """
  if jax.process_count() == 1 or mesh.devices.flat[0].platform != "cpu":
    return
  names = [a for a in mesh.axis_names if mesh.shape[a] > 1]  # not empty: two processes hold two devices or more
  groups = [tuple(a for i, a in enumerate(names) if k >> i & 1) for k in range(1, 2**len(names))]
  spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
  shmap = jax.shard_map(lambda x: sum(jax.lax.psum(x, g) for g in groups), mesh=mesh, in_specs=spec, out_specs=spec)
  ones = jax.make_array_from_callback((mesh.devices.size,), jax.sharding.NamedSharding(mesh, spec),
                                      lambda _: np.ones((1,), np.float32))
  compiled = jax.jit(shmap).lower(ones).compile()
  barrier("open_collectives")  # after compiling: every host arrives at the first collective together
  jax.block_until_ready(compiled(ones))
