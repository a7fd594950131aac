"""No module reaches into another jaxtrain module's private names (`_name`): each module's API is what it exports.

Every module of jaxtrain/ (and the code built on it: grokking/, experiments/, benchmarks/, configs/) is parsed
(ast); an import of a private name (`from jaxtrain.checkpoint import _semantics`) or an attribute access on an
imported jaxtrain module (`growth._op_args`, `jaxtrain.train._describe`) is a violation. Tests may use the
private names of the module they test, so tests/ is not scanned.
"""

import ast
import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("jaxtrain", "grokking", "experiments", "benchmarks", "configs")


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  """'jaxtrain.growth.core' for root/jaxtrain/growth/core.py; 'jaxtrain.growth' for its __init__.py."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: pathlib.Path, dotted: str) -> bool:
  base = root.joinpath(*dotted.split("."))
  return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def violations(root, dirs=SCANNED, package: str = "jaxtrain") -> list[str]:
  """'path:line: what' for every reach into another `package` module's private names under root/dirs."""
  root = pathlib.Path(root)
  out = []
  for d in dirs:
    for path in sorted((root / d).rglob("*.py")) if (root / d).is_dir() else ():
      out += _file_violations(root, path, package)
  return out


def _file_violations(root: pathlib.Path, path: pathlib.Path, package: str) -> list[str]:
  tree = ast.parse(path.read_text(), str(path))
  here = _module_name(root, path)
  is_package = path.name == "__init__.py"
  aliases = {}  # local name -> the jaxtrain module it is bound to
  out = []

  def report(node, what):
    out.append(f"{path.relative_to(root)}:{node.lineno}: {what}")

  def absolute(node: ast.ImportFrom) -> str:
    if not node.level:
      return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))

  ours = lambda name: name == package or name.startswith(package + ".")
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if not ours(a.name):
          continue
        if any(_private(p) for p in a.name.split(".")[1:]):
          report(node, f"imports the private module {a.name}")
        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      source = absolute(node)
      if not ours(source):
        continue
      for a in node.names:
        full = f"{source}.{a.name}"
        if _private(a.name) and source != here:
          report(node, f"imports {a.name} from {source}")
        elif _is_module(root, full):
          aliases[a.asname or a.name] = full

  def resolve(expr):
    """The jaxtrain module an expression names (`growth`, `jaxtrain.train`), or None."""
    if isinstance(expr, ast.Name):
      return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
      parent = resolve(expr.value)
      if parent and _is_module(root, f"{parent}.{expr.attr}"):
        return f"{parent}.{expr.attr}"
    return None

  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _private(node.attr):
      module = resolve(node.value)
      if module and module != here:
        report(node, f"uses {module}.{node.attr}")
  return out


def test_no_module_uses_another_modules_private_names():
  found = violations(REPO)
  assert not found, "private names used across modules (make them public, or keep them inside):\n" + "\n".join(found)


@pytest.mark.parametrize("code, expected", [
    ("from jaxtrain import growth\ngrowth._op_args('stack')\n", "uses jaxtrain.growth._op_args"),
    ("from jaxtrain import config as cfg_lib\nkeys = cfg_lib._flat_keys\n", "uses jaxtrain.config._flat_keys"),
    ("import jaxtrain.train\njaxtrain.train._describe(m)\n", "uses jaxtrain.train._describe"),
    ("import jaxtrain.train as t\nt._describe(m)\n", "uses jaxtrain.train._describe"),
    ("from jaxtrain.checkpoint import _semantics\n", "imports _semantics from jaxtrain.checkpoint"),
    ("from ..checkpoint import _semantics\n", "imports _semantics from jaxtrain.checkpoint"),
    ("from . import core\ncore._helper()\n", "uses jaxtrain.growth.core._helper"),
])
def test_the_check_finds_each_kind_of_reach(tmp_path, code, expected):
  """A package laid out as jaxtrain's, one module at a time reaching into another's privates."""
  for name in ("jaxtrain/__init__.py", "jaxtrain/config.py", "jaxtrain/train.py", "jaxtrain/checkpoint.py",
               "jaxtrain/growth/__init__.py", "jaxtrain/growth/core.py"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("")
  (tmp_path / "jaxtrain/growth/offline.py").write_text(textwrap.dedent(code))
  found = violations(tmp_path, dirs=("jaxtrain",))
  assert len(found) == 1 and found[0].endswith(expected), found


def test_own_and_public_names_are_fine(tmp_path):
  (tmp_path / "jaxtrain").mkdir()
  (tmp_path / "jaxtrain/__init__.py").write_text("")
  (tmp_path / "jaxtrain/config.py").write_text("")
  (tmp_path / "jaxtrain/train.py").write_text(textwrap.dedent("""\
      import os
      from jaxtrain import config as cfg_lib
      from jaxtrain.config import ConfigError
      _LOCAL = 1
      x = cfg_lib.describe, cfg_lib.__name__, os._exit, _LOCAL, self._state
      """))
  assert not violations(tmp_path, dirs=("jaxtrain",))

