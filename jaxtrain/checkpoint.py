"""Checkpoints: Orbax, asynchronous, keep-last-k, and a restore all hosts agree on that falls back past damage.

A checkpoint at step s holds three items: `state` (the train-state pytree:
params, optimizer state, step, rng; each host writes its own shards), `data`
(the data setup's fingerprint and the step, the same on every host, since the
data position is a function of the step) and `config` (the resolved config,
JSON). Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves no half-written step behind.

Restore, newest step first: every host reads the step (state through Orbax's
handler directly, so no host waits in a barrier for one that failed) and
classifies the outcome as read, damaged (a missing, empty or undecodable file),
or failed for another reason (retried twice, then reported: memory, a flaky
filesystem are no damage). The hosts exchange their outcomes (`hosts.gather`)
and act on the worst one, so all restore the same step. A damaged step is moved
to `<workdir>/corrupt_checkpoints/` by host 0, behind a barrier, and only once an
older step has restored: if none can be restored, nothing is moved and the run
stops with an error rather than starting over on top of its own history.

The directory may be local or a bucket (`gs://...`): Orbax lists and commits
steps through etils `epath` (on a bucket it marks a complete step with a commit
file instead of a rename) and writes the arrays through tensorstore. Open it with
`read_only=True` to read a run without changing it (nothing created, cleaned up,
moved or saved); close it (`close()`, or use it as a context manager) when done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, NamedTuple

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxtrain import config as cfg_lib
from jaxtrain import hosts, paths
from jaxtrain.config import ConfigError
from jaxtrain.placement import layer_kinds

log = logging.getLogger("jaxtrain")

# Outcomes of reading one step on one host, ordered: the hosts act on the largest.
READ, DAMAGED, FAILED, REFUSED = 0, 1, 2, 3
RETRIES = 2  # a read error that is not damage is retried this many times (1 s, 2 s apart)


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored; what to do is in the message."""


