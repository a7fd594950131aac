"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and the console.

`metrics.jsonl` has one JSON object per line: training lines carry `step`,
`loss`, `learning_rate`, `grad_norm`, `tokens_per_second`, `mfu`, and the
Softmax Collapse metrics `sc_fraction`, `zero_loss_fraction`, `param_norm`,
`grad_weight_cos` (jaxtrain/collapse.py), and more; evaluation lines carry
`step`, `eval_loss` and `eval_perplexity`; diagnostics lines (every
`train.diagnostics_every` steps) carry `step` and per-layer lists
`layers/grad_norm`, `layers/resid_var`, `layers/resid_max_abs`,
`layers/attn_max_logit`, and per parameter tensor `weight_norm/<path>` and
`grad_weight_cos/<path>` (lists over layers for the stacked blocks, e.g.
`weight_norm/blocks/mlp/wi/w`). Read it back with `read_metrics(workdir)`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

log = logging.getLogger("jaxtrain")


def read_metrics(workdir: str) -> list[dict]:
  """All lines of `<workdir>/metrics.jsonl` as dicts (for notebooks and tests)."""
  return _read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _read_jsonl(path: str) -> list[dict]:
  """The complete lines of a JSONL file; a last line cut short by a kill is dropped."""
  with open(path) as f:
    lines = f.read().split("\n")
  rows = [json.loads(line) for line in lines[:-1] if line.strip()]
  if lines[-1].strip():  # no newline after it: the write was interrupted
    log.warning("%s: dropping an incomplete last line (%d characters)", path, len(lines[-1]))
  return rows


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard; shows progress as a bar or as log lines."""

  def __init__(self, workdir: str, *, total_steps: int, first_step: int, progress: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      _truncate_after(self.path, first_step)  # a resumed run rewrites what came after its checkpoint
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=first_step + 1)
    use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
    self.bar = None
    if use_bar and enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    line = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(line) + "\n")
    for k, v in line.items():
      if k != "step" and isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, step)
      elif isinstance(v, list):  # per-layer diagnostics: one scalar per layer
        for l, x in enumerate(v):
          if x is not None:
            self.tb.add_scalar(f"{k}/{l:02d}", x, step)
    shown = {k: v for k, v in line.items() if k in _SHOWN}
    if not shown:
      return
    if self.bar is not None:
      self.bar.set_postfix({k: _fmt(v) for k, v in shown.items()}, refresh=False)
    else:
      log.info("step %d  %s", step, "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

  def advance(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
    if self.bar is not None:
      self.bar.close()


_SHOWN = ("loss", "eval_loss", "eval_perplexity", "grad_norm", "learning_rate", "tokens_per_second", "mfu")


def _py(v):
  if isinstance(v, list):
    return [_py(x) for x in v]
  v = v.item() if hasattr(v, "item") else v
  return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(v):
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  # A growth event at the checkpoint's own step comes after that checkpoint (growth.py): it is redone too.
  rows = [r for r in _read_jsonl(path)
          if r.get("step", 0) < step or r.get("step", 0) == step and not any(k.startswith("growth/") for k in r)]
  with open(path + ".tmp", "w") as f:  # a kill while rewriting must not cost the history
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(path + ".tmp", path)
