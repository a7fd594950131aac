"""μnit Scaling's parametrization: unit-variance weights and static multipliers.

Narayan, Gupta, Paul, Blalock; "μnit Scaling: Simple and Scalable FP8 LLM Training" (ICML 2025, arXiv 2502.05967),
Table 2 and §2.3; spec: shared/research/munit_fp8.md §0, §1.2-1.4.

    weight                 init          output multiplier
    embedding              N(0, 1)       embed_mult (the paper: 1)
    hidden linear W_KN     N(0, 1)       1/√K            (a static constant inside the matmul, never folded into W)
    LM head (untied)       N(0, 1)       head_mult/K     (the paper: 1/fan_in)

With unit-variance inputs every hidden linear's output then has unit variance, and FP8 casts need no scales.
The residual is Res-Post-LN with a fixed τ, x ← √(1−τ)·x + √τ·LN(f(x)) (placement `res_post`,
`model.norm.res_post_tau`); attention is softmax(q·kᵀ/√K)·v (`model.mus.attn_scale=inv` gives μP's 1/K).
Under `sp` every rule here is the identity: the model is exactly the standard one.
"""

from __future__ import annotations


def init_std(m, sp_std: float) -> float:
  """The std a weight is drawn with: 1 under μS, else the standard init's `sp_std`."""
  return 1.0 if m.parametrization == "mus" else sp_std


def multiplier(m, role: str, fan_in: int) -> float:
  """The static output multiplier of a linear with this role ('hidden' | 'head') and fan-in: 1 under SP."""
  if m.parametrization != "mus":
    return 1.0
  if role == "hidden":
    return fan_in**-0.5
  if role == "head":
    return m.mus.head_mult / fan_in
  raise ValueError(f"no μS multiplier for role {role!r}")


def embed_multiplier(m) -> float:
  return m.mus.embed_mult if m.parametrization == "mus" else 1.0


def query_multiplier(m, head_dim: int) -> float:
  """A factor on q so that the attention's fixed 1/√K becomes the configured scale (1 for the standard 1/√K)."""
  if m.parametrization == "mus" and m.mus.attn_scale == "inv":
    return head_dim**-0.5
  return 1.0
