"""The benchmarks run (tiny sizes): they print their figures and the machine's ceiling; speed is never asserted."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("docs", [0, 4])
def test_throughput_runs_on_causal_and_packed_rows(docs):
  """--docs K: rows of K documents kept apart by data.document_mask (the default job's setting); 0: causal rows."""
  run = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "throughput.py"), "--steps", "2", "--warmup",
                        "1", "--d_model", "32", "--layers", "1", "--heads", "2", "--seq", "32", "--batch", "8",
                        "--docs", str(docs), "--ceiling_sizes", "128"], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
  assert run.returncode == 0, run.stderr[-2000:]
  want = f"{docs} documents per row (data.document_mask)" if docs else "causal rows"
  assert want in run.stdout and "tokens/s:" in run.stdout and "ceiling = " in run.stdout, run.stdout
