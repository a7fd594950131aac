"""One grokking run in a workdir, trained in saved segments: a killed run resumes, a branch starts from any segment.

  DIR/config.json              the run's config (and the state it started from); a rerun must match it
  DIR/checkpoints/<step>.pkl   the full state (params, optimizer state, step) at each segment's end, numpy
  DIR/segments/<step>.npz      that segment's history (per-step metrics, evaluations, wall time)
  DIR/history.npz              the whole history once the run is done (`load_history`)
  DIR/metrics.jsonl            one line per evaluation (step, loss, eval_loss = test loss, accuracies, SC ...)

Segments end at multiples of `save_every` and at `c.steps`; a segment runs the same jitted chunks as one long
`trainer.train` call, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np

from grokking.trainer import load_data, train

log = logging.getLogger("grokking")

# The last per-step values each metrics.jsonl line carries next to the evaluation.
STEP_KEYS = ("loss", "accuracy", "sc_fraction", "zero_loss_fraction", "weight_norm", "grad_weight_cos", "grad_norm")


def _write(path: str, write) -> None:
  """`write(file)` to `path`, whole or not at all (a kill mid-write leaves no file)."""
  with open(path + ".tmp", "wb") as f:
    write(f)
  os.replace(path + ".tmp", path)


def load_state(workdir: str, step: int) -> dict:
  """The saved state of the run in `workdir` at `step` (a segment's end)."""
  path = os.path.join(workdir, "checkpoints", f"{step}.pkl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: no state of {workdir} at step {step} (states are saved at the "
                            "ends of its segments, every save_every steps)")
  with open(path, "rb") as f:
    return pickle.load(f)


def _flat(h: dict) -> dict:
  flat = {k: v for k, v in h.items() if k not in ("eval", "states")}
  return flat | {f"eval/{k}": v for k, v in h["eval"].items()}


def _unflat(z) -> dict:
  h = {k: z[k] for k in z.files if not k.startswith("eval/") and k != "config"}
  return h | {"eval": {k[5:]: z[k] for k in z.files if k.startswith("eval/")}}


def _join(parts: list[dict]) -> dict:
  """Segments' histories as one: the evaluation at a segment's start is the previous one's end, kept once."""
  h = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
       if k not in ("eval", "seconds", "seconds_per_step")}
  h["eval"] = {k: np.concatenate([parts[0]["eval"][k]] + [p["eval"][k][1:] for p in parts[1:]])
               for k in parts[0]["eval"]}
  h["seconds"] = float(sum(p["seconds"] for p in parts))
  h["seconds_per_step"] = float(sum(p["seconds_per_step"] * len(p["step"]) for p in parts) / len(h["step"]))
  return h


def _metrics_lines(h: dict) -> str:
  ev, lines = h["eval"], []
  for i, step in enumerate(ev["step"]):
    row = {"step": int(step)}
    at = np.nonzero(h["step"] == step)[0]
    if at.size:
      row |= {k: float(h[k][at[0]]) for k in STEP_KEYS}
    row |= {k: float(v[i]) for k, v in ev.items() if k != "step"} | {"eval_loss": float(ev["test_loss"][i])}
    lines.append(json.dumps(row) + "\n")
  return "".join(lines)


def run(c, workdir: str, *, save_every: int | None = None, init_from: tuple[str, int] | None = None, data=None,
        verbose: bool = True) -> dict:
  """Trains config `c` into `workdir` (resuming what it holds); returns the whole history (as `trainer.train`'s,
  with "config").

  `save_every`: steps per saved segment (a multiple of `c.log_every`; None: one segment). `init_from`: (workdir,
  step) of another run whose saved state this one continues (its optimizer state cast to `c.opt_dtype`).
  """
  if save_every is not None and (save_every <= 0 or save_every % c.log_every):
    raise ValueError(f"save_every={save_every} must be a positive multiple of log_every={c.log_every}")
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  os.makedirs(os.path.join(workdir, "segments"), exist_ok=True)
  spec = {"config": c.to_dict(), "init_from": None if init_from is None else [os.path.abspath(init_from[0]),
                                                                                int(init_from[1])]}
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != json.loads(json.dumps(spec)):
      raise ValueError(f"{workdir} holds a run with another config or start ({path}); use a new workdir")
  else:
    _write(path, lambda f: f.write(json.dumps(spec, indent=1).encode()))
  state = None if init_from is None else load_state(*init_from)
  start = 0 if state is None else int(state["step"])
  every = save_every or c.steps - start
  ends = list(range(start + every, c.steps, every)) + [c.steps]
  parts = []
  for end in ends:
    seg = os.path.join(workdir, "segments", f"{end}.npz")
    if os.path.exists(seg) and os.path.exists(os.path.join(workdir, "checkpoints", f"{end}.pkl")):
      log.info("%s: reusing steps to %d", workdir, end)
      with np.load(seg) as z:
        parts.append(_unflat(z))
      state = None
      continue
    if state is None and parts:  # the previous segment was reused: continue from its saved state
      state = load_state(workdir, int(parts[-1]["step"][-1]))
    data = load_data(c) if data is None else data
    with c.unlocked():
      c.steps = end
    h = train(c, data, verbose=verbose, state=state, save_at=(end,))
    state = h.pop("states")[end]
    _write(os.path.join(workdir, "checkpoints", f"{end}.pkl"), lambda f, s=state: pickle.dump(s, f))
    _write(seg, lambda f, h=h: np.savez_compressed(f, **_flat(h)))
    parts.append(h)
    _write(os.path.join(workdir, "metrics.jsonl"), lambda f: f.write(_metrics_lines(_join(parts)).encode()))
  h = _join(parts)
  _write(os.path.join(workdir, "metrics.jsonl"), lambda f: f.write(_metrics_lines(h).encode()))
  _write(os.path.join(workdir, "history.npz"),
         lambda f: np.savez_compressed(f, config=json.dumps(c.to_dict()), **_flat(h)))
  return h | {"config": c.to_dict()}


def load_history(workdir: str) -> dict:
  """The finished run's history (as `run` returned it), from DIR/history.npz."""
  with np.load(os.path.join(workdir, "history.npz")) as z:
    return _unflat(z) | {"config": json.loads(str(z["config"]))}
