"""The import structure of jaxtrain/: no cycle, and no module importing one in a layer above its own.

Every module of jaxtrain/ is parsed (ast); its imports of jaxtrain modules, at the top and inside functions
(`importlib.import_module("jaxtrain.x")` with a literal name too), are the graph's edges. A package (`data`,
`growth`, `sweep`) is one unit of LAYERS, its modules importing each other freely but not in a cycle, except
where LAYERS places one of its modules on its own (`growth.offline`, the offline tool, sits with the tools).
Modules LAYERS names that the tree does not have are skipped; a module of the tree that LAYERS does not name
fails the test: place it in the layer of what it is built on.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "jaxtrain"
PACKAGE = "jaxtrain"

# Lowest first: a unit may import units of its own layer or of those below, never above.
LAYERS = (
    ("__init__", "config"),  # the schema; jaxtrain/__init__.py imports nothing at load (lazy attributes)
    # the features, each with its own rules (`check(config, target)`)
    ("fp8", "munit", "stablemax", "orthograd", "paths", "hosts", "placement", "sharding", "attention", "losses",
     "collapse", "diagnostics", "trackers", "metrics", "profiling", "flops", "hf", "malloc", "proxies", "sample",
     "decode", "muon", "downstream"),
    ("model",),
    ("optim",),
    ("checkpoint", "data"),
    ("growth",),
    ("step", "loop"),
    ("preflight",),  # config.check and every feature's check
    ("train",),
    ("__main__", "compile", "export", "import_hf", "grow", "growth.offline", "sweep", "run", "plots", "analysis",
     "report", "grokking", "evaluate"),  # tools, CLIs and the notebook-facing libraries
)


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  """'jaxtrain.growth.core' for root/growth/core.py; 'jaxtrain.growth' for root/growth/__init__.py."""
  parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
  """The LAYERS entry of a module: the longest one its dotted name under jaxtrain starts with ('growth.offline'
  before 'growth'), else its first component ('__init__' for the package itself)."""
  parts = module.split(".")[1:]
  named = {u for units in LAYERS for u in units}
  for n in range(len(parts), 1, -1):
    if ".".join(parts[:n]) in named:
      return ".".join(parts[:n])
  return parts[0] if parts else "__init__"


def import_graph(root) -> dict[str, dict[str, int]]:
  """{module: {imported jaxtrain module: line}} for every module under `root` (a jaxtrain/ directory)."""
  root = pathlib.Path(root)
  paths = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
  packages = {m for m, p in paths.items() if p.name == "__init__.py"}

  def resolve(name: str) -> str | None:
    """The deepest module of the tree that `name` (dotted) is or lies in."""
    while name and name not in paths:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, path in paths.items():
    edges = {}
    here = module if module in packages else module.rpartition(".")[0]  # the package relative imports start from
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = here.split(".")[:len(here.split(".")) - (node.level - 1)]
          base = ".".join(anchor + ([base] if base else []))
        # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
      elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        targets = [node.args[0].value]
      for t in targets:
        if t == PACKAGE or t.startswith(PACKAGE + "."):
          target = resolve(t)
          if target and target != module:
            edges.setdefault(target, node.lineno)
    graph[module] = edges
  return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """One cycle (a list of modules, the first repeated at the end) per strongly connected component with one."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def connect(v):  # Tarjan's algorithm
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, {}):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(_path_within(graph, set(component)))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def _path_within(graph, component: set[str]) -> list[str]:
  """A cycle through the component's first module, found by breadth-first search inside the component."""
  start = min(component)
  parent, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v]):
        if w == start:
          path = [v]
          while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
          return path[::-1] + [start]
        if w in component and w not in parent:
          parent[w] = v
          nxt.append(w)
    frontier = nxt
  return sorted(component)


def layer_violations(root) -> list[str]:
  """'module:line imports target (layer i > layer j)' for every upward import; modules LAYERS lacks, too."""
  root = pathlib.Path(root)
  layer = {u: i for i, units in enumerate(LAYERS) for u in units}
  graph = import_graph(root)
  out = [f"{m} is in no layer: add {unit(m)!r} to LAYERS in tests/test_layers.py" for m in sorted(graph)
         if unit(m) not in layer]
  for module, edges in sorted(graph.items()):
    for target, line in sorted(edges.items()):
      u, v = unit(module), unit(target)
      if u in layer and v in layer and layer[v] > layer[u]:
        out.append(f"{module}:{line} imports {target}, a layer above ({v!r} in layer {layer[v]}, "
                   f"{u!r} in layer {layer[u]})")
  return out


def test_no_import_cycle():
  found = cycles(import_graph(ROOT))
  assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_upward_import():
  found = layer_violations(ROOT)
  assert not found, "\n".join(found)


def test_layers_name_each_unit_once():
  units = [u for units in LAYERS for u in units]
  assert len(units) == len(set(units))


def test_the_checks_see_what_they_must(tmp_path):
  """A cycle through a function-level import and an upward `from jaxtrain import x` are both caught."""
  pkg = tmp_path / "jaxtrain"
  (pkg / "data").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "config.py").write_text("def f():\n  from jaxtrain import optim  # upward, and a cycle\n")
  (pkg / "model.py").write_text("from jaxtrain import config as cfg_lib\n")
  (pkg / "optim.py").write_text("import jaxtrain.model\n")
  (pkg / "checkpoint.py").write_text("import importlib\nfrom jaxtrain.data import tokenizer\n"
                                     "importlib.import_module('jaxtrain.optim')\n")
  (pkg / "data" / "__init__.py").write_text("from .tokenizer import make\n")
  (pkg / "data" / "tokenizer.py").write_text("from jaxtrain import config, __version__\n")
  graph = import_graph(pkg)
  assert graph["jaxtrain.config"] == {"jaxtrain.optim": 2}
  assert graph["jaxtrain.optim"] == {"jaxtrain.model": 1}
  assert graph["jaxtrain.checkpoint"] == {"jaxtrain.data.tokenizer": 2, "jaxtrain.optim": 3}
  assert graph["jaxtrain.data"] == {"jaxtrain.data.tokenizer": 1}
  assert graph["jaxtrain.data.tokenizer"] == {"jaxtrain.config": 1, "jaxtrain": 1}  # __version__: the package
  assert cycles(graph) == [["jaxtrain.config", "jaxtrain.optim", "jaxtrain.model", "jaxtrain.config"]]
  assert layer_violations(pkg) == [
      "jaxtrain.config:2 imports jaxtrain.optim, a layer above ('optim' in layer 3, 'config' in layer 0)"]
