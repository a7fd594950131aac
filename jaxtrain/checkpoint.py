"""Checkpoints: Orbax, asynchronous, keep-last-k, and a restore that falls back past damage.

A checkpoint at step s holds three items: `state` (the train-state pytree:
params, optimizer state, step, rng), `data` (the data iterator's position, JSON)
and `config` (the resolved config, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save
leaves no half-written step behind. A step that is complete but unreadable
(disk damage, a deleted file) is moved to `<workdir>/corrupt_checkpoints/` with
a warning and the previous step is restored instead: nothing a resume could
need is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for the train state, data position and config."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True, cleanup_tmp_directories=True))

  def save(self, step: int, state, data_state: dict, config_json: dict) -> None:
    """Starts an asynchronous save of step `step` (returns once arrays are copied off the device)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config_json)), force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state, model_config: dict):
    """(state, data_state, step) of the newest readable checkpoint, or None if there is none.

    `abstract_state` holds ShapeDtypeStructs with shardings: arrays are placed
    (and resharded, if the mesh changed) as it says.
    """
    for step in reversed(self.steps()):
      saved_model = self._saved_model_config(step)
      if saved_model is not None:
        _check_compatible(saved_model, model_config, self.directory)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # any damage means: try the one before
        self._set_aside(step, e)
        continue
      return restored.state, restored.data, step
    return None

  def _saved_model_config(self, step: int):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config["model"]
    except Exception:  # pylint: disable=broad-except  # unreadable config: the state restore decides
      return None

  def _set_aside(self, step: int, error: Exception) -> None:
    target = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints", str(step))
    log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", target)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# Fields that change the parameters' shapes; the rest (dtypes, remat, scan) may change on resume.
_SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "mlp", "norm", "qk_norm", "tie_embeddings")


def _check_compatible(saved: dict, current: dict, directory: str) -> None:
  diff = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
          for k in _SHAPE_FIELDS if saved.get(k) != current.get(k)]
  if diff:
    raise ConfigError(
        f"the checkpoint in {directory} was made with a different model ({'; '.join(diff)}): "
        "use a new --workdir, or set the config back to match")
