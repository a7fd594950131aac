"""A realistic starting point: a ~20-50M-parameter LLaMA-style model.

  python -m jaxtrain --config=configs/lm_small.py --workdir=runs/small          # 'base', ~36M
  python -m jaxtrain --config=configs/lm_small.py:tiny --workdir=runs/tiny      # ~19M
  python -m jaxtrain --config=configs/lm_small.py:medium --workdir=runs/medium  # ~43M

Byte-level tokens on the embedded corpus by default. For a GPU or TPU, add
--config.model.compute_dtype=bfloat16 and raise train.global_batch; for a
subword vocabulary, point data.tokenizer at a SentencePiece .model and set
model.vocab_size to its size (the embeddings then add 2·vocab·d_model parameters).
"""

from jaxtrain.config import ConfigError, base

# (d_model, num_layers, num_heads, num_kv_heads)
SIZES = {
    "tiny": (384, 12, 6, 2),
    "base": (512, 12, 8, 4),
    "medium": (576, 12, 9, 3),
}


def get_config(arg=None):
  size = arg or "base"
  if size not in SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}, e.g. --config=configs/lm_small.py:tiny")
  d, layers, heads, kv = SIZES[size]
  c = base()
  c.model.update(d_model=d, num_layers=layers, num_heads=heads, num_kv_heads=kv, max_seq_len=1024,
                 qk_norm=True, tie_embeddings=False)
  c.data.update(seq_len=512)
  c.train.update(steps=20_000, global_batch=64, log_every=50, eval_every=1000, checkpoint_every=1000)
  c.optim.update(lr=1e-3, warmup_steps=1000, schedule="wsd", decay_fraction=0.2)
  return c
