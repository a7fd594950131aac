"""Muon: Newton–Schulz orthogonalized Nesterov momentum for the hidden matrices (optim.name=muon).

Keller Jordan's optimizer (blog: https://kellerjordan.github.io/posts/muon/, code:
https://github.com/KellerJordan/Muon and modded-nanogpt): each hidden weight matrix W (fan-in m × fan-out n)
moves along the momentum M orthogonalized by a quintic Newton–Schulz iteration,

    X ← M/‖M‖_F;  5×: A = X·Xᵀ, X ← a·X + (b·A + c·A²)·X     (a, b, c) = (3.4445, −4.7750, 2.0315)

(on the shorter side: X is transposed when m > n), which drives every singular value of M toward ~1. The
embedding, the LM head and the norm gains keep AdamW, as Muon's authors recommend (optim.py partitions the
parameters by their declared role). The iteration and the momentum are optax's (`optax.contrib.scale_by_muon`):
Nesterov momentum of the gradient's exponential average with β = 0.95, bias-corrected (at step 1 it is Keller's
update exactly; the bias correction mixes gradient and momentum slightly differently during the first ~1/(1−β)
steps, then the two agree).

What is a matrix here (`matrix_dims`): a stacked block tensor [L, ...] is L matrices, one per layer; SwiGLU's
wi [D, 2, F] is two (gate and up: FUSED axes are batch axes too); the attention projections [D, H, K] and
[H, K, D] are the matrices [D, H·K] and [H·K, D]: the fan-in axes (those summed over, `model.ParamInfo.fan_in`)
are the rows, the rest the columns. optax vmaps the iteration over the batch axes.

The update's scale (`optim.muon.scale`), per matrix of fan-in m and fan-out n:

    moonlight   0.2·√max(m, n)     Liu et al. 2025, "Muon is Scalable for LLM Training" (arXiv 2502.16982, the
                                   Moonlight model; code https://github.com/MoonshotAI/Moonlight): the update's RMS
                                   is ~0.2, AdamW's typical one, so AdamW's learning rate and weight decay carry over
    keller      √max(1, n/m)       Keller Jordan's code (fan-out/fan-in of the PyTorch [out, in] weight); its rates
                                   are ~10× AdamW's (0.02–0.05): set optim.muon.lr_scale
    none        1                  the bare orthogonalized update (spectral norm ~1)

The scale multiplies the update only: weight decay goes with the learning rate, p ← p·(1 − η·λ), as in both codes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

KELLER_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: the largest slope at 0 that still converges
SCALES = ("moonlight", "keller", "none")
MOONLIGHT_RMS = 0.2  # Liu et al. 2025, Sec. 2.2: "match the update RMS of AdamW", empirically 0.2 to 0.4


class Matrix(NamedTuple):
  """How one hidden tensor is read as a batch of matrices: axes of the full tensor (layers axes included)."""
  rows: tuple[int, ...]     # the fan-in axes (the contraction of the forward matmul)
  cols: tuple[int, ...]     # the fan-out axes
  fan_in: int
  fan_out: int

  def dimension_numbers(self) -> contrib.MuonDimensionNumbers:
    """optax's spec: every other axis (layers, fused gate/up) is a batch axis, orthogonalized on its own."""
    return contrib.MuonDimensionNumbers(reduction_axis=self.rows, output_axis=self.cols)


def matrix_dims(shape, fan_in: int, batch_axes, name: str) -> Matrix:
  """The rows and columns of a hidden tensor of `shape` whose forward pass sums over `fan_in` inputs.

  batch_axes: axes that index separate matrices (the stacked `layers` axis, SwiGLU's [gate, up]). Every layer
  in jaxtrain contracts its weight's leading per-layer axes ('btd,dhk->bthk', 'bthk,hkd->btd'), so the rows are
  the shortest run of leading non-batch axes whose sizes multiply to fan_in; the remaining axes are the columns.
  """
  rest = [a for a in range(len(shape)) if a not in batch_axes]
  size = 1
  for i, a in enumerate(rest):
    size *= shape[a]
    if size == fan_in:
      rows, cols = tuple(rest[:i + 1]), tuple(rest[i + 1:])
      if cols:
        return Matrix(rows, cols, fan_in, math.prod(shape[c] for c in cols))
      break
    if size > fan_in:
      break
  raise ValueError(f"optim.name=muon: hidden parameter {name} of shape {tuple(shape)} is not a matrix with fan-in "
                   f"{fan_in} in its leading axes; give it role 'norm' or 'embedding' in jaxtrain/model.py (AdamW)")


def update_scale(convention: str, fan_in: int, fan_out: int) -> float:
  """The constant each orthogonalized update of a fan_in × fan_out matrix is multiplied by (`optim.muon.scale`)."""
  if convention == "moonlight":
    return MOONLIGHT_RMS * math.sqrt(max(fan_in, fan_out))
  if convention == "keller":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if convention == "none":
    return 1.0
  raise ValueError(f"unknown optim.muon.scale {convention!r}; choose one of {SCALES}")


def scale_by_muon(matrices, *, beta: float, ns_steps: int, nesterov: bool) -> optax.GradientTransformation:
  """Orthogonalized momentum for the tensors where `matrices` (a tree like the params) holds a `Matrix`.

  Meant as the Muon branch of `optax.partition`: the other leaves arrive masked (optax.MaskedNode), and
  `matrices` holds None there.
  """
  is_leaf = lambda x: x is None or isinstance(x, Matrix)

  def dims(updates):  # optax resolves the spec against the (masked) tree it is given
    return jax.tree.map(lambda m, u: u if m is None else m.dimension_numbers(), matrices, updates, is_leaf=is_leaf)

  return contrib.scale_by_muon(ns_coeffs=KELLER_COEFFS, ns_steps=ns_steps, beta=beta, nesterov=nesterov,
                               weight_dimension_numbers=dims)


def scale_by_shape(matrices, convention: str) -> optax.GradientTransformation:
  """Each orthogonalized update times `update_scale` of its matrix (stateless; the Muon branch, after the momentum)."""
  is_leaf = lambda x: x is None or isinstance(x, Matrix)
  factors = jax.tree.map(lambda m: None if m is None else update_scale(convention, m.fan_in, m.fan_out), matrices,
                         is_leaf=is_leaf)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda f, u: u if f is None else u * jnp.asarray(f, u.dtype), factors, updates,
                        is_leaf=lambda x: x is None), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
