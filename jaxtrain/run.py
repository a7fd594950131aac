"""A run opened in a notebook: its config as trained, its metrics, its checkpoints' parameters, and sampling.

    import jaxtrain as jt
    run = jt.load_run("runs/default")   # config, metrics, checkpoints; reads, never writes
    model = run.model()                 # the latest checkpoint's parameters on one device; no optimizer
    logits_BTV = model(tokens_BT)
    run.summary["time/compile"]         # how it ended: step, final eval loss, where the wall time went
    print(run.generate("def main(", max_new_tokens=200, temperature=0.8))

Everything comes from the workdir itself: the resolved config each checkpoint
stores (its `config` item, JSON), so no config file has to be reconstructed and a
run that grew gives each step the model it had then; `metrics.jsonl`; and the
parameters alone (the `params` subtree of the `state` item), restored with Orbax's
`PyTreeCheckpointer` as numpy arrays from the item's own metadata, so neither the
optimizer nor the mesh or host count the run trained on matters. Only complete
checkpoints are listed (Orbax writes a step into a temporary directory and renames
it when done, or marks a bucket's with commit_success.txt), so a run that is still
training can be opened; paths go through `jaxtrain.paths` (etils `epath`), so a
`gs://` workdir reads the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtrain import checkpoint
from jaxtrain import config as cfg_lib
from jaxtrain import metrics as metrics_lib
from jaxtrain import model as model_lib
from jaxtrain import paths
from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")


def load_run(workdir: str) -> Run:
  """Opens the run in `workdir` (a local path or gs://...) for reading; ConfigError if there is nothing to open."""
  path = paths.resolve(workdir)
  if not path.exists():
    raise ConfigError(f"load_run: workdir {workdir} does not exist")
  if path.name == "checkpoints" or path.parent.name == "checkpoints":
    above = path.parent if path.name == "checkpoints" else path.parent.parent
    raise ConfigError(f"load_run: {workdir} is inside a run's checkpoints; name its workdir: load_run({str(above)!r})")
  run = Run(str(workdir), path)
  steps = run.steps
  if not steps:
    raise ConfigError(f"load_run: no complete checkpoint in {path / 'checkpoints'}"
                      + (" (the run has metrics: jaxtrain.metrics.read_metrics reads them)"
                         if (path / "metrics.jsonl").exists() else "")
                      + "; train it first, or name another workdir")
  run.config = run.config_at(steps[-1])
  return run


class Run:
  """A training run's workdir, read-only: `config`, `metrics`, `steps`, `model(step)`, `generate(...)`."""

  def __init__(self, workdir: str, path: epath.Path):
    self.workdir = workdir            # as given
    self.path = path
    self.name = path.name              # for plot legends
    self.config: ml_collections.ConfigDict | None = None  # the newest checkpoint's, set by load_run
    self._metrics_key, self._metrics = None, None
    self._sampled = None  # (step, Model): `generate` in a loop reads its checkpoint once

  def __repr__(self):
    return f"Run({self.workdir!r}, steps={self.steps})"

  @property
  def steps(self) -> list[int]:
    """The complete checkpoints, ascending (listed afresh: a run still training adds steps and drops old ones)."""
    directory = self.path / "checkpoints"
    if not directory.exists():
      return []
    return checkpoint.checkpoint_steps(directory)

  @property
  def metrics(self):
    """Every line of metrics.jsonl as a pandas DataFrame (re-read when the file changed); `step` always a column.

    Training, evaluation, diagnostics and growth lines are rows of their own, other columns NaN where a line has
    no value: `run.metrics.dropna(subset=["eval_loss"])` are the evaluations. Per-layer diagnostics are lists.
    """
    import pandas as pd  # pylint: disable=import-outside-toplevel  # only the metrics need it
    file = self.path / "metrics.jsonl"
    key = _stat(file)
    if key != self._metrics_key or self._metrics is None:
      rows = metrics_lib.read_metrics(self.path) if key is not None else []
      frame = pd.DataFrame(rows)
      if "step" not in frame:
        frame["step"] = pd.Series(dtype=int)
      self._metrics_key, self._metrics = key, frame
    return self._metrics.copy()

  @property
  def summary(self) -> dict | None:
    """How the run's last segment ended (`summary.json`): step, stopped_by, final_eval_loss, and where its wall time
    went, `time/compile`, `time/train`, `time/eval`, `time/save`, `time/data`, ... in seconds (loop.Breakdown);
    None if no segment has ended. Each segment's breakdown is also a line of `metrics` (`time/total` not NaN)."""
    file = self.path / "summary.json"
    return json.loads(file.read_text()) if file.exists() else None

  def config_at(self, step: int) -> ml_collections.ConfigDict:
    """The resolved config checkpoint `step` was written with (after growth: the model it had at that step)."""
    self._check_step(step)
    item = self.path / "checkpoints" / str(step) / "config"
    try:
      saved = ocp.JsonCheckpointHandler().restore(item)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"load_run: checkpoint step {step} in {self.workdir} has no readable config ({e})") from e
    config = cfg_lib.from_json(saved)
    from jaxtrain.data import tokenizer  # pylint: disable=import-outside-toplevel  # TFDS: only when asked for
    copy = tokenizer.workdir_copy(self.path, config.data)
    if copy is not None:  # the tokenizer file the run kept (train.py), wherever its original went
      config.data.tokenizer = str(copy)
    return config

  def model(self, step: int | None = None, *, device: jax.Device | None = None) -> Model:
    """The parameters of checkpoint `step` (default: the latest) on `device` (default: the first), as a `Model`.

    Only the parameters are read, as numpy arrays, whatever mesh or host count wrote them; no optimizer is built.
    """
    step = self._check_step(step)
    device = device or jax.devices()[0]
    config = self.config_at(step)
    if config.model.attention == "cudnn" and device.platform != "gpu":  # the same function, by another kernel
      config.model.attention = "auto"
    graphdef, abstract, _ = model_lib.abstract(config.model)
    params = restore_params(self.path / "checkpoints" / str(step) / "state", abstract, where=f"{self.workdir} step "
                            f"{step}")
    return Model(config, graphdef, jax.device_put(params, device), step)

  def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int | None = None,
               step: int | None = None, seed: int = 0, method: str = "cache") -> str:
    """The prompt's continuation as text, sampled from checkpoint `step` (default: the latest); see `Model.generate`."""
    step = self._check_step(step)
    if self._sampled is None or self._sampled[0] != step:  # a model of its own: one the caller edits is not reused
      self._sampled = (step, self.model(step))
    return self._sampled[1].generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                     seed=seed, method=method)

  def eval_batch(self, batch_size: int = 8, seq_len: int | None = None) -> dict:
    """The first `batch_size` rows of the run's validation data: {'inputs', 'targets'} int32[B, T] (numpy).

    The same rows the trainer's evaluation starts with (data.seq_len tokens unless `seq_len`); for `analysis`.
    """
    from jaxtrain import data  # pylint: disable=import-outside-toplevel  # TFDS: only when asked for
    return data.eval_batches(self.config.data, seq_len=seq_len or self.config.data.seq_len, global_batch=batch_size,
                             num_batches=1)[0]

  def _check_step(self, step: int | None) -> int:
    steps = self.steps
    if step is None:
      if not steps:
        raise ConfigError(f"load_run: no complete checkpoint left in {self.path / 'checkpoints'}")
      return steps[-1]
    if step not in steps:
      raise ConfigError(f"{self.workdir} has no checkpoint at step {step}; its checkpoints: "
                        f"{', '.join(map(str, steps)) or 'none'}")
    return int(step)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """One checkpoint's model: `config`, `graphdef`, `params` (a plain dict of jax arrays, as `model.init` makes),
  `step`. `model(tokens_BT)` is the float32 logits; `nnx.merge(model.graphdef, model.params)` the NNX module."""
  config: ml_collections.ConfigDict
  graphdef: Any
  params: Any
  step: int

  def __call__(self, tokens_BT) -> jax.Array:
    """logits_BTV (float32) of int tokens [B, T] (T at most model.max_seq_len)."""
    return _forward(self.graphdef, self.params, np.asarray(tokens_BT, np.int32))

  @property
  def module(self) -> nnx.Module:
    """The NNX Transformer with these parameters."""
    return nnx.merge(self.graphdef, self.params)

  @property
  def num_layers(self) -> int:
    return int(self.config.model.num_layers)

  @functools.cached_property
  def tokenizer(self):
    """The run's tokenizer (`data.tokenizer`: bytes, SentencePiece or a tokenizer.json; the copy the run kept in its
    workdir, see `Run.config_at`): `encode(text)`, `decode(ids)`."""
    from jaxtrain.data import tokenizer  # pylint: disable=import-outside-toplevel
    return tokenizer.make_tokenizer(self.config.data)

  def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int | None = None,
               seed: int = 0, method: str = "cache") -> str:
    """The text sampled after `prompt` (the prompt not included); temperature 0 is greedy; `method`: 'cache' (a KV
    cache) or 'window' (the reference: the whole window per token). See `jaxtrain.sample`."""
    from jaxtrain import sample  # pylint: disable=import-outside-toplevel
    return sample.generate_text(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                seed=seed, method=method)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens_BT):
  return nnx.merge(graphdef, params)(tokens_BT).astype(np.float32)


