"""Keep freed host memory for reuse, so a CPU train step does not page-fault its workspace.

XLA's CPU runtime allocates each step's temporary buffers (650 MiB for the
benchmark model) with malloc and frees them at the end of the step. By default
glibc serves blocks that large with a fresh mmap from a per-thread arena and
unmaps them on free, so every step touches its whole workspace for the first
time: page faults and kernel time, 10-15% of a CPU step on a 2-core machine
(benchmarks/README.md). With one arena, no mmap and no trimming, freed blocks
stay in the heap and the next step reuses them.

These settings only hold fully when glibc reads them at process start (from
GLIBC_TUNABLES): set later with mallopt, the arenas made at start-up still
unmap, and a step still took ~20k page faults (measured 2026-11-23). So
`tune_process()`, called first thing by `python -m jaxtrain` and
`benchmarks/throughput.py`, restarts the process once with GLIBC_TUNABLES set
(os.execv: same pid, same arguments); where that is impossible it falls back
to mallopt. The cost is that the process keeps its peak heap size instead of
returning it to the OS.

Only CPU runs are tuned: it was measured to help there, while a GPU or TPU host
keeps its step's workspace in device memory, and its data reader and checkpoint
writer threads would all queue on one arena. The platform is decided before JAX
starts (`runs_on_cpu`): JAX_PLATFORMS when set, else whether the machine has an
accelerator JAX would pick. JAXTRAIN_MALLOC overrides it: `auto` (the default: CPU
runs only), `tuned` (every run) or `default` (never: malloc left alone).
Not glibc (macOS, musl): a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

# (GLIBC_TUNABLES name, mallopt parameter from glibc's malloc.h, value)
SETTINGS = (
    ("glibc.malloc.arena_max", -8, 1),                  # all threads share the main (brk) heap ...
    ("glibc.malloc.mmap_max", -4, 0),                   # ... which serves even the largest blocks ...
    ("glibc.malloc.trim_threshold", -1, 2**31 - 1),     # ... and keeps freed memory instead of returning it,
    ("glibc.malloc.top_pad", -2, 2**28),                # grown in 256 MiB steps.
)
_MARK = "JAXTRAIN_MALLOC_RESTARTED"  # in the restarted process: the GLIBC_TUNABLES it had before
MODES = ("auto", "tuned", "default")  # JAXTRAIN_MALLOC

# What JAX looks for to pick an accelerator (jax 0.10.2, jax/_src/hardware_utils.py and xla_bridge.py):
# the hardware (NVIDIA's device nodes, /dev/dxg under WSL2; AMD's KFD driver; TPU chips on PCI: Google's
# vendor id with a TPU device id, since gVNIC, GCE's network card, has the same vendor) and JAX's plugin
# for it (a `jax_plugins` module or entry point, e.g. jax_plugins.xla_cuda12; libtpu for TPUs).
_ACCELERATORS = (("cuda", ("dev/nvidia0", "dev/nvidiactl", "dev/dxg")), ("rocm", ("dev/kfd",)))
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")  # v3 ... TPU7x


def _plugin_installed(kind: str, environ) -> bool:
  """Whether JAX has a plugin for 'cuda', 'rocm' or 'tpu' here, found the way JAX finds them, without importing it."""
  if kind == "tpu":
    return bool(environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None
  names = [e.value for e in importlib.metadata.entry_points(group="jax_plugins")]
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    names += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
  return any(kind in name for name in names)


def _tpu_on_pci(root: str) -> bool:
  for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
    try:
      with open(vendor) as v, open(os.path.join(os.path.dirname(vendor), "device")) as d:
        if v.read().strip() == _GOOGLE_PCI_VENDOR and d.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def runs_on_cpu(environ=os.environ, root: str = "/") -> bool:
  """Whether JAX will run this process on the CPU, known without starting JAX.

  JAX_PLATFORMS (e.g. `cpu`, `cuda,cpu`) names the platforms in order of preference. Unset, JAX takes
  an accelerator that the machine has and that a JAX plugin drives; a CPU-only JAX on a GPU machine, or
  the GPU and TPU plugins installed on a laptop to compile for them ahead of time, still run on the CPU.
  """
  platforms = environ.get("JAX_PLATFORMS", "") or environ.get("JAX_PLATFORM_NAME", "")
  if platforms.strip():
    return platforms.split(",")[0].strip().lower() == "cpu"
  for kind, nodes in _ACCELERATORS:
    if any(os.path.exists(os.path.join(root, node)) for node in nodes) and _plugin_installed(kind, environ):
      return False
  return not (_tpu_on_pci(root) and _plugin_installed("tpu", environ))


def _glibc():
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def _restartable(argv) -> bool:
  """A program started from a file or a module (`python x.py`, `python -m m`, a console script), not
  from stdin or an interactive session, which a restart would lose."""
  if not argv or len(argv) < 2 or sys.flags.interactive or hasattr(sys, "ps1"):
    return False
  return argv[1] not in ("-", "-i") and "pydevd" not in sys.modules  # nor under a debugger


def tune_process() -> str:
  """Tunes glibc malloc for a CPU training process; returns how: 'tunables', 'mallopt' or 'default' (not tuned).

  Call it first thing in a program's entry point, never from library code: it may
  restart the process (os.execv, same pid and arguments, GLIBC_TUNABLES set). The
  user's own GLIBC_TUNABLES win over ours, and the restarted process puts the
  variable back as it was, so child processes (data workers) are not tuned. Runs
  on an accelerator are left alone unless JAXTRAIN_MALLOC=tuned (see the module doc).
  """
  mode = os.environ.get("JAXTRAIN_MALLOC", "") or "auto"
  if mode not in MODES:
    raise SystemExit(f"jaxtrain: error: JAXTRAIN_MALLOC={mode!r} is not one of {MODES}: auto tunes malloc for "
                     "CPU runs only, tuned for every run, default never")
  if mode == "default":
    return "default"
  ours = ":".join(f"{name}={value}" for name, _, value in SETTINGS)
  if _MARK in os.environ:  # the restarted process: glibc has read the tunables; never restart twice
    before = os.environ.pop(_MARK)
    if before:
      os.environ["GLIBC_TUNABLES"] = before
    else:
      os.environ.pop("GLIBC_TUNABLES", None)
    return "tunables"
  if mode == "auto" and not runs_on_cpu():
    return "default"
  libc = _glibc()
  if libc is None:
    return "default"
  argv = getattr(sys, "orig_argv", None)
  if _restartable(argv):
    before = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=f"{ours}:{before}" if before else ours, **{_MARK: before})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
      os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:
      pass  # cannot restart: tune what can still be tuned
  ok = all(libc.mallopt(param, value) == 1 for _, param, value in SETTINGS)
  return "mallopt" if ok else "default"
