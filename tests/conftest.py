"""Test setup: 8 simulated CPU devices (before JAX starts), a shared data dir, small configs."""

import os

# XLA's LLVM optimizations off: the tests' programs are tiny and mostly compiled, not run (a third less suite time,
# measured); the numbers a test compares are computed under the same flags on both sides. Subprocesses inherit them.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 "
                           + FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny programs (and subprocesses inherit this): compile each once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxtrain-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tiny import tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data_dir for the session: the embedded corpus is prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def train_optimized():
  """Trains through `python -m jaxtrain` on one device with XLA's optimizations on, for the few tests that run
  enough steps for them to pay (the default config learning: twice as fast so); returns the metrics' rows."""
  def run(config: str, overrides: list[str], workdir) -> list[dict]:
    from jaxtrain.metrics import read_metrics  # pylint: disable=import-outside-toplevel
    env = dict(os.environ, XLA_FLAGS="")
    cmd = [sys.executable, "-m", "jaxtrain", f"--config={config}", f"--workdir={workdir}", "--cpu_devices=1",
           "--config.train.progress=log", *[f"--config.{o}" for o in overrides]]
    done = subprocess.run(cmd, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_metrics(str(workdir))
  return run


@pytest.fixture
def tiny(data_dir):
  return lambda **kw: tiny_config(data_dir, **{k.replace("__", "."): v for k, v in kw.items()})


def pytest_collection_modifyitems(items):
  """The two-process tests first: with `-n 2 --dist loadfile --no-loadscope-reorder` (files in collection order, not
  largest first) one worker starts on them, the longest file, at once while the other takes the rest."""
  items.sort(key=lambda item: item.fspath.basename != "test_multihost.py")
