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


@glibc_only
def test_only_cpu_runs_are_tuned_unless_asked(tmp_path):
  how, mmapped, _ = run(tmp_path, JAX_PLATFORMS="cuda")  # a GPU run: not restarted, malloc left alone
  assert how == "default" and int(mmapped) > 0
  how, mmapped, _ = run(tmp_path, JAX_PLATFORMS="tpu", JAXTRAIN_MALLOC="tuned")
  assert (how, mmapped) == ("tunables", "0")
  how, mmapped, _ = run(tmp_path, JAX_PLATFORMS="cpu", JAXTRAIN_MALLOC="auto")
  assert (how, mmapped) == ("tunables", "0")


def test_unknown_mode_is_one_line():
  code = "from jaxtrain import malloc; malloc.tune_process()"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAXTRAIN_MALLOC": "on"})
  assert out.returncode != 0 and out.stderr.strip().splitlines() == [
      "jaxtrain: error: JAXTRAIN_MALLOC='on' is not one of ('auto', 'tuned', 'default'): auto tunes malloc for "
      "CPU runs only, tuned for every run, default never"]


def test_platform_known_before_jax_starts(tmp_path, monkeypatch):
  plugins = set()
  monkeypatch.setattr(malloc, "_plugin_installed", lambda kind, environ: kind in plugins)
  assert malloc.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, str(tmp_path))
  assert malloc.runs_on_cpu({"JAX_PLATFORMS": "cpu,cuda"}, str(tmp_path))
  assert not malloc.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, str(tmp_path))
  assert not malloc.runs_on_cpu({"JAX_PLATFORMS": "tpu"}, str(tmp_path))
  assert malloc.runs_on_cpu({}, str(tmp_path))  # no accelerator
  (tmp_path / "dev").mkdir()
  (tmp_path / "dev" / "nvidia0").touch()
  assert malloc.runs_on_cpu({}, str(tmp_path))  # a GPU, but JAX without its CUDA plugin runs on the CPU
  plugins.add("cuda")
  assert not malloc.runs_on_cpu({}, str(tmp_path))
  assert malloc.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, str(tmp_path))  # asked for the CPU

  tpu_host = tmp_path / "tpu"
  for slot, (vendor, device) in {"0000:00:04.0": ("0x1ae0", "0x0042"),  # gVNIC: Google's, not a TPU
                                 "0000:00:05.0": ("0x1ae0", "0x0063")}.items():  # a TPU v5e chip
    pci = tpu_host / "sys" / "bus" / "pci" / "devices" / slot
    pci.mkdir(parents=True)
    (pci / "vendor").write_text(vendor + "\n")
    (pci / "device").write_text(device + "\n")
  assert malloc.runs_on_cpu({}, str(tpu_host))  # no libtpu
  plugins.add("tpu")
  assert not malloc.runs_on_cpu({}, str(tpu_host))
  (tpu_host / "sys" / "bus" / "pci" / "devices" / "0000:00:05.0" / "device").write_text("0x0042\n")
  assert malloc.runs_on_cpu({}, str(tpu_host))  # only the network card


def test_finds_jax_plugins_without_importing_them(tmp_path):
  """A plugin package the way JAX finds one (a jax_plugins module, libtpu), whose import would fail the test."""
  for package in ("jax_plugins/xla_cuda12", "libtpu"):
    (tmp_path / package).mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("raise ImportError('imported')\n")
  code = "from jaxtrain import malloc; print(malloc._plugin_installed('cuda', {}), malloc._plugin_installed('tpu', {}))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
  assert out.stdout.split() == ["True", "True"]
  assert malloc._plugin_installed("tpu", {"TPU_LIBRARY_PATH": "/opt/libtpu.so"})
