"""The grokking tasks' builders, the paper's models and the full-batch trainer (arXiv 2501.04697)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import grokking
from jaxtrain.data import grokking as tasks


@pytest.mark.parametrize("op,fn", [("add", lambda a, b: (a + b) % 23), ("sub", lambda a, b: (a - b) % 23),
                                   ("mul", lambda a, b: (a * b) % 23)])
def test_modular_splits(data_dir, tmp_path, op, fn):
  d = tasks.load_modular(op, p=23, train_fraction=0.4, seed=0, data_dir=data_dir)
  tr, te = d["train"], d["test"]
  assert len(tr["labels"]) == int(0.4 * 23 * 23) == 211 and len(te["labels"]) == 23 * 23 - 211
  pairs = lambda s: {tuple(x) for x in s["inputs"]}
  assert not pairs(tr) & pairs(te)                                      # disjoint
  assert pairs(tr) | pairs(te) == {(a, b) for a in range(23) for b in range(23)}  # all p² pairs
  for s in (tr, te):
    np.testing.assert_array_equal(s["labels"], fn(s["inputs"][:, 0], s["inputs"][:, 1]))
  again = tasks.load_modular(op, p=23, train_fraction=0.4, seed=0, data_dir=str(tmp_path))  # built afresh
  np.testing.assert_array_equal(again["train"]["inputs"], tr["inputs"])  # deterministic
  other = tasks.load_modular(op, p=23, train_fraction=0.4, seed=1, data_dir=data_dir)
  assert pairs(other["train"]) != pairs(tr)                             # the seed picks the split


def test_modular_paper_sizes():
  train, test = tasks.modular_split(113, 0.4, seed=0)
  assert (len(train), len(test)) == (5107, 7662)                        # the paper's 40% of 113²


def test_sparse_parity(data_dir, tmp_path):
  d = tasks.load_parity(n_bits=12, k=3, num_samples=300, train_fraction=0.5, seed=0, data_dir=data_dir)
  tr, te = d["train"], d["test"]
  assert tr["inputs"].shape == (150, 12) and te["inputs"].shape == (150, 12)
  rows = [tuple(r) for s in (tr, te) for r in s["inputs"]]
  assert len(set(rows)) == 300                                          # distinct, so splits are disjoint
  for s in (tr, te):
    np.testing.assert_array_equal(s["labels"], s["inputs"][:, :3].sum(1) % 2)
  assert 0.3 < tr["labels"].mean() < 0.7
  again = tasks.load_parity(n_bits=12, k=3, num_samples=300, train_fraction=0.5, seed=0, data_dir=str(tmp_path))
  np.testing.assert_array_equal(again["test"]["inputs"], te["inputs"])
  with pytest.raises(ValueError, match="distinct"):
    tasks.parity_samples(3, 2, 9, seed=0)


def test_mlp_is_the_one_hot_mlp():
  """The gathered first layer equals the paper's matmul on concatenated one-hots; no biases."""
  c = grokking.config(p=11, width=16)
  graphdef, params = grokking.make_model(c, jax.random.key(0))
  assert {k: v.shape for k, v in params.items()} == {"w1": (22, 16), "w2": (16, 16), "w3": (16, 11)}
  bound = 1 / np.sqrt(22)
  assert np.abs(params["w1"]).max() <= bound and np.abs(params["w1"]).max() > 0.9 * bound  # U(±1/√fan_in)
  x = jnp.array([[0, 0], [3, 7], [10, 10]])
  one_hot = jnp.concatenate([jax.nn.one_hot(x[:, 0], 11), jax.nn.one_hot(x[:, 1], 11)], 1)
  model = nnx.merge(graphdef, params)
  dense = grokking.MLP(22, 16, 11, bias=False, vocab=None, rngs=nnx.Rngs(0))
  nnx.update(dense, nnx.state(model))
  np.testing.assert_allclose(model(x), dense(one_hot), rtol=1e-6, atol=1e-6)


def test_transformer_trains_with_dropout(data_dir):
  c = grokking.config(p=7, model="transformer", d_model=16, num_heads=2, mlp_dim=32, steps=4, log_every=2,
                      data_dir=data_dir, lr=1e-3, b2=0.999, eps=1e-8)
  graphdef, params = grokking.make_model(c, jax.random.key(0))
  x = jnp.array([[1, 2], [3, 4]])

  @jax.jit
  def forward(key):
    model = nnx.merge(graphdef, params)
    return model(x), model(x), model(x, key=key)

  plain, again, dropped = forward(jax.random.key(1))
  assert plain.shape == (2, 7)
  np.testing.assert_array_equal(plain, again)                           # no key: no dropout
  assert not np.allclose(plain, dropped)                                # a key: dropout on
  h = grokking.train(c, verbose=False)
  assert np.all(np.isfinite(h["loss"])) and h["eval"]["step"].tolist() == [0, 2, 4]


def test_stablemax_float64_in_the_trainer(data_dir):
  c = grokking.config(p=11, output="stablemax", loss_dtype="float64", orthograd=True, steps=10, log_every=5,
                      data_dir=data_dir)
  h = grokking.train(c, verbose=False)
  assert len(h["loss"]) == 10 and np.all(np.isfinite(h["loss"]))
  assert h["sc_fraction"].max() == 0 and h["weight_norm"][0] > 0
  assert {"weight_norm/w1", "grad_weight_cos/w3"} <= set(h)


def test_orthograd_adamw_generalizes(data_dir):
  """⊥AdamW (the paper's Fig. 1 settings) reaches ≥95% test accuracy within 200 full-batch steps; AdamW does not."""
  common = dict(p=31, train_fraction=0.7, lr=0.01, b2=0.999, eps=1e-8, steps=200, log_every=50,
                data_dir=data_dir)
  ortho = grokking.train(grokking.config(orthograd=True, **common), verbose=False)
  plain = grokking.train(grokking.config(orthograd=False, **common), verbose=False)
  assert ortho["eval"]["train_accuracy"][-1] == 1 and plain["eval"]["train_accuracy"][-1] == 1
  assert grokking.first_step_at(ortho, "test_accuracy", 0.95) is not None, ortho["eval"]["test_accuracy"]
  assert plain["eval"]["test_accuracy"].max() < 0.2
