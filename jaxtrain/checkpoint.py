"""Checkpoints: Orbax, asynchronous, keep-last-k, and a restore that falls back past damage.

A checkpoint at step s holds three items: `state` (the train-state pytree:
params, optimizer state, step, rng), `data` (the data iterator's position, JSON)
and `config` (the resolved config, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save
leaves no half-written step behind. A step that is complete but unreadable
(disk damage, a deleted file) is moved to `<workdir>/corrupt_checkpoints/` with
a warning and the previous step is restored instead: nothing a resume could
need is deleted. Steps are set aside only once an older one has restored: if
none can be restored, nothing is moved and the run stops with an error (the
cause may be no damage at all: memory, a flaky filesystem), rather than
starting over on top of its own history.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxtrain import config as cfg_lib
from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored; what to do is in the message."""


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for the train state, data position and config."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()},
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
    (and resharded, if the mesh changed) as it says. A checkpoint whose
    structure does not match (another model or optimizer) is a ConfigError,
    never mistaken for damage.
    """
    failed = []  # (step, error), newest first: set aside only once an older step has restored
    for step in reversed(self.steps()):
      try:
        saved_state = self.manager.item_metadata(step)["state"]
        saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        _check_compatible(_shapes(saved_state), _shapes(abstract_state), saved_config.get("model", {}),
                          model_config, self.directory)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # damage, or a failure that is not about this step
        failed.append((step, e))
        continue
      for bad_step, error in failed:
        self._set_aside(bad_step, error)
      return restored.state, restored.data, step
    if failed:  # nothing restored: maybe not damage at all (out of memory, a flaky filesystem); touch nothing
      raise CheckpointError(
          f"no checkpoint in {self.directory} could be restored ("
          + "; ".join(f"step {s}: {type(e).__name__}: {_first_line(e)}" for s, e in failed)
          + "): fix the cause and run again, move the damaged steps away to start over, or use a new --workdir"
      ) from failed[0][1]
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    target = base = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints", str(step))
    n = 0
    while os.path.exists(target):  # the same step set aside before, in an earlier attempt
      n += 1
      target = f"{base}.{n}"
    log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                step, type(error).__name__, _first_line(error), target)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _first_line(error: Exception) -> str:
  return str(error).splitlines()[0][:200] if str(error) else ""


def _shapes(tree) -> dict[str, tuple]:
  """{path: shape} with paths spelled the same for live pytrees and Orbax metadata."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# What a resume must not change: the function the parameters compute. Sizes are compared as resolved
# (head_dim=None and head_dim=d_model/num_heads are the same model); a placement's own knob only where the
# placement uses it. Everything else (loss and output, dtypes, scan, remat, attention kernel, init) may change.
SEMANTIC_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                   "mlp", "norm.kind", "norm.eps", "norm.placement", "norm.mix_post_fraction", "norm.res_post_tau",
                   "norm.embed_norm", "norm.out_norm_scale", "norm.final", "qk_norm", "tie_embeddings",
                   "rope_theta")
_ONLY_FOR = {"norm.mix_post_fraction": "mix", "norm.res_post_tau": "res_post"}


def _semantics(model: dict) -> dict:
  """The SEMANTIC_FIELDS of a model config (a dict, as saved in checkpoints), sizes resolved."""
  m = ml_collections.ConfigDict(model)
  resolved = {"num_kv_heads": cfg_lib.num_kv_heads, "head_dim": cfg_lib.head_dim, "mlp_dim": cfg_lib.mlp_dim}
  out = {}
  for key in SEMANTIC_FIELDS:
    node = model
    for part in key.split("."):
      node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    if node is KeyError or (key in _ONLY_FOR and _ONLY_FOR[key] != model.get("norm", {}).get("placement")):
      continue  # absent in an older checkpoint, or no effect with this placement
    out[key] = resolved[key](m) if key in resolved else node
  return out


def _check_compatible(saved: dict, current: dict, saved_model: dict, model: dict, directory: str) -> None:
  saved_sem, sem = _semantics(saved_model), _semantics(model)
  model_diff = [f"model.{k}: checkpoint {v!r} vs config {sem.get(k)!r}" for k, v in saved_sem.items() if sem.get(k) != v]
  if saved == current and not model_diff:
    return
  missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
  reshaped = [f"{k} {saved[k]} vs {current[k]}" for k in current if k in saved and saved[k] != current[k]]
  what = "; ".join(model_diff) or "; ".join(
      ([f"not in checkpoint: {missing[:2]}"] if missing else []) + ([f"only in checkpoint: {extra[:2]}"] if extra else [])
      + ([f"shapes: {reshaped[:2]}"] if reshaped else []))
  raise ConfigError(
      f"the checkpoint in {directory} does not fit this config's model or optimizer ({what}): "
      "use a new --workdir, or set the config back to match")
