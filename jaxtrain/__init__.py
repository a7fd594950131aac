"""jaxtrain: config-driven transformer training in JAX, for studying training numerics and architecture.

In a notebook (README "In a notebook"): `import jaxtrain as jt; run = jt.load_run("runs/default")`;
`jt.analysis` and `jt.plots` are the analysis and plotting modules. They are imported on first use (module
`__getattr__`), so `import jaxtrain` alone imports nothing, and `import jaxtrain.losses` does not pull in the trainer.

Modules:

  jaxtrain.config       the config schema (`base()`), `load()`, `check()`
  jaxtrain.preflight    `validate(config, num_devices, ...)`: every check before compiling
  jaxtrain.train        the loop: `check`, `build(config, mesh)` -> a `Program` of jitted steps, `train(config, workdir)`
  jaxtrain.step         the pure steps: state init, train / eval / diagnostics steps, microbatching
  jaxtrain.loop         `due(step, ...)` -> `Actions`: what the loop does at each step (log, eval, save, stop, grow)
  jaxtrain.model        the decoder-only transformer (Flax NNX, used functionally)
  jaxtrain.placement    where the norm goes: Pre/Post/Mix/Peri-LN, LayerNorm Scaling
  jaxtrain.losses       cross-entropy with softmax or StableMax, in float32 or float64
  jaxtrain.stablemax    StableMax ("Grokking at the Edge of Numerical Stability")
  jaxtrain.munit        μnit Scaling's parametrization (unit init, static multipliers)
  jaxtrain.fp8          FP8 matmuls: static (μS) and delayed scaling, saturating casts, FP8 health statistics
  jaxtrain.optim        AdamW or Lion, per-group learning rates (μS, SP), weight decay, the schedule
  jaxtrain.orthograd    ⊥Grad as an optax transformation
  jaxtrain.collapse     Softmax Collapse metrics
  jaxtrain.diagnostics  what the diagnostics step computes: per-layer gradient norms, FP8 health
  jaxtrain.data         TFDS builders, the token cache and host-count-independent batches
  jaxtrain.growth       growth operators in depth and width, growth events mid-run (`python -m jaxtrain.grow`: offline)
  jaxtrain.metrics      `read_metrics(workdir)`
  jaxtrain.run          `load_run(workdir)` -> a `Run`: config, metrics, checkpoints, `model(step)`, `generate`
  jaxtrain.sample       sampling: temperature, top-k, greedy
  jaxtrain.analysis     a loaded model on a batch: depth diagnostics, per-layer statistics, collapse, logit lens
  jaxtrain.plots        curves of several runs, per-layer diagnostics
  jaxtrain.sweep        the runner: a list of points (or a grid) as subprocesses with resume (`python -m jaxtrain.sweep`)
  jaxtrain.report       the studies' report library: tables, summary.json, mean and spread over seeds, verdicts

The grokking tasks' full-batch trainer is a package of its own, `grokking` (beside jaxtrain, not inside it).
"""

__version__ = "0.1.0"

_LAZY = {"load_run": ("jaxtrain.run", "load_run"), "Run": ("jaxtrain.run", "Run"), "Model": ("jaxtrain.run", "Model")}
_MODULES = ("analysis", "plots", "run", "sample", "config", "metrics", "data", "model", "train")


def __getattr__(name: str):
  """`jt.load_run`, `jt.analysis`, `jt.plots`, ...: imported when first used (PEP 562)."""
  import importlib  # pylint: disable=import-outside-toplevel
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  if name in _MODULES:
    return importlib.import_module(f"jaxtrain.{name}")
  raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY) + list(_MODULES))
