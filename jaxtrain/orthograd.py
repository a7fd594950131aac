"""⊥Grad: remove the part of each gradient that only scales its weights.

Prieto et al., "Grokking at the Edge of Numerical Stability" (ICLR 2025,
arXiv 2501.04697), sec. 5. After a classifier fits its training set, the
gradient aligns with the weights (for a positively homogeneous network the
loss falls fastest by scaling θ, which only scales the logits: naive loss
minimization), and training drifts into Softmax Collapse instead of
generalizing. ⊥Grad projects every parameter tensor's gradient onto the
hyperplane orthogonal to that tensor, then (as the official `orthograd.py`
does; the paper's equation omits it) rescales it to the original norm:

    g⊥ = g - (⟨w, g⟩ / (⟨w, w⟩ + 1e-30)) · w
    g̃  = g⊥ · ‖g‖ / (‖g⊥‖ + 1e-30)

per tensor, flattened, in float32. `g̃` feeds the base optimizer:

    optax.chain(orthograd(), optax.adamw(lr, ...))          # ⊥AdamW
    optax.chain(orthograd(), optax.sgd(lr, momentum=0.8))   # ⊥SGD

Where in a chain: first, on the raw gradient (the official code projects
`p.grad` before the base optimizer's step), and before anything that is not a
gradient (Adam's moments, decoupled weight decay, the learning rate). Relative
to `optax.clip_by_global_norm` the order does not matter: the rescale keeps
every tensor's norm, hence the global norm, and the projection commutes with a
positive scale; `chain(clip_by_global_norm(c), orthograd(), adamw(...))`
reads best. AdamW's decoupled weight decay is added after the projection, so
⊥AdamW with weight decay still shrinks the weights.

Sharding: the inner products and norms are plain reductions over each whole
tensor (or each layer's slice of a stacked one); under `jit` with
FSDP-sharded parameters GSPMD turns them into all-reduces, so the result is
the same as on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

EPS = 1e-30  # the official code's, in both denominators


def project(g: jax.Array, w: jax.Array, eps: float = EPS) -> jax.Array:
  """One tensor's ⊥Grad: g without its component along w, rescaled to ‖g‖; g's dtype."""
  g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
  g_perp = g32 - (jnp.sum(w32 * g32) / (jnp.sum(w32 * w32) + eps)) * w32
  g_perp = g_perp * (jnp.sqrt(jnp.sum(g32 * g32)) / (jnp.sqrt(jnp.sum(g_perp * g_perp)) + eps))
  return g_perp.astype(g.dtype)


def orthograd(eps: float = EPS, stacked=None) -> optax.GradientTransformation:
  """The ⊥Grad gradient transformation; needs `params` in `update`. Stateless.

  `stacked`: None, or a pytree of bools like the parameters; True marks a
  tensor whose leading axis stacks independent tensors (jaxtrain's scanned
  `layers` axis), each slice then projected on its own, as the official code
  projects each layer's weight. Without it a stacked tensor is one vector.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("orthograd needs the parameters: call tx.update(grads, state, params)")
    flags = stacked if stacked is not None else jax.tree.map(lambda _: False, params)
    one = lambda g, w: project(g, w, eps)
    proj = lambda g, w, s: jax.vmap(one)(g, w) if s else one(g, w)
    return jax.tree.map(proj, updates, params, flags), state

  return optax.GradientTransformation(init_fn, update_fn)