class Restored(NamedTuple):
  state: Any      # the train state, placed as the abstract state said
  step: int
  config: dict    # the config the checkpoint was written with (JSON)


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for the train state, data fingerprint and config.

  `directory`: local or gs://; `keep`: the newest steps kept (None: all). `read_only`: creates, cleans up, moves
  and saves nothing (a notebook or a tool reading a run, maybe while it trains); damaged steps are skipped, not
  set aside. A context manager: closes on exit.
  """

  def __init__(self, directory: str, keep: int | None = None, async_save: bool = True, read_only: bool = False):
    self.path = paths.resolve(directory)
    self.directory = os.fspath(self.path)
    self.read_only = read_only
    options = (ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False)
               if read_only else
               ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                            create=True, cleanup_tmp_directories=True))
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()},
        options=options)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *_) -> None:
    self.close()

  def save(self, step: int, state, data_fingerprint: dict, config_json: dict) -> None:
    """Starts an asynchronous save of step `step` (returns once arrays are copied off the device).

    Every host calls it at the same step (it has cross-host barriers)."""
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only: nothing can be saved there")
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"step": int(step), "fingerprint": data_fingerprint}),
        config=ocp.args.JsonSave(config_json)), force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state, model_config: dict, data_fingerprint: dict | None = None):
    """Restored(state, step, config) of the newest step every host can read, or None if there is none.

    `abstract_state` holds ShapeDtypeStructs with shardings: arrays are placed
    (and resharded, if the mesh or host count changed) as it says. It and `model_config` may
    be functions of the step, for a run whose model changes at growth events, and so may `data_fingerprint` (a
    mixture's: where its sources stand at the step, jaxtrain/data/pipeline.py). A checkpoint
    of another model or optimizer, or of another data setup (`data_fingerprint`),
    is a ConfigError, never mistaken for damage. Call it on every host.
    """
    failed = []  # (step, error), newest first: set aside only once an older step has restored
    at = lambda x, step: x(step) if callable(x) else x
    for step in reversed(hosts.broadcast(self.steps())):  # host 0's list: a listing can differ while a save lands
      outcome, result = self._read(step, at(abstract_state, step), at(model_config, step),
                                   at(data_fingerprint, step))
      worst = int(hosts.gather(outcome).max())
      if worst == REFUSED:
        raise result if outcome == REFUSED else ConfigError(
            f"another host refused the checkpoint in {self.directory} at step {step}: see its log")
      if worst == FAILED:
        error = result if outcome == FAILED else RuntimeError("another host could not read it: see its log")
        raise CheckpointError(
            f"checkpoint step {step} in {self.directory} could not be read ({type(error).__name__}: "
            f"{_first_line(error)}) and this is no sign of damage: nothing was moved; fix the cause and run again"
        ) from (error if outcome == FAILED else None)
      if worst == DAMAGED:
        failed.append((step, result if outcome == DAMAGED else RuntimeError("damaged as read by another host")))
        continue
      self._set_aside(failed)
      return Restored(result[0], step, result[1])
    if failed:  # nothing restored: maybe not damage at all (out of memory, a flaky filesystem); touch nothing
      raise CheckpointError(
          f"no checkpoint in {self.directory} could be restored ("
          + "; ".join(f"step {s}: {type(e).__name__}: {_first_line(e)}" for s, e in failed)
          + "): fix the cause and run again, move the damaged steps away to start over, or use a new --workdir"
      ) from failed[0][1]
    return None

  def _read(self, step, abstract_state, model_config, data_fingerprint):
    """(outcome, (state, saved config) or error) of reading `step` on this host; no cross-host calls."""
    path = self.path / str(step)
    for attempt in range(RETRIES + 1):
      try:
        saved_state = self.manager.item_metadata(step)["state"]
        saved_config = ocp.JsonCheckpointHandler().restore(path / "config")
        saved_data = ocp.JsonCheckpointHandler().restore(path / "data")
        if saved_state is None or saved_config is None:
          raise FileNotFoundError(f"step {step} has no state metadata or config")
        _check_compatible(_shapes(saved_state), _shapes(abstract_state), saved_config.get("model", {}),
                          model_config, self.directory)
        if data_fingerprint is not None:
          _check_same_data(saved_data, data_fingerprint, self.directory)
        state = ocp.StandardCheckpointHandler().restore(path / "state", args=ocp.args.StandardRestore(abstract_state))
        return READ, (state, saved_config)
      except ConfigError as e:
        return REFUSED, e
      except Exception as e:  # pylint: disable=broad-except  # sorted below: damage, or a failure to retry
        if is_damage(e):
          return DAMAGED, e
        if attempt == RETRIES:
          return FAILED, e
        log.warning("checkpoint step %d: %s: %s; retrying", step, type(e).__name__, _first_line(e))
        time.sleep(2 ** attempt)

  def _set_aside(self, failed) -> None:
    """Host 0 moves the damaged steps to corrupt_checkpoints/; every host waits for it, then re-lists."""
    steps = [step for step, _ in failed]
    for step, error in failed:
      where = "left in place (read-only)" if self.read_only else f"moved to {self._corrupt_dir() / str(step)}"
      log.warning("checkpoint step %d is unreadable (%s: %s); %s, restored the previous one",
                  step, type(error).__name__, _first_line(error), where)
    if not steps or self.read_only:
      return
    if jax.process_index() == 0:
      for step in steps:
        target = base = self._corrupt_dir() / str(step)
        n = 0
        while target.exists():  # the same step set aside before, in an earlier attempt
          n += 1
          target = base.parent / f"{base.name}.{n}"
        paths.move_tree(self.path / str(step), target)
    hosts.barrier("jaxtrain:set_aside")
    self.manager.reload()

  def _corrupt_dir(self) -> epath.Path:
    return self.path.parent / "corrupt_checkpoints"

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def checkpoint_steps(directory) -> list[int]:
  """The steps in a checkpoints directory (local or gs://), by name only (no Orbax: nothing is created or cleaned
  up). In a bucket a step is written in place and marked complete by Orbax's commit_success.txt: only those count."""
  directory = paths.resolve(directory)
  if not directory.is_dir():
    return []
  remote = paths.is_remote(directory)
  return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit() and d.is_dir()
                and (not remote or (d / "commit_success.txt").exists()))


