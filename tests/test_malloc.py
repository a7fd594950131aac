"""jaxtrain.malloc: entry points restart themselves once with glibc's malloc tuned from the start."""

import os
import subprocess
import sys

import pytest

from jaxtrain import malloc

# After tune_process(): how it tuned, how many blocks are mmapped after a 300 MiB malloc (mallinfo2 hblks), and the
# GLIBC_TUNABLES a child process sees.
ENTRY = """
import ctypes, os, subprocess, sys
from jaxtrain import malloc
how = malloc.tune_process()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(300 << 20)
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES'))"],
                       capture_output=True, text=True).stdout.strip()
print(how, libc.mallinfo2().hblks, child)
"""

glibc_only = pytest.mark.skipif(malloc._glibc() is None or not hasattr(malloc._glibc(), "mallinfo2"),
                                reason="needs glibc >= 2.33")


def run(tmp_path, **env):
  script = tmp_path / "entry.py"
  script.write_text(ENTRY)
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                       env={**os.environ, **env})
  return out.stdout.split()


@glibc_only
def test_restarts_once_tuned_and_leaves_children_alone(tmp_path):
  how, mmapped, child = run(tmp_path, GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
  assert (how, mmapped) == ("tunables", "0")  # the big block came from the heap, not a fresh mmap
  assert child == "glibc.malloc.tcache_count=7"  # children get the user's own setting back


@glibc_only
def test_user_tunables_win_and_default_leaves_malloc_alone(tmp_path):
  how, mmapped, _ = run(tmp_path, GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")
  assert how == "tunables" and int(mmapped) > 0  # the user's mmap_max overrides ours
  how, mmapped, _ = run(tmp_path, JAXTRAIN_MALLOC="default")
  assert how == "default" and int(mmapped) > 0


def test_not_restarted_from_stdin():
  code = "from jaxtrain import malloc; print(malloc.tune_process())"
  out = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, check=True)
  assert out.stdout.strip() in ("mallopt", "default")  # ran once, not restarted into an empty stdin