# ---------------------------------------------------------------- reading a checkpoint


def restore_params(state_dir: epath.Path, abstract=None, *, where: str = ""):
  """The `params` subtree of a train-state item as numpy arrays (nothing else is read), shapes as saved.

  `abstract` (ShapeDtypeStructs, e.g. `model.abstract(...)[1]`): ConfigError if the saved parameters differ from it.
  """
  try:
    saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"checkpoint {where or state_dir}: the state item is missing or unreadable ({e})") from e
  if "params" not in saved:
    raise ConfigError(f"checkpoint {where or state_dir}: no params in its state (keys: {sorted(saved)})")
  meta = saved["params"]
  if abstract is not None:
    shapes = lambda tree: {jax.tree_util.keystr(k): tuple(x.shape)
                           for k, x in jax.tree_util.tree_leaves_with_path(tree)}
    have, want = shapes(meta), shapes(abstract)
    if have != want:
      diff = sorted(set(have.items()) ^ set(want.items()))[:3]
      raise ConfigError(f"checkpoint {where or state_dir}: its parameters do not fit the config it stores "
                        f"(first differences, saved or expected: {diff})")
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item={"params": meta}, restore_args={"params": restore_args},
                                             partial_restore=True))
  return restored["params"]


def _stat(file: epath.Path):
  """(mtime, size) of a file, None if it does not exist: the metrics are re-read only when it changes."""
  try:
    s = file.stat()
  except (FileNotFoundError, OSError):
    return None
  return s.mtime, s.length
