"""Keep freed host memory for reuse, so a CPU train step does not page-fault its workspace.

XLA's CPU runtime allocates each step's temporary buffer (750 MiB for the
benchmark model) with malloc and frees it at the end of the step. glibc serves
blocks that large with a fresh mmap from a per-thread arena and unmaps them on
free, so every step touches the whole buffer for the first time: 192k page faults
and 0.6 s of kernel time per step on a 2-core machine, about 15% of the step
(measured 2026-11-23, see benchmarks/README.md). With one arena, no mmap and no
trimming, the block stays in the heap and the next step reuses it.

Call `reuse_freed_memory()` before `import jax` (its threads pick their arenas when
they start); `python -m jaxtrain` and `benchmarks/throughput.py` do. The cost is
that the process keeps its peak heap size instead of returning it to the OS.
Set JAXTRAIN_MALLOC=default to leave malloc alone. Not glibc (macOS, musl): a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8


def reuse_freed_memory() -> bool:
  """Tune glibc malloc for a training process; True if applied."""
  if os.environ.get("JAXTRAIN_MALLOC", "") == "default":
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  if not hasattr(libc, "gnu_get_libc_version"):
    return False
  settings = ((M_ARENA_MAX, 1),             # all threads share the main (brk) heap ...
              (M_MMAP_MAX, 0),              # ... which serves even the largest blocks ...
              (M_TRIM_THRESHOLD, 2**31 - 1),  # ... and keeps freed memory instead of returning it,
              (M_TOP_PAD, 2**28))           # grown in 256 MiB steps.
  return all(mallopt(param, value) == 1 for param, value in settings)
