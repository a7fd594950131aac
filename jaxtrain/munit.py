"""μnit Scaling's parametrization: unit-variance weights and static multipliers.

Narayan, Gupta, Paul, Blalock; "μnit Scaling: Simple and Scalable FP8 LLM Training" (ICML 2025, arXiv 2502.05967),
Table 2, §2.1-2.3 and A.1.1-A.1.2.

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

from jaxtrain import config as cfg_lib

PARAMETRIZATIONS = ("sp", "mus")
ATTN_SCALES = ("inv_sqrt", "inv")  # q·k/√K (the paper's) | q·k/K (μP's)


def check(config, target: cfg_lib.Target) -> None:  # pylint: disable=unused-argument
  """What the parametrization cannot run with (one line each): μS's residual, untied head and positive knobs."""
  m = config.model
  cfg_lib.check_choices(config, {"model.parametrization": PARAMETRIZATIONS, "model.mus.attn_scale": ATTN_SCALES})
  if m.parametrization == "mus" and m.norm.placement != "res_post":
    raise cfg_lib.ConfigError(
        f"model.parametrization=mus needs model.norm.placement=res_post, not {m.norm.placement!r}")
  if m.parametrization == "mus" and m.tie_embeddings:
    raise cfg_lib.ConfigError(
        "model.parametrization=mus needs model.tie_embeddings=False (embedding ×1, head ×1/fan_in)")
  cfg_lib.check_positive({f"model.mus.{key}": m.mus[key] for key in ("d_base", "embed_mult", "head_mult")})


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
