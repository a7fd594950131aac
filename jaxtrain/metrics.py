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

In a bucket (`gs://`), which has no append, the writer keeps the file's lines
and uploads it whole: at most every UPLOAD_SECONDS, whenever `flush()` is called
(the trainer does around each checkpoint save, so the lines up to a saved step
are in the bucket as on a disk) and at `close()`. TensorBoard's event files are
rewritten whole at tensorboardX's own flushes (every 120 s and at close), through
epath too (`_BucketEventFile`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time

from etils import epath

from jaxtrain import paths

log = logging.getLogger("jaxtrain")

UPLOAD_SECONDS = 30.0  # a bucket's metrics.jsonl is rewritten whole, so not at every line


def read_metrics(workdir) -> list[dict]:
  """All lines of `<workdir>/metrics.jsonl` as dicts (for notebooks and tests); `workdir` local or gs://."""
  return [json.loads(line) for line in _read_lines(paths.resolve(workdir) / "metrics.jsonl")]


def _read_lines(path: epath.Path) -> list[str]:
  """The complete lines of a JSONL file; a last line cut short by a kill is dropped."""
  lines = path.read_text().split("\n")
  if lines[-1].strip():  # no newline after it: the write was interrupted
    log.warning("%s: dropping an incomplete last line (%d characters)", path, len(lines[-1]))
  return [line for line in lines[:-1] if line.strip()]


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard; shows progress as a bar or as log lines.

  `workdir` local or gs://; in a bucket, lines reach it at upload time (module docstring): `flush()` to force."""

  def __init__(self, workdir, *, total_steps: int, first_step: int, progress: str, enabled: bool = True,
               upload_every: float = UPLOAD_SECONDS):
    self.enabled = enabled
    workdir = paths.resolve(workdir)
    self.path = workdir / "metrics.jsonl"
    self.remote, self.upload_every = paths.is_remote(workdir), upload_every
    self._lines, self._dirty, self._uploaded = [], False, time.monotonic()  # in a bucket: the whole file
    if enabled:
      kept = _truncate_after(self.path, first_step)  # a resumed run rewrites what came after its checkpoint
      self._lines = kept if self.remote else []
      SummaryWriter = _summary_writer()  # pylint: disable=invalid-name
      if self.remote:
        _register_bucket_events()
      self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"), purge_step=first_step + 1)
    use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
    self.bar = None
    if use_bar and enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    line = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
    if self.remote:
      self._lines.append(json.dumps(line))
      self._dirty = True
      if time.monotonic() - self._uploaded >= self.upload_every:
        self.flush()
    else:
      with self.path.open("a") as f:
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

  def flush(self) -> None:
    """Makes every line written so far durable: a no-op on a disk (each line is appended as written); in a
    bucket, uploads the file if it has new lines."""
    if self.enabled and self.remote and self._dirty:
      self.path.write_text("".join(line + "\n" for line in self._lines))  # one object write: whole or nothing
      self._dirty, self._uploaded = False, time.monotonic()

  def advance(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def close(self) -> None:
    if self.enabled:
      self.flush()
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


def _truncate_after(path: epath.Path, step: int) -> list[str]:
  """Drops the lines after `step` from the file; returns the lines kept."""
  if not path.exists():
    return []
  # A growth event at the checkpoint's own step comes after that checkpoint (growth/events.py): it is redone too.
  kept = []
  for line in _read_lines(path):
    r = json.loads(line)
    if r.get("step", 0) < step or r.get("step", 0) == step and not any(k.startswith("growth/") for k in r):
      kept.append(line)
  # A kill while rewriting must not cost the history.
  paths.write_text_atomic(path, "".join(line + "\n" for line in kept))
  return kept


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever it is installed (it
  is, for the Hugging Face tests), only to accept torch tensors, which jaxtrain never logs; that import took 6 s."""
  if "tensorboardX.writer" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter


class _BucketEventFile:
  """A TensorBoard event file in a bucket: the records so far, uploaded whole at each flush (tensorboardX flushes
  every `flush_secs` and at close), through epath as every other file."""

  def __init__(self, path: str):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _BucketEvents:
  """tensorboardX's writer factory for gs:// (it replaces tensorboardX's own, which needs google-cloud-storage)."""

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(path)

  def directory_check(self, path: str) -> None:  # a bucket has no directories to make
    pass


def _register_bucket_events() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory("gs", _BucketEvents())
