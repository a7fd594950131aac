"""The notebooks in notebooks/ are committed without outputs (CI executes them: `pytest --nbmake notebooks`)."""

import glob
import json
import os

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def test_notebooks_are_committed_without_outputs_or_execution_counts():
  paths = sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))
  assert paths, f"no notebooks in {NOTEBOOKS}"
  dirty = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      nb = json.load(f)
    for i, cell in enumerate(nb["cells"]):
      if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None
                                          or "execution" in cell.get("metadata", {})):
        dirty.append(f"{os.path.basename(path)} cell {i}")
  assert not dirty, ("notebooks with outputs (strip them: jupyter nbconvert --clear-output --inplace "
                     f"notebooks/*.ipynb): {', '.join(dirty)}")
