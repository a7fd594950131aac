"""The benchmark model in PyTorch: the reference jaxtrain's CPU throughput is measured against.

    python benchmarks/torch_reference.py                  # eager, the issue's benchmark config
    python benchmarks/torch_reference.py --mode compile   # torch.compile'd forward + loss (+ its backward)
    python benchmarks/throughput.py --compare-torch       # jaxtrain, eager and compile in one run, interleaved

The same model as jaxtrain's default (`jaxtrain.config.base()` with the sizes given): pre-RMSNorm (eps 1e-6,
learnable gain), RoPE (rotate-half, θ 10⁴), causal multi-head attention (`F.scaled_dot_product_attention`,
PyTorch's fused CPU kernel), SwiGLU with gate and up as one [D, 2F] matmul and F = 8D/3 rounded up to 64, a final
RMSNorm, tied embeddings, no biases; init N(0, 0.02²) with the residual branches' last matmuls at 0.02/√(2L)
(GPT-2); float32. The optimizer is jaxtrain's: global-norm clipping at 1, AdamW (β 0.9/0.95, ε 1e-8, weight
decay 0.1 on every matrix, not the norm gains), linear warmup then cosine (`jaxtrain.optim.schedule`).

Timing protocol of benchmarks/throughput.py: the same random batches (numpy default_rng(0)), `--warmup`
untimed steps, then `--steps` steps timed one by one, each followed by a ceiling matmul (`paired`); step
median and best, tokens/s; this machine's float32 matmul ceiling through torch.mm (best of several square sizes,
before and after the steps). It imports neither jax nor jaxtrain, so the two frameworks never share a process.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import throughput  # benchmarks/: its flags only (it imports jax inside its functions, not here)

MODES = ("eager", "compile")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--mode", default="eager", choices=MODES, help="eager, or torch.compile of forward + loss")
  throughput.add_model_flags(p)  # the same flags and defaults as jaxtrain's benchmark
  return p.parse_args(argv)


# ---------------------------------------------------------------- the model (jaxtrain.model's defaults)


def mlp_dim(d_model: int) -> int:
  """SwiGLU's width as jaxtrain.config.mlp_dim: 8/3·d_model rounded up to a multiple of 64."""
  return 64 * math.ceil(8 * d_model // 3 / 64)


class RMSNorm(nn.Module):

  def __init__(self, dim: int, eps: float = 1e-6):
    super().__init__()
    self.eps, self.scale = eps, nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(x_BHTK, cos_TK, sin_TK):
  """Rotary embedding, rotate-half form (jaxtrain.model.rope)."""
  x1, x2 = x_BHTK.chunk(2, dim=-1)
  return torch.cat([x1 * cos_TK - x2 * sin_TK, x2 * cos_TK + x1 * sin_TK], -1)


def linear(d_in: int, d_out: int, std: float) -> nn.Linear:
  lin = nn.Linear(d_in, d_out, bias=False)
  nn.init.normal_(lin.weight, std=std)
  return lin


class Block(nn.Module):

  def __init__(self, d: int, heads: int, layers: int, std: float = 0.02):
    super().__init__()
    out_std = std / math.sqrt(2 * layers)  # model.depth_scaled_init
    self.heads, f = heads, mlp_dim(d)
    self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
    self.wq, self.wk, self.wv = linear(d, d, std), linear(d, d, std), linear(d, d, std)
    self.wo = linear(d, d, out_std)
    self.wi = linear(d, 2 * f, std)  # [gate, up] in one matmul, as jaxtrain's [D, 2, F]
    self.down = linear(f, d, out_std)

  def forward(self, x_BTD, cos_TK, sin_TK):
    B, T, D = x_BTD.shape
    h = self.attn_norm(x_BTD)
    split = lambda y: y.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # heads first: B, H, T, K
    q, k, v = split(self.wq(h)), split(self.wk(h)), split(self.wv(h))
    q, k = rope(q, cos_TK, sin_TK), rope(k, cos_TK, sin_TK)
    o_BHTK = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/√K
    x_BTD = x_BTD + self.wo(o_BHTK.transpose(1, 2).reshape(B, T, D))
    gate, up = self.wi(self.mlp_norm(x_BTD)).view(B, T, 2, -1).unbind(2)
    return x_BTD + self.down(F.silu(gate) * up)


class Transformer(nn.Module):

  def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int, theta: float = 10_000.0,
               std: float = 0.02):
    super().__init__()
    self.embed = nn.Parameter(torch.randn(vocab, d) * std)  # tied: also the LM head
    self.blocks = nn.ModuleList(Block(d, heads, layers, std) for _ in range(layers))
    self.final_norm = RMSNorm(d)
    K = d // heads
    angle_TK = torch.arange(seq, dtype=torch.float32)[:, None] * theta ** (
        -torch.arange(0, K, 2, dtype=torch.float32) / K)[None, :]
    self.register_buffer("cos_TK", torch.cos(angle_TK), persistent=False)
    self.register_buffer("sin_TK", torch.sin(angle_TK), persistent=False)

  def forward(self, tokens_BT):
    x_BTD = self.embed[tokens_BT]
    T = tokens_BT.shape[1]
    for block in self.blocks:
      x_BTD = block(x_BTD, self.cos_TK[:T], self.sin_TK[:T])
    return self.final_norm(x_BTD) @ self.embed.t()


