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


# The fast tier, `make test-fast` (`pytest -m "not slow"`): the tests worth running on every edit. Marked slow here,
# by name, besides the tests marked @pytest.mark.slow: several processes, training through the CLI or for long,
# ahead-of-time compiles for other machines, transformers and torch, the GCS emulator, and the notebooks
# (docs/testing.md has the table). `make test` runs everything.
SLOW_FILES = {
    "test_multihost.py", "test_growth.py", "test_growth_loop.py", "test_grow_cli.py", "test_hf.py",
    "test_compile.py", "test_bucket.py", "test_grokking.py", "test_run.py", "test_malloc.py", "test_benchmarks.py",
}
SLOW_TESTS = {
    "test_cli.py": {"test_two_local_processes_form_one_8_device_mesh"},
    "test_data.py": {"test_two_processes_read_their_rows_of_the_one_process_batches",
                     "test_hosts_with_different_data_are_refused", "test_cache_same_with_worker_processes"},
    "test_fp8.py": {"test_fp8_linear_compiles_to_three_fp8_gemms_for_an_h100"},
    "test_munit.py": {"test_fp8_on_the_mesh_and_in_microbatches_matches_one_device"},
    "test_muon.py": {"test_muon_on_a_mesh_equals_one_device", "test_muon_run_learns_and_resumes"},
    "test_evaluate.py": {"test_batching_and_padding_do_not_change_scores", "test_cli_prints_and_writes_the_scores",
                         "test_lm_eval_on_the_export_agrees", "test_downstream_tasks_during_training"},
    "test_optim.py": {"test_mus_lion_orthograd_on_a_mesh_equals_one_device"},
    "test_output_switches.py": {"test_lm_stablemax_config_through_the_cli"},
    "test_placement.py": {"test_placements_on_the_mesh"},
    "test_report.py": {"test_a_study_s_report_regenerates_byte_identically_from_its_summary"},
    "test_stablemax.py": {"test_lm_stablemax_float64_on_a_mesh_equals_one_device"},
    "test_trackers.py": {"test_wandb_offline_run_read_back_and_a_resume_continues_it"},
    "test_sweep.py": {"test_a_signal_to_the_sweep_stops_its_point_which_stays_unfinished",
                      "test_a_killed_sweep_tells_its_point_to_stop",
                      "test_parallel_points_run_at_once_on_disjoint_cores"},
    "test_train.py": {"test_nonfinite_loss_stops_and_keeps_last_checkpoint",
                      "test_incompatible_checkpoint_is_a_clear_error", "test_resume_on_another_mesh",
                      "test_a_signal_during_evaluation_still_saves_the_step_it_stops_at",
                      "test_resume_refuses_a_new_model_field_changed_and_other_data"},
}


def is_slow(item) -> bool:
  name = item.fspath.basename
  return (name in SLOW_FILES or name.endswith(".ipynb")
          or getattr(item, "originalname", item.name) in SLOW_TESTS.get(name, ()))


def pytest_collection_modifyitems(items):
  """Marks the slow tier (above). Then the two-process tests first: with `-n 2 --dist loadfile
  --no-loadscope-reorder` (files in collection order, not largest first) one worker starts on them, the longest file,
  at once while the other takes the rest."""
  for item in items:
    if is_slow(item):
      item.add_marker(pytest.mark.slow)
  items.sort(key=lambda item: item.fspath.basename != "test_multihost.py")
