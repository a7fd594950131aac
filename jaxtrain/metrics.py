"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and the console.

`metrics.jsonl` has one JSON object per line: training lines carry `step`,
`loss`, `learning_rate`, `grad_norm`, `param_norm`, `tokens_per_second`, `mfu`,
and more; the Softmax Collapse metrics `sc_fraction`, `zero_loss_fraction`,
`grad_weight_cos` (jaxtrain/collapse.py) only where the window held a diagnostics
step or with `train.collapse_metrics`; evaluation lines carry
`step`, `eval_loss` and `eval_perplexity`; diagnostics lines (every
`train.diagnostics_every` steps) carry `step` and per-layer lists
`layers/grad_norm`, `layers/resid_var`, `layers/resid_max_abs`,
`layers/attn_max_logit`, and per parameter tensor `weight_norm/<path>` and
`grad_weight_cos/<path>` (lists over layers for the stacked blocks, e.g.
`weight_norm/blocks/mlp/wi/w`). Read it back with `read_metrics(workdir)`.

They reach it through the run's trackers (jaxtrain/trackers.py: metrics.jsonl always, TensorBoard and Weights &
Biases as `train.trackers` says); `MetricWriter` hands each line to every tracker and shows progress. The end of a
run adds one line of its time breakdown (`time/compile`, `time/train`, `time/eval`, ... in seconds: loop.Breakdown)
and `summary.json` (the final evaluation loss, the step, the breakdown).
"""

from __future__ import annotations

import json
import logging
import math
import sys

from jaxtrain import paths, trackers as trackers_lib

log = logging.getLogger("jaxtrain")

UPLOAD_SECONDS = trackers_lib.UPLOAD_SECONDS


def read_metrics(workdir) -> list[dict]:
  """All lines of `<workdir>/metrics.jsonl` as dicts (for notebooks and tests); `workdir` local or gs://."""
  return [json.loads(line) for line in trackers_lib.read_lines(paths.resolve(workdir) / "metrics.jsonl")]


class MetricWriter:
  """Hands metrics to the run's trackers (metrics.jsonl, TensorBoard, W&B: jaxtrain/trackers.py); shows progress as a
  bar or as log lines. `config`: the run's (its `train.trackers`, its `wandb` section); None: jsonl and
  tensorboard. `enabled=False` (every process but 0) makes no tracker.

  `workdir` local or gs://; in a bucket, lines reach it at upload time (trackers.py): `flush()` to force."""

  def __init__(self, workdir, *, total_steps: int, first_step: int, progress: str, enabled: bool = True,
               upload_every: float = UPLOAD_SECONDS, config=None):
    self.enabled = enabled
    self.trackers = trackers_lib.make(workdir, first_step, config, upload_every) if enabled else []
    use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
    self.bar = None
    if use_bar and enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)

  def log_config(self, config: dict) -> None:
    for t in self.trackers:
      t.log_config(config)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    line = {k: _py(v) for k, v in metrics.items()}
    for t in self.trackers:
      t.log(int(step), line)
    shown = {k: v for k, v in line.items() if k in _SHOWN}
    if not shown:
      return
    if self.bar is not None:
      self.bar.set_postfix({k: _fmt(v) for k, v in shown.items()}, refresh=False)
    else:
      log.info("step %d  %s", step, "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

  def flush(self) -> None:
    """Makes every line written so far durable (in a bucket, uploads metrics.jsonl if it has new lines)."""
    for t in self.trackers:
      t.flush()

  def summary(self, values: dict) -> None:
    """The run's summary at its end, to every tracker (summary.json, W&B's run summary)."""
    values = {k: _py(v) for k, v in values.items()}
    for t in self.trackers:
      t.summary(values)

  def advance(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def close(self) -> None:
    errors = []
    for t in self.trackers:  # each one closed, even if another fails
      try:
        t.finish()
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
    if self.bar is not None:
      self.bar.close()
    if errors:
      raise errors[0]


_SHOWN = ("loss", "eval_loss", "eval_perplexity", "grad_norm", "learning_rate", "tokens_per_second", "mfu")


def _py(v):
  if isinstance(v, list):
    return [_py(x) for x in v]
  v = v.item() if hasattr(v, "item") else v
  return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(v):
  return f"{v:.4g}" if isinstance(v, float) else str(v)