def loss_fn(model, inputs_BT, targets_BT):
  logits_BTV = model(inputs_BT)
  return F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.shape[-1]), targets_BT.reshape(-1))


def schedule(step: int, peak: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
  """jaxtrain.optim.schedule's cosine: linear warmup from 0, then cosine from peak to min_ratio·peak."""
  if step < warmup:
    return peak * step / max(warmup, 1)
  t = min(step - warmup, max(steps - warmup, 1)) / max(steps - warmup, 1)
  return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model, lr: float = 3e-3, weight_decay: float = 0.1):
  """AdamW as jaxtrain's default optim: decay on the matrices (embedding, linears), not on the norm gains."""
  decay = [p for p in model.parameters() if p.ndim >= 2]
  rest = [p for p in model.parameters() if p.ndim < 2]
  return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, betas=(0.9, 0.95), eps=1e-8)


def time_matmul(n: int, repeats: int = 5) -> float:
  """The best of `repeats` timed n×n×n float32 torch.mm, in FLOP/s (as jaxtrain.flops.time_matmul)."""
  a = torch.ones(n, n) / n
  torch.mm(a, a)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    torch.mm(a, a)
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def main(argv=None) -> dict:
  args = parse_args(argv)
  torch.manual_seed(0)
  B, T, V = args.batch, args.seq, args.vocab
  model = Transformer(V, args.d_model, args.layers, args.heads, T)
  n_params = sum(p.numel() for p in model.parameters())
  opt = make_optimizer(model)
  steps_total = args.warmup + args.steps + 1  # throughput.make_config's train.steps
  warmup_lr = min(100, steps_total)

  rng = np.random.default_rng(0)  # the batches throughput.py draws
  def random_batch():
    tok = torch.from_numpy(rng.integers(0, V, (B, T + 1), dtype=np.int32).astype(np.int64))
    return tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
  batches = [random_batch() for _ in range(4)]

  with torch.no_grad():
    init_loss = float(loss_fn(model, *batches[0]))

  compute_loss = torch.compile(loss_fn) if args.mode == "compile" else loss_fn
  step_no = 0

  def train_step(inputs, targets):
    nonlocal step_no
    for g in opt.param_groups:
      g["lr"] = schedule(step_no, 3e-3, warmup_lr, steps_total)
    loss = compute_loss(model, inputs, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step_no += 1
    return loss.detach()

  sizes = [int(n) for n in args.ceiling_sizes.split(",") if n]
  before = {n: time_matmul(n) for n in sizes}

  t0 = time.perf_counter()
  train_step(*batches[0])  # compile mode: compiles forward and backward
  first_s = time.perf_counter() - t0
  pair_n = max(before, key=before.get)
  for i in range(1, args.warmup):
    train_step(*batches[i % len(batches)])
  times, paired = [], []
  for i in range(args.steps):
    s = time.perf_counter()
    loss = train_step(*batches[i % len(batches)])
    times.append(time.perf_counter() - s)
    paired.append(time_matmul(pair_n, repeats=3))
  by_size = {n: max(before[n], time_matmul(n)) for n in sizes}
  best_n = max(by_size, key=by_size.get)
  med, best = statistics.median(times), min(times)
  tokens = B * T
  res = {
      "machine": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")},
      "mode": args.mode,
      "config": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "mlp_dim": mlp_dim(args.d_model),
                 "seq": T, "batch": B, "vocab": V, "dtype": "float32", "params": n_params},
      "steps": args.steps, "warmup": args.warmup, "init_loss": init_loss, "final_loss": float(loss),
      "step_time_median_s": med, "step_time_best_s": best,
      "tokens_per_s_median": tokens / med, "tokens_per_s_best": tokens / best,
      "first_step_s": first_s,
      "ceiling_flops_per_s": by_size[best_n], "ceiling_matmul_n": best_n,
      "ceiling_by_size": {str(n): r for n, r in by_size.items()},
      "paired_ceiling_n": pair_n, "paired_ceiling_median_flops_per_s": statistics.median(paired),
      "step_times_s": times,
  }
  print(f"date:     {res['machine']['date']}")
  print(f"machine:  {res['machine']['cpu_count']} CPUs ({res['machine']['cpu']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")
  print(f"model:    d_model {args.d_model}, {args.layers} layers, {args.heads} heads, swiglu {mlp_dim(args.d_model)}, "
        f"vocab {V}, tied; {n_params / 1e6:.2f}M parameters ({n_params:,}); mode {args.mode}")
  print(f"init:     loss {init_loss:.4f} (ln V = {math.log(V):.4f})")
  print(f"first:    {first_s:.2f} s (compile mode: includes torch.compile)")
  print(f"steps:    {args.steps} timed after {args.warmup} warmup; final loss {float(loss):.3f}")
  print(f"step:     median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms")
  print(f"tokens/s: median {tokens / med:,.0f}, best {tokens / best:,.0f}")
  print("ceiling:  " + ", ".join(f"{n}^3 {r / 1e9:.1f}" for n, r in by_size.items())
        + f" GFLOP/s (float32 torch.mm); best n={best_n}")
  return throughput.write_json(args.json, res)


if __name__ == "__main__":
  main()
