"""The README and docs/ against the code: every config key they override exists in the schema, every
`python -m jaxtrain.<tool>` is a module with a main, every relative link (and anchor) and every repository path they
name exists, the README stays short, and docs/testing.md and the fast tier (tests/conftest.py) name real tests.
Each check is a function of the text, and each is also run once on a doctored string, so it can fail.
Fully qualified names (`jaxtrain.metrics.read_metrics`) must resolve too."""

import ast
import glob
import importlib
import importlib.util
import os
import re

import pytest

import conftest
from jaxtrain import config as cfg_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 300
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
# Links are also checked on the other READMEs that point into docs/.
LINKED = DOCS + ["experiments/README.md", "benchmarks/README.md", "tpu/README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "experiments", "*", "README.md")))
SECTIONS = tuple(k for k, v in cfg_lib.base().items() if hasattr(v, "items"))


def read(path: str) -> str:
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    return f.read()


def code_blocks(text: str) -> list[str]:
  return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def prose(text: str) -> str:
  """The text outside fenced code blocks."""
  return re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)


def find_spec(name: str):
  """importlib's find_spec, None also where a parent is a module, not a package."""
  try:
    return importlib.util.find_spec(name)
  except ModuleNotFoundError:
    return None


# Config keys.

def has_key(key: str) -> bool:
  node = cfg_lib.base()
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def config_keys(text: str) -> set[str]:
  """`--config.KEY` anywhere; in code blocks also `--grid FIELD=...;FIELD=...` and `config.SECTION.KEY` (a loaded
  config's fields, `run.config.model.num_layers`). Placeholders (`--config.FIELD`, `--config.<path>`) are skipped."""
  keys = {k.rstrip(".") for k in re.findall(r"--config\.([A-Za-z_][\w.]*)", text)}
  for block in code_blocks(text):
    for grid in re.findall(r"--grid[ =]+[\"']?([^\"'\s]+)", block):
      keys |= {part.split("=", 1)[0] for part in grid.split(";")}
    keys |= set(re.findall(rf"\bconfig\.((?:{'|'.join(SECTIONS)})\.\w+(?:\.\w+)*)", block))
  return {k for k in keys if k and not any(p.isupper() for p in k.split("."))}


def config_key_errors(text: str) -> list[str]:
  return sorted(k for k in config_keys(text) if not has_key(k))


# python -m jaxtrain.<tool>.

