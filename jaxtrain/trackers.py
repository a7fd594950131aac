"""Where a run's metrics go: trackers, each one class behind one small interface (`Tracker`).

`train.trackers` names them, comma-separated: `jsonl` (metrics.jsonl, always on: `load_run`, the sweeps and a
resume read it), `tensorboard` (event files in `<workdir>/tensorboard`) and `wandb` (Weights & Biases, its
settings in the config's `wandb` section). Another tracker is one class with the five methods of `Tracker` and a
line in `TRACKERS`. Only process 0 makes trackers (`metrics.MetricWriter`); the others log nothing.

Each tracker is given the resolved config once (`log_config`), every metric line (`log`: training, evaluation,
diagnostics and growth lines, and the end-of-run time breakdown, `time/...`), and the run's summary at its end
(`summary`): the final evaluation loss, the step reached, the time breakdown. Per-layer diagnostics arrive as lists
over layers (`layers/grad_norm`: jaxtrain/step.py's DIAGNOSTIC_PREFIXES): TensorBoard and W&B draw one series per
layer (`layers/grad_norm/00`, ...), and W&B also draws each `layers/` list against depth at each diagnostics step.

Weights & Biases: the run's id is kept in `<workdir>/wandb_run_id` (written by process 0 when the run is first
made, through jaxtrain/paths.py), so a resumed run continues the same W&B run (`resume="allow"`). W&B's step is
jaxtrain's step. A resume redoes the steps between its checkpoint and the kill: where W&B says how far the run got
(online), those steps are not sent again; an offline run sends them, and `wandb sync` keeps the first copy (W&B's
steps only increase). Either way nothing is lost, the resume being exact. W&B writes its local files under
`<workdir>/wandb/`, or, for a bucket workdir, under the local temporary directory. `WANDB_MODE=offline` (or `wandb.mode=offline`) keeps everything local:
`wandb sync <workdir>/wandb/offline-run-*` uploads it later.

In a bucket (`gs://`), which has no append, the JSONL tracker keeps the file's lines and uploads it whole: at most
every UPLOAD_SECONDS, whenever `flush()` is called (the trainer does around each checkpoint save, so the lines up
to a saved step are in the bucket as on a disk) and at the end. TensorBoard's event files are rewritten whole at
tensorboardX's own flushes (every 120 s and at close), through epath too (`_BucketEventFile`).
"""

from __future__ import annotations

import difflib
import importlib.util
import io
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from typing import Protocol

from etils import epath

from jaxtrain import paths
from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")

UPLOAD_SECONDS = 30.0  # a bucket's metrics.jsonl is rewritten whole, so not at every line
WANDB_MODES = ("", "online", "offline", "disabled", "shared")  # "": WANDB_MODE, else online


class Tracker(Protocol):
  """What the trainer tells a tracker. `metrics` values are Python numbers, None (not finite) or lists of them."""

  def log_config(self, config: dict) -> None:
    """The resolved config (JSON-able), once at the start."""

  def log(self, step: int, metrics: dict) -> None:
    """One metric line at `step`."""

  def flush(self) -> None:
    """Makes every line so far durable (the trainer calls it around each checkpoint save)."""

  def summary(self, values: dict) -> None:
    """The run's summary at its end: final_eval_loss, step, stopped_by, time/... (JSON-able)."""

  def finish(self) -> None:
    """Closes the tracker (also after an error)."""


def read_lines(path: epath.Path) -> list[str]:
  """The complete lines of a JSONL file; a last line cut short by a kill is dropped."""
  lines = path.read_text().split("\n")
  if lines[-1].strip():  # no newline after it: the write was interrupted
    log.warning("%s: dropping an incomplete last line (%d characters)", path, len(lines[-1]))
  return [line for line in lines[:-1] if line.strip()]


class JsonlTracker:
  """`<workdir>/metrics.jsonl`, one JSON object a line, and `<workdir>/summary.json` at the end."""

  def __init__(self, workdir: epath.Path, first_step: int, config=None, upload_every: float = UPLOAD_SECONDS):
    del config
    self.path, self.workdir = workdir / "metrics.jsonl", workdir
    self.remote, self.upload_every = paths.is_remote(workdir), upload_every
    kept = _truncate_after(self.path, first_step)  # a resumed run rewrites what came after its checkpoint
    self._lines = kept if self.remote else []  # in a bucket: the whole file
    self._dirty, self._uploaded = False, time.monotonic()

  def log_config(self, config: dict) -> None:
    pass  # the trainer writes config.json itself

  def log(self, step: int, metrics: dict) -> None:
    line = json.dumps({"step": step, **metrics})
    if self.remote:
      self._lines.append(line)
      self._dirty = True
      if time.monotonic() - self._uploaded >= self.upload_every:
        self.flush()
    else:
      with self.path.open("a") as f:
        f.write(line + "\n")

  def flush(self) -> None:
    """A no-op on a disk (each line is appended as written); in a bucket, uploads the file if it has new lines."""
    if self.remote and self._dirty:
      self.path.write_text("".join(line + "\n" for line in self._lines))  # one object write: whole or nothing
      self._dirty, self._uploaded = False, time.monotonic()

  def summary(self, values: dict) -> None:
    paths.write_text_atomic(self.workdir / "summary.json", json.dumps(values, indent=2) + "\n")

  def finish(self) -> None:
    self.flush()


