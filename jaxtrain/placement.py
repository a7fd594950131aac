"""Where the norm goes: how each residual branch of a block is wired to its norms.

A block has two residual branches, f = attention and f = MLP. Layer ℓ (0-based,
L layers) wires each as one of:

    pre       x + f(N(x))                        Pre-LN (Xiong et al. 2020, arXiv 2002.04745)
    post      N(x + f(x))                        Post-LN (Vaswani et al. 2017)
    mix       post if ℓ < k, else pre            Mix-LN (Li, Yin, Liu; ICLR 2025, arXiv 2412.13795)
    peri      x + N_out(f(N_in(x)))              Peri-LN (Kim et al.; ICML 2025, arXiv 2502.02732)
    lns       x + f(N(x) / √(ℓ+1))               LayerNorm Scaling, "The Curse of Depth"
                                                 (Sun et al.; NeurIPS 2025, arXiv 2502.05795)
    res_post  √(1-τ)·x + √τ·N(f(x))              Res-Post-LN with a fixed τ (μnit Scaling)

As in the papers' code: Mix-LN's k, the number of Post-LN layers, is the
official POST_NUM (`mix_post_layers`) or, when that is not given, ⌊α·L⌋ with
α = 0.25 by default (the paper's ratio; α = 0.33 on 24 layers floors to 7, where
the paper's "33%" means 8: give counts as counts); LNS scales both pre-norm
outputs of a block by the same constant 1/√ℓ (ℓ 1-based), never the final norm,
the embedding or the residual; Peri-LN's output norms have a learnable scale
initialized to 1 (optionally frozen); every placement keeps the final norm before
the LM head.

Mix-LN differs between layers, so `layer_kinds` says, per layer, which wiring
applies; the model runs each run of equal kinds under its own `lax.scan`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxtrain import config as cfg_lib

PLACEMENTS = ("pre", "post", "mix", "peri", "lns", "res_post")  # model.norm.placement


def check(config, target: cfg_lib.Target) -> None:  # pylint: disable=unused-argument
  """What the norm placement cannot run with (one line each)."""
  n, num_layers = config.model.norm, config.model.num_layers
  cfg_lib.check_choices(config, {"model.norm.placement": PLACEMENTS})
  cfg_lib.check_unit_interval({"model.norm.mix_post_fraction": n.mix_post_fraction})
  if n.mix_post_layers is not None and not 0 <= n.mix_post_layers <= num_layers:
    raise cfg_lib.ConfigError(f"model.norm.mix_post_layers={n.mix_post_layers} must be in [0, model.num_layers="
                              f"{num_layers}] (or None: ⌊mix_post_fraction·num_layers⌋)")
  if not 0 < n.res_post_tau < 1:
    raise cfg_lib.ConfigError(f"model.norm.res_post_tau={n.res_post_tau} must be in (0, 1)")


def layer_kinds(placement: str, num_layers: int, mix_post_fraction: float = 0.25,
                mix_post_layers: int | None = None) -> list[str]:
  """The wiring of each layer: Mix-LN's first k layers are `post`, the rest `pre`.

  k = `mix_post_layers` (the official POST_NUM) if given, else ⌊α·L⌋ with α = `mix_post_fraction`.
  """
  if placement == "mix":
    # round first: 0.29·100 is 28.999999999999996 in floating point, and ⌊·⌋ of it must be 29
    k = mix_post_layers if mix_post_layers is not None else math.floor(round(mix_post_fraction * num_layers, 9))
    if not 0 <= k <= num_layers:
      raise ValueError(f"Mix-LN with {k} Post-LN layers out of {num_layers}")
    return ["post"] * k + ["pre"] * (num_layers - k)
  return [placement] * num_layers


def segments(kinds: list[str]) -> list[tuple[str, int, int]]:
  """Runs of equal kinds as (kind, first layer, end layer): ['post','pre','pre'] -> [('post',0,1), ('pre',1,3)]."""
  out = []
  for l, kind in enumerate(kinds):
    if out and out[-1][0] == kind:
      out[-1] = (kind, out[-1][1], l + 1)
    else:
      out.append((kind, l, l + 1))
  return out


def has_out_norm(placement: str) -> bool:
  """Only Peri-LN has a second norm per branch, on the branch's output."""
  return placement == "peri"


def residual(kind: str, x, f, norm, out_norm=None, *, layer=0, tau: float = 0.5):
  """One residual branch: x -> x + f(...) wired as `kind`.

  `layer` (0-based, may be a traced scan index) matters only for `lns`.
  """
  if kind == "pre":
    return x + f(norm(x))
  if kind == "post":
    return norm(x + f(x))
  if kind == "peri":
    return x + out_norm(f(norm(x)))
  if kind == "lns":
    scale = jax.lax.rsqrt(jnp.asarray(layer, jnp.float32) + 1.0)
    return x + f((norm(x) * scale).astype(x.dtype))
  if kind == "res_post":
    return (jnp.sqrt(1.0 - tau) * x + jnp.sqrt(tau) * norm(f(x))).astype(x.dtype)
  raise ValueError(f"unknown norm placement {kind!r}; choose one of {PLACEMENTS}")