def module_errors(text: str) -> list[str]:
  errors = []
  for name in sorted(set(re.findall(r"python -m ((?:jaxtrain|grokking)(?:\.\w+)*)", text))):
    spec = find_spec(name)
    if spec is None:
      errors.append(f"{name}: no such module")
      continue
    importlib.import_module(name)
    if spec.submodule_search_locations:  # a package runs its __main__.py
      spec = find_spec(name + ".__main__")
      if spec is None:
        errors.append(f"{name}: a package without __main__.py")
        continue
    with open(spec.origin, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    if "main" not in defined:
      errors.append(f"{name}: {os.path.relpath(spec.origin, REPO)} has no main")
  return errors


# jaxtrain.<module>.<name>.

def python_name_errors(text: str) -> list[str]:
  """Fully qualified names (`jaxtrain.metrics.read_metrics`) that do not resolve: a module gone or a name moved."""
  errors = []
  for name in sorted(set(re.findall(r"\b(jaxtrain(?:\.\w+){2,})", text))):
    parts = name.split(".")
    n = 1  # the longest importable prefix
    while n < len(parts) and find_spec(".".join(parts[:n + 1])) is not None:
      n += 1
    obj = importlib.import_module(".".join(parts[:n]))
    for part in parts[n:]:
      if not hasattr(obj, part):
        errors.append(name)
        break
      obj = getattr(obj, part)
  return errors


# Links, anchors and repository paths.

def slug(heading: str) -> str:
  """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
  return {slug(h) for h in re.findall(r"^#{1,6} +(.+?) *$", prose(text), flags=re.M)}


def link_errors(text: str, where: str) -> list[str]:
  """Relative links from the file `where` (repository-relative) to files that do not exist, or to headings that do
  not exist in a markdown file."""
  errors = []
  for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(REPO, os.path.dirname(where), path)) if path else os.path.join(REPO, where)
    if not os.path.exists(full):
      errors.append(f"{target}: no such file")
    elif anchor and full.endswith(".md") and anchor not in anchors(read(os.path.relpath(full, REPO)) if path
                                                                     else text):
      errors.append(f"{target}: no such heading")
  return errors


ROOTS = "jaxtrain|grokking|tests|configs|experiments|benchmarks|notebooks|tpu|slurm|docs"


def repo_paths(text: str) -> set[str]:
  """Repository paths in `backticks` (and scripts run in code blocks), `:ARG` of a config file dropped; paths with
  placeholders or globs skipped."""
  found = set(re.findall(rf"`((?:{ROOTS})/[^`\s]*)`", text))
  for block in code_blocks(text):
    found |= set(re.findall(rf"(?<![\w/.])((?:{ROOTS})/[\w/.-]+\.(?:py|sh|sbatch)(?::[\w,|]+)?)", block))
  return {p.split(":")[0] for p in found if not re.search(r"[<>*{}]", p)}


def path_errors(text: str) -> list[str]:
  return sorted(p for p in repo_paths(text) if not os.path.exists(os.path.join(REPO, p)))


# The tests.

@pytest.mark.parametrize("doc", DOCS)
def test_config_keys_exist_in_the_schema(doc):
  assert not config_key_errors(read(doc)), f"{doc}: keys not in jaxtrain.config.base(): {config_key_errors(read(doc))}"


@pytest.mark.parametrize("doc", DOCS)
def test_python_m_tools_are_modules_with_a_main(doc):
  assert not module_errors(read(doc)), f"{doc}: {module_errors(read(doc))}"


@pytest.mark.parametrize("doc", DOCS)
def test_jaxtrain_names_resolve(doc):
  assert not python_name_errors(read(doc)), f"{doc}: {python_name_errors(read(doc))}"


@pytest.mark.parametrize("doc", LINKED)
def test_relative_links_and_anchors_exist(doc):
  assert not link_errors(read(doc), doc), f"{doc}: {link_errors(read(doc), doc)}"


@pytest.mark.parametrize("doc", DOCS)
def test_named_repository_paths_exist(doc):
  assert not path_errors(read(doc)), f"{doc}: {path_errors(read(doc))}"


def test_readme_is_short():
  n = read("README.md").count("\n")
  assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}: move the detail to docs/)"


def test_testing_page_names_every_test_file():
  page = read("docs/testing.md")
  missing = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(REPO, "tests", "test_*.py")))
             if f"`{os.path.basename(p)}`" not in page]
  assert not missing, f"docs/testing.md does not describe {missing}"


def test_the_fast_tier_names_real_tests():
  """A renamed test would silently join the fast tier: every name tests/conftest.py marks slow must exist."""
  missing = [f for f in conftest.SLOW_FILES | set(conftest.SLOW_TESTS) if not os.path.exists(os.path.join(REPO,
                                                                                                          "tests", f))]
  for f, names in conftest.SLOW_TESTS.items():
    if f not in missing:
      defined = {n.name for n in ast.parse(read(os.path.join("tests", f))).body if isinstance(n, ast.FunctionDef)}
      missing += [f"{f}::{n}" for n in sorted(names - defined)]
  assert not missing, f"tests/conftest.py marks tests that do not exist: {missing}"


def test_the_checks_can_fail():
  """Each check on a doctored string: a misspelt key, a module that is not there or has no main, a dead link and
  anchor, a path that does not exist, and what must pass."""
  doctored = """
Set `--config.modle.num_layers=2`, or `--config.FIELD=VALUE` (a placeholder), `--config.model.norm.placement=mix`.
```bash
python -m jaxtrain.sweep --grid "model.d_model=64;model.hedas=2" --grid optim.lr=1e-3:1e-2:x2
python -m jaxtrain.nosuchtool --config.train.steps=3
python -m jaxtrain.config
python experiments/nosuch/run.py --config=configs/lm_small.py:tiny
```
```python
run.config.train.stpes
```
See [the data page](docs/data.md), [nothing](docs/nothing.md), [a heading](docs/data.md#no-such-heading),
[here](#set), `jaxtrain/nosuch.py`, `jaxtrain/data/`, `configs/lm_small.py:medium`, `runs/<name>/`,
`jaxtrain.config.base()`, `jaxtrain.metrics.read_metricz(workdir)`, `jaxtrain.metrics.read_metrics`,
`jaxtrain.nosuch.f`.
# Set
"""
  assert config_key_errors(doctored) == ["model.hedas", "modle.num_layers", "train.stpes"]
  assert module_errors(doctored) == ["jaxtrain.config: jaxtrain/config.py has no main",
                                     "jaxtrain.nosuchtool: no such module"]
  assert link_errors(doctored, "README.md") == ["docs/nothing.md: no such file",
                                                "docs/data.md#no-such-heading: no such heading"]
  assert path_errors(doctored) == ["experiments/nosuch/run.py", "jaxtrain/nosuch.py"]
  assert python_name_errors(doctored) == ["jaxtrain.metrics.read_metricz", "jaxtrain.nosuch.f"]
  assert slug("Offline growth: `python -m jaxtrain.grow`") == "offline-growth-python--m-jaxtraingrow"
  assert slug("StableMax and ⊥Grad against Softmax Collapse") == "stablemax-and-grad-against-softmax-collapse"
  assert slug("μnit Scaling and FP8") == "μnit-scaling-and-fp8"
