"""jaxtrain.malloc: the entry points restart themselves once with glibc's malloc tuned from the start."""

import os
import subprocess
import sys

import pytest

from jaxtrain import malloc

CODE = "import os; from jaxtrain import malloc; print(malloc.tune_process(), os.getpid(), os.environ.get('GLIBC_TUNABLES'))"


def run(**env):
  out = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True,
                       check=True)
  return out.stdout.split()


@pytest.mark.skipif(malloc._glibc() is None, reason="not glibc")
def test_restarts_once_with_tunables():
  how, _, tunables = run(GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
  assert how == "tunables"
  assert tunables.startswith("glibc.malloc.tcache_count=7:")  # the user's own tunables are kept
  assert "glibc.malloc.mmap_max=0" in tunables and "glibc.malloc.arena_max=1" in tunables


def test_can_be_switched_off():
  how, _, tunables = run(JAXTRAIN_MALLOC="default", GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
  assert (how, tunables) == ("default", "glibc.malloc.tcache_count=7")
