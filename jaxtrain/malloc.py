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
returning it to the OS. Set JAXTRAIN_MALLOC=default to leave malloc alone.
Not glibc (macOS, musl): a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# (GLIBC_TUNABLES name, mallopt parameter from glibc's malloc.h, value)
SETTINGS = (
    ("glibc.malloc.arena_max", -8, 1),                  # all threads share the main (brk) heap ...
    ("glibc.malloc.mmap_max", -4, 0),                   # ... which serves even the largest blocks ...
    ("glibc.malloc.trim_threshold", -1, 2**31 - 1),     # ... and keeps freed memory instead of returning it,
    ("glibc.malloc.top_pad", -2, 2**28),                # grown in 256 MiB steps.
)
_MARK = "JAXTRAIN_MALLOC_RESTARTED"  # in the restarted process: the GLIBC_TUNABLES it had before


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
  """Tunes glibc malloc for a training process; returns how: 'tunables', 'mallopt' or 'default'.

  Call it first thing in a program's entry point, never from library code: it may
  restart the process (os.execv, same pid and arguments, GLIBC_TUNABLES set). The
  user's own GLIBC_TUNABLES win over ours, and the restarted process puts the
  variable back as it was, so child processes (data workers) are not tuned.
  """
  if os.environ.get("JAXTRAIN_MALLOC", "") == "default":
    return "default"
  ours = ":".join(f"{name}={value}" for name, _, value in SETTINGS)
  if _MARK in os.environ:  # the restarted process: glibc has read the tunables; never restart twice
    before = os.environ.pop(_MARK)
    if before:
      os.environ["GLIBC_TUNABLES"] = before
    else:
      os.environ.pop("GLIBC_TUNABLES", None)
    return "tunables"
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