class TensorBoardTracker:
  """TensorBoard event files in `<workdir>/tensorboard` (tensorboardX): scalars, one series per layer for the
  per-layer lists, the config as text."""

  def __init__(self, workdir: epath.Path, first_step: int, config=None):
    del config
    SummaryWriter = _summary_writer()  # pylint: disable=invalid-name
    if paths.is_remote(workdir):
      _register_bucket_events()
    self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"), purge_step=first_step + 1)

  def log_config(self, config: dict) -> None:
    self.tb.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

  def log(self, step: int, metrics: dict) -> None:
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self.tb.add_scalar(k, v, step)
      elif isinstance(v, list):  # per-layer diagnostics: one scalar per layer
        for l, x in enumerate(v):
          if x is not None:
            self.tb.add_scalar(f"{k}/{l:02d}", x, step)

  def flush(self) -> None:
    pass  # tensorboardX flushes on its own (every 120 s and at close)

  def summary(self, values: dict) -> None:
    pass  # the summary's numbers are on the last metric lines already

  def finish(self) -> None:
    self.tb.close()


class WandbTracker:
  """A Weights & Biases run (module docstring): the config, every line against `step`, per-layer charts, the
  summary; the run's id kept in `<workdir>/wandb_run_id` so that a resume continues it."""

  def __init__(self, workdir: epath.Path, first_step: int, config=None):
    del first_step
    import wandb  # pylint: disable=import-outside-toplevel  # optional: pip install 'jaxtrain[wandb]'
    self.wandb = wandb
    w = config.wandb if config is not None else None
    id_file = workdir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
    local = (os.path.join(tempfile.gettempdir(), "jaxtrain-wandb") if paths.is_remote(workdir)
             else os.fspath(workdir))
    os.makedirs(local, exist_ok=True)
    self.run = wandb.init(
        project=(w.project if w is not None else "") or "jaxtrain", entity=(w.entity if w is not None else "") or None,
        name=(w.name if w is not None else "") or workdir.name, tags=_split(w.tags) if w is not None else None,
        mode=(w.mode if w is not None else "") or None, id=run_id, resume="allow", dir=local,
        reinit="finish_previous")
    if not id_file.exists():
      paths.write_text_atomic(id_file, run_id)
    self.logged = self.run.step  # resumed online: the steps W&B has (they are redone identically; not resent)

  def log_config(self, config: dict) -> None:
    self.run.config.update(config, allow_val_change=True)  # a resume may change what is free to change

  def log(self, step: int, metrics: dict) -> None:
    if step < self.logged:
      return
    row = {}
    for k, v in metrics.items():
      if isinstance(v, list):  # per-layer: a series per layer, and the `layers/` ones against depth
        row |= {f"{k}/{l:02d}": x for l, x in enumerate(v) if x is not None}
        if k.startswith("layers/"):
          table = self.wandb.Table(columns=["layer", k], data=[[l, x] for l, x in enumerate(v) if x is not None])
          row[f"{k}/by_layer"] = self.wandb.plot.line(table, "layer", k, title=f"{k} by layer (step {step})")
      elif v is not None:
        row[k] = v
    self.run.log(row, step=step)

  def flush(self) -> None:
    pass  # the W&B service writes as it goes

  def summary(self, values: dict) -> None:
    self.run.summary.update({k: v for k, v in values.items() if v is not None})

  def finish(self) -> None:
    self.run.finish(exit_code=1 if sys.exc_info()[0] is not None else None)  # closed by an error: a failed run


# name -> class: what `train.trackers` may name. Each is made as cls(workdir, first_step, config).
TRACKERS = {"jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}
INSTALL = {"wandb": "pip install 'jaxtrain[wandb]'"}  # trackers whose package is optional


def _split(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
  """The trackers `train.trackers` names, jsonl first (always on). ConfigError (one line) for an unknown name."""
  out = ["jsonl"]
  for name in _split(text):
    if name not in TRACKERS:
      close = difflib.get_close_matches(name, TRACKERS, n=1)
      raise ConfigError(f"train.trackers: unknown tracker {name!r}"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" Choose from {', '.join(TRACKERS)}, comma-separated (e.g. "
                        "train.trackers=jsonl,tensorboard,wandb)")
    if name not in out:
      out.append(name)
  return out


def check(config, target) -> None:
  """Every named tracker exists and can be made here (one line each, before compiling)."""
  del target
  for name in names(config.train.trackers):
    if name in INSTALL and importlib.util.find_spec(name) is None:
      raise ConfigError(f"train.trackers names {name} but the {name} package is not installed: {INSTALL[name]} "
                        f"(or leave {name} out of train.trackers)")
  if config.wandb.mode not in WANDB_MODES:
    raise ConfigError(f"wandb.mode={config.wandb.mode!r} is not one of {WANDB_MODES} ('': WANDB_MODE, else online)")


def make(workdir, first_step: int, config=None, upload_every: float = UPLOAD_SECONDS) -> list[Tracker]:
  """The trackers of `config.train.trackers` (jsonl and tensorboard without a config) for a run (re)started at
  `first_step` in `workdir` (local or gs://)."""
  workdir = paths.resolve(workdir)
  chosen = names(config.train.trackers) if config is not None else ["jsonl", "tensorboard"]
  made = []
  try:
    for name in chosen:
      made.append(JsonlTracker(workdir, first_step, config, upload_every) if name == "jsonl"
                  else TRACKERS[name](workdir, first_step, config))
  except BaseException:
    for t in made:
      t.finish()
    raise
  return made


def _truncate_after(path: epath.Path, step: int) -> list[str]:
  """Drops the lines after `step` from the file; returns the lines kept."""
  if not path.exists():
    return []
  # A growth event at the checkpoint's own step comes after that checkpoint (growth/events.py): it is redone too.
  kept = []
  for line in read_lines(path):
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
