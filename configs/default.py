"""The main job: a small LLaMA-style model on the embedded corpus (the Python standard library's source).

Finishes in a few minutes on a 2-core CPU:

  python -m jaxtrain --config=configs/default.py --workdir=runs/default
"""

from jaxtrain.config import base


def get_config(arg=None):
  del arg
  c = base()
  c.model.update(d_model=128, num_layers=4, num_heads=4, mlp_dim=384, max_seq_len=256)
  c.data.update(name="pystdlib", seq_len=128)
  c.train.update(steps=600, global_batch=16, log_every=25, eval_every=200, eval_batches=8,
                 checkpoint_every=200)
  c.optim.update(lr=3e-3, warmup_steps=60, schedule="cosine")
  return c
