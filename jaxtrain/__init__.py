"""jaxtrain: config-driven transformer training in JAX, for studying training numerics and architecture.

Modules a notebook imports (nothing is imported here, so `import jaxtrain.losses`
does not pull in the trainer):

  jaxtrain.config       the config schema (`base()`), `load()`, `validate()`
  jaxtrain.train        `build(config, mesh)` -> a `Program` of jitted steps; `train(config, workdir)`
  jaxtrain.model        the decoder-only transformer (Flax NNX, used functionally)
  jaxtrain.placement    where the norm goes: Pre/Post/Mix/Peri-LN, LayerNorm Scaling
  jaxtrain.losses       cross-entropy with softmax or StableMax, in float32 or float64
  jaxtrain.stablemax    StableMax ("Grokking at the Edge of Numerical Stability")
  jaxtrain.munit        μnit Scaling's parametrization (unit init, static multipliers)
  jaxtrain.fp8          FP8 matmuls: static (μS) and delayed scaling, saturating casts, FP8 health statistics
  jaxtrain.optim        AdamW or Lion, per-group learning rates (μS, SP), weight decay, the schedule
  jaxtrain.orthograd    ⊥Grad as an optax transformation
  jaxtrain.collapse     Softmax Collapse metrics
  jaxtrain.diagnostics  per-layer and checkpoint diagnostics
  jaxtrain.grokking     the grokking tasks' models and full-batch trainer
  jaxtrain.data         TFDS builders, the token cache and host-count-independent batches
  jaxtrain.metrics      `read_metrics(workdir)`
"""

__version__ = "0.1.0"
