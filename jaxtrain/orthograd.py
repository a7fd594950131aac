"""⊥Grad: remove the part of each gradient that only scales its weights.

Prieto et al., "Grokking at the Edge of Numerical Stability" (ICLR 2025,
arXiv 2501.04697), sec. 5. After a classifier fits its training set, the
gradient aligns with the weights (for a positively homogeneous network the
loss falls fastest by scaling θ, which only scales the logits: naive loss
minimization), and training drifts into Softmax Collapse instead of
generalizing. ⊥Grad projects every parameter's gradient onto the hyperplane
orthogonal to that parameter, then (as the official `orthograd.py` does; the
paper's equation omits it) rescales it to the original norm:

    g⊥ = g - (⟨w, g⟩ / (⟨w, w⟩ + 1e-30)) · w
    g̃  = g⊥ · ‖g‖ / (‖g⊥‖ + 1e-30)

per parameter, flattened, in float32. `g̃` feeds the base optimizer:

    optax.chain(orthograd(), optax.adamw(lr, ...))          # ⊥AdamW
    optax.chain(orthograd(), optax.sgd(lr, momentum=0.8))   # ⊥SGD

The projection unit is one parameter, as in the official code (one
`nn.Parameter`) and every LLaMA implementation: a tensor that holds several
parameters is projected slice by slice along its `units` axes. jaxtrain has
two such tensors: the scanned blocks stack one tensor per layer (axis
`layers`), and SwiGLU's fused `wi` holds [gate, up] (gate and up are two
parameters everywhere else; projecting them as one vector changes the update,
0.69 relative after 3 ⊥AdamW steps). `jaxtrain.optim` passes both.

Precision: g and w are divided by their max |·| (per unit) before the
reductions; the projection is invariant to the scale of w and linear in g,
so the result is the same, but the float32 sums of squares no longer
underflow (XLA on CPU flushes subnormals: plain sums were 1e-3 off for
gradient entries ~1e-19 and exactly 0 at ~1e-20). The 1e-30 guards then act
on the normalized tensors, where they only matter for an exactly zero or
exactly parallel gradient (the official code's also stop it from projecting
weights with ‖w‖² ≲ 1e-30; this one projects those too).

Where in a chain: first, on the raw gradient (the official code projects
`p.grad` before the base optimizer's step), and before anything that is not a
gradient (Adam's moments, decoupled weight decay, the learning rate). Relative
to `optax.clip_by_global_norm` the order does not matter: the rescale keeps
every unit's norm, hence the global norm, and the projection commutes with a
positive scale; `chain(clip_by_global_norm(c), orthograd(), adamw(...))`
reads best. AdamW's decoupled weight decay is added after the projection, so
⊥AdamW with weight decay still shrinks the weights.

Sharding: the inner products and norms are plain reductions over each unit
(no reshapes or transposes); under `jit` with FSDP-sharded parameters GSPMD
turns them into all-reduces, so the result is the same as on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

EPS = 1e-30  # the official code's, in both denominators


def project(g: jax.Array, w: jax.Array, eps: float = EPS, units: tuple[int, ...] = ()) -> jax.Array:
  """⊥Grad of g against w, in g's dtype; each index along the `units` axes is a parameter of its own.

  With units=() the whole tensor is one parameter; units=(0,) projects each
  slice g[i] against w[i] (a stack of layers).
  """
  units = tuple(a % g.ndim for a in units)
  axes = tuple(a for a in range(g.ndim) if a not in units)  # reduced over: one parameter's entries
  dot = lambda a, b: jnp.sum(a * b, axis=axes, keepdims=True)

  def unit_max(x):
    m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    return jnp.where(m > 0, m, 1.0)  # an all-zero unit stays zero

  g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
  g_max = unit_max(g32)
  g1, w1 = g32 / g_max, w32 / unit_max(w32)  # max |·| = 1: the sums below neither underflow nor overflow
  g_perp = g1 - (dot(w1, g1) / (dot(w1, w1) + eps)) * w1
  g_perp = g_perp * (jnp.sqrt(dot(g1, g1)) / (jnp.sqrt(dot(g_perp, g_perp)) + eps))
  return (g_perp * g_max).astype(g.dtype)


def orthograd(eps: float = EPS, stacked=None, units=None) -> optax.GradientTransformation:
  """The ⊥Grad gradient transformation; needs `params` in `update`. Stateless.

  `units`: None, or a pytree like the parameters of tuples of axes; each index
  along those axes is a parameter of its own, projected on its own (see
  `project`). `stacked`: None, or a pytree of bools like the parameters; True
  adds axis 0 to that tensor's units (jaxtrain's scanned `layers` axis).
  Without either, every tensor is one parameter.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("orthograd needs the parameters: call tx.update(grads, state, params)")
    u = units if units is not None else jax.tree.map(lambda _: (), params)
    if stacked is not None:
      u = jax.tree.map(lambda a, s: tuple(sorted({0, *a})) if s else a, u, stacked, is_leaf=_is_axes)
    proj = lambda g, w, a: project(g, w, eps, a)
    return jax.tree.map(proj, updates, params, u), state

  return optax.GradientTransformation(init_fn, update_fn)


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, int) for a in x)
