"""A grokking run's settings: task, model, output and loss precision, optimizer, length (the paper's defaults)."""

from __future__ import annotations

import ml_collections

from jaxtrain import config as cfg_lib

OPT_DTYPES = ("float32", "float64", "float32_ieee")


def config(**overrides) -> ml_collections.ConfigDict:
  """A grokking run: task, model, output and loss precision, optimizer, length. Defaults: the paper's."""
  c = ml_collections.ConfigDict(dict(
      task="modular",          # modular | parity
      op="add",                # modular: add | sub | mul
      p=113,
      train_fraction=None,     # None: the paper's, 0.4 for modular arithmetic, 0.5 for parity
      n_bits=43, k=3, num_samples=2000,  # parity
      data_seed=0,             # the train/test split
      data_dir="~/.cache/jaxtrain/tensorflow_datasets",
      model="mlp",             # mlp | transformer
      width=200,               # MLP hidden width
      bias=None,               # MLP biases; None: the paper's, none for modular arithmetic, biases for parity
      d_model=128, num_heads=4, mlp_dim=2048, dropout=0.1,  # transformer
      output="softmax",        # softmax | stablemax
      loss_dtype="float32",    # float32 | float64 (without x64 mode; see jaxtrain.losses)
      optimizer="adamw",       # adamw | sgd
      orthograd=False,         # ⊥Grad before the optimizer
      lr=0.01,
      b1=0.9,
      b2=0.99,
      eps=1e-25,               # the official default; optax's 1e-8 damps the tiny late gradients
      weight_decay=0.0,        # AdamW: decoupled (lr·wd·θ); SGD: L2 added to the gradient
      momentum=0.0,            # SGD
      opt_dtype="float32",     # float32 | float64 | float32_ieee: Adam's state and arithmetic (x64 scoped to train)
      steps=1000,
      log_every=100,           # steps per jitted chunk; test metrics after each
      seed=0,                  # parameter init and dropout
  ))
  for key in overrides:
    if key not in c:
      raise cfg_lib.unknown_key(key, list(c), schema="grokking.config()")
  c.update(overrides)
  if c.opt_dtype not in OPT_DTYPES:
    raise cfg_lib.ConfigError(f"opt_dtype={c.opt_dtype!r}: use one of {', '.join(OPT_DTYPES)}")
  if c.opt_dtype != "float32" and c.optimizer != "adamw":
    raise cfg_lib.ConfigError(f"opt_dtype={c.opt_dtype} is for Adam's state; optimizer={c.optimizer!r} has none: "
                              "use optimizer=adamw or opt_dtype=float32")
  c.lock()  # a later typo'd assignment is an error too
  return c
