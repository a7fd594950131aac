"""Lion (jaxtrain/optim.py, optim.name=lion) over several steps against a straightforward numpy Lion.

Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023, arXiv 2302.06675), Algorithm 2 and
google/automl's lion/lion_optax.py:

    u_t = sign(β1·m_{t-1} + (1 − β1)·g_t)        the update interpolates with β1
    m_t = β2·m_{t-1} + (1 − β2)·g_t              the momentum tracks with β2

Lion's first update is sign(g) whatever β1 and β2 are, and so is every update under a constant gradient; so these
tests feed a fresh random gradient at every step, for several steps, and check the parameters after each one: with
β1 and β2 swapped, or the momentum updated before the sign is taken, they fail. The decay is μS's fully
decoupled one (weight_decay_mode=independent: p ← p·(1 − λ·s(t)), Wortsman et al. 2024) and the learning rates
μS's per-group rule (optim.lr_rule=mus: hidden η·√(fan_in at d_base / fan_in), the rest η).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import model, optim

STEPS = 6


def reference_lion(p0, grads, *, lrs, b1, b2, lam, schedule):
  """Numpy Lion with fully decoupled weight decay: the parameters after each step, {path: [STEPS + 1 arrays]}.

  lrs: {path: the group's peak rate}, lam: {path: λ, 0 where not decayed}, schedule: s(t) in [0, 1] per step.
  """
  out = {}
  for k, p in p0.items():
    p, m, seq = np.asarray(p, np.float64), np.zeros(p.shape), [np.asarray(p, np.float64)]
    for t, g in enumerate(grads):
      g = np.asarray(g[k], np.float64)
      u = np.sign(b1 * m + (1 - b1) * g)
      m = b2 * m + (1 - b2) * g
      p = p * (1 - lam[k] * schedule[t]) - lrs[k] * schedule[t] * u
      seq.append(p)
    out[k] = seq
  return out


@pytest.mark.parametrize("lr_rule", ["none", "mus"])
def test_lion_tracks_a_numpy_lion_over_several_steps(tiny, lr_rule):
  c = tiny(optim__name="lion", optim__lr=1e-2, optim__weight_decay=1e-3, optim__weight_decay_mode="independent",
           optim__lr_rule=lr_rule, optim__clip_norm=0.0, optim__warmup_steps=2, optim__schedule="constant",
           model__parametrization="mus" if lr_rule == "mus" else "sp", model__mus__d_base=16,
           **({"model__norm__placement": "res_post", "model__tie_embeddings": False} if lr_rule == "mus" else {}))
  _, _, axes = model.abstract(c.model)
  params = model.init(c.model, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)
  grads = []
  for t in range(STEPS):  # a fresh gradient every step: a constant one makes every Lion update sign(g)
    keys = jax.random.split(jax.random.key(100 + t), len(leaves))
    grads.append(treedef.unflatten([jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]))
  tx, _ = optim.make(c, axes)
  state, p, got = tx.init(params), params, [params]
  for t in range(STEPS):
    updates, state = tx.update(grads[t], state, p, step=jnp.int32(t))
    p = optax.apply_updates(p, updates)
    got.append(p)

  flat = lambda tree, **kw: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree, **kw)}
  info = flat(model.param_info(c.model), is_leaf=model.is_info)
  d, d_base = c.model.d_model, c.model.mus.d_base
  # μS's per-group rates, written out: hidden matrices η·√(d_base/d) here (every hidden fan-in scales with d), the
  # embedding, head and norms η. Decay: every parameter but the norms' (jaxtrain's decay mask), λ fixed.
  lrs = {k: 1e-2 * ((d_base / d) ** 0.5 if lr_rule == "mus" and i.role == "hidden" else 1.0) for k, i in info.items()}
  lam = {k: 0.0 if i.role == "norm" else 1e-3 for k, i in info.items()}
  want = reference_lion(flat(params), [flat(g) for g in grads], lrs=lrs, b1=0.9, b2=0.99, lam=lam,
                        schedule=[0.0, 0.5] + [1.0] * (STEPS - 2))  # linear warmup over 2 steps, then constant
  for t in range(1, STEPS + 1):
    for k, v in flat(got[t]).items():
      np.testing.assert_allclose(v, want[k][t], rtol=1e-6, atol=1e-7, err_msg=f"step {t}: {k}")


def test_swapped_betas_would_be_caught():
  """The reference itself tells β1 from β2 within a few steps (so the test above can fail on a swap)."""
  rng = np.random.default_rng(0)
  p0 = {"w": rng.normal(size=(64, 64))}
  grads = [{"w": rng.normal(size=(64, 64))} for _ in range(STEPS)]
  kw = dict(lrs={"w": 1e-2}, lam={"w": 0.0}, schedule=[1.0] * STEPS)
  right = reference_lion(p0, grads, b1=0.9, b2=0.99, **kw)["w"]
  swapped = reference_lion(p0, grads, b1=0.99, b2=0.9, **kw)["w"]
  np.testing.assert_array_equal(right[1], swapped[1])  # step 1 is sign(g) either way
  assert np.mean(right[STEPS] != swapped[STEPS]) > 0.1  # later steps differ in many entries
