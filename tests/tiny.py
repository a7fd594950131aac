"""The tests' tiny config (importable without touching JAX's device setup)."""

from jaxtrain import config as cfg_lib


def tiny_config(data_dir, **overrides):
  """A model small enough that a step takes milliseconds, on the embedded corpus."""
  c = cfg_lib.base()
  c.model.update(d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=64)
  c.data.update(data_dir=data_dir, seq_len=32)
  c.train.update(steps=20, global_batch=8, log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
                 progress="log", peak_flops=1e11)  # no matmul timing in tests
  c.optim.update(lr=3e-3, warmup_steps=5)
  for key, value in overrides.items():
    cfg_lib.set_field(c, key, repr(value) if not isinstance(value, str) else value)
  return c
