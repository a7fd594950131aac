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

from jaxtrain import config as cfg_lib

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


def check(config, target: cfg_lib.Target) -> None:
  """The host layout (one process per host): what cannot run, or would run tensor parallelism across hosts.

  The mesh orders devices process by process with `tensor` the fastest axis
  (`sharding.make_mesh`), so a tensor group stays inside one process exactly when
  mesh.tensor divides its device count. On GPU and CPU clusters hosts talk over the
  network, too slow for the collectives tensor parallelism runs in every layer; a
  TPU slice's chips share one interconnect across hosts, so there it is not checked.
  `target.local_devices` None: only the batch shards are checked.
  """
  processes, local, num_devices = target.process_count, target.local_devices, target.num_devices
  if processes == 1 or target.platform == "tpu":
    return
  if local is not None and local * processes != num_devices:
    raise cfg_lib.ConfigError(
        f"{num_devices} devices are not {processes} processes x {local}: every process must have the same number "
        "of devices (check --cpu_devices, JAX_LOCAL_DEVICE_IDS or CUDA_VISIBLE_DEVICES)")
  mesh = cfg_lib.mesh_shape(config.mesh, num_devices)
  tensor, shards = mesh["tensor"], mesh["data"] * mesh["fsdp"]
  if local is not None and local % tensor:
    raise cfg_lib.ConfigError(
        f"mesh.tensor={tensor} does not divide the {local} devices of each of the {processes} processes: a "
        f"tensor-parallel group would span hosts; use a mesh.tensor that divides {local} and give the other devices "
        "to mesh.fsdp or mesh.data (on GPU: one process per host)")
  if shards % processes:
    raise cfg_lib.ConfigError(
        f"mesh.data·mesh.fsdp={shards} is not divisible by the {processes} processes: each host must hold whole "
        "batch shards; raise mesh.data or mesh.fsdp and lower mesh.tensor")