def is_damage(error: BaseException) -> bool:
  """Whether a read error means the files are damaged (missing, empty, undecodable), not a passing failure."""
  if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError,
                        UnicodeDecodeError, EOFError)):
    return True
  if isinstance(error, (PermissionError, MemoryError, TimeoutError, ConnectionError, InterruptedError)):
    return False
  text = f"{type(error).__name__}: {error}".lower()
  return any(word in text for word in _DAMAGE_WORDS)


# How tensorstore and Orbax word damage: a missing or cut-short file, a bad checksum, an undecodable chunk.
_DAMAGE_WORDS = ("not_found", "not found", "no such file", "data_loss", "data loss", "corrupt", "checksum",
                 "error reading", "error decoding", "failed to decode", "unexpected end", "truncated", "missing",
                 "invalid manifest", "does not exist", "out_of_range", "out of range")


def _check_same_data(saved: dict | None, fingerprint: dict, directory: str) -> None:
  """ConfigError naming the first data-setup field that differs from the checkpoint's."""
  saved_fp = (saved or {}).get("fingerprint")
  if saved_fp is None:
    raise ConfigError(f"the checkpoint in {directory} was written by an older jaxtrain (a per-host data iterator "
                      "position, not restorable exactly): use a new --workdir")
  for key in list(fingerprint) + [k for k in saved_fp if k not in fingerprint]:  # the data's own order: cause first
    if saved_fp.get(key) != fingerprint.get(key):
      raise ConfigError(
          f"the checkpoint in {directory} was trained on other data ({key}: checkpoint {saved_fp.get(key)!r} vs "
          f"config {fingerprint.get(key)!r}): a resume continues the same data; use a new --workdir, or set it back")


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


# What a resume may change: how the parameters are stored, computed and initialized, and the loss, never the
# function they compute. Every other model field, present or future, is semantic: a resume must not change it.
# Sizes are compared as resolved (head_dim=None and head_dim=d_model/num_heads are the same model); a placement's
# own knob only where the placement uses it.
# Changing fp8_history changes the state's shapes, which the structure check refuses by itself.
MAY_CHANGE = ("param_dtype", "compute_dtype", "scan_layers", "remat", "attention", "output", "init_std",
              "depth_scaled_init", "max_seq_len", "fp8", "fp8_grad_scale", "fp8_history")
_ONLY_FOR = {"norm.mix_post_fraction": "mix", "norm.mix_post_layers": "mix", "norm.res_post_tau": "res_post"}
_RESOLVED = {"num_kv_heads": cfg_lib.num_kv_heads, "head_dim": cfg_lib.head_dim, "mlp_dim": cfg_lib.mlp_dim}


def semantics(model: dict) -> dict:
  """{dotted field: value} of a model config (a dict, as saved in checkpoints) but MAY_CHANGE, sizes resolved.

  Two model configs with equal semantics are one model: a checkpoint of one restores into the other."""
  m = ml_collections.ConfigDict(model)
  placement = model.get("norm", {}).get("placement")

  def leaves(node, prefix=""):
    for k, v in node.items():
      key = prefix + k
      if isinstance(v, dict):
        yield from leaves(v, key + ".")
      elif key not in MAY_CHANGE and _ONLY_FOR.get(key, placement) == placement:
        yield key, _RESOLVED[key](m) if key in _RESOLVED else v
  out = dict(leaves(model))
  if placement == "mix":  # Mix-LN's split compared as its count of Post-LN layers: α = 0.25 of 8 equals 2 layers
    n = m.norm
    kinds = layer_kinds("mix", m.num_layers, n.mix_post_fraction, n.get("mix_post_layers"))
    out = {k: v for k, v in out.items() if k not in ("norm.mix_post_fraction", "norm.mix_post_layers")}
    out["norm.mix_post_layers (resolved)"] = kinds.count("post")
  return out


def _check_compatible(saved: dict, current: dict, saved_model: dict, model: dict, directory: str) -> None:
  saved_sem, sem = semantics(saved_model), semantics(model)
  model_diff = [f"model.{k}: checkpoint {v!r} vs config {sem[k]!r}"  # a field absent on one side: older or newer code
                for k, v in saved_sem.items() if k in sem and sem[k] != v]
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
