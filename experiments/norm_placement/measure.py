"""What the norm-placement study measures in each run: its metrics, and on its final checkpoint the angular distance
between layers' inputs and the loss increase when each layer is skipped (`jaxtrain.analysis`).

`analyse` returns the whole measurement (with the diagnostics rows and the angular matrices, for the plots);
`measurement` is what summary.json keeps of it, the numbers the report and its checks print (the report is
rebuilt from it alone).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxtrain import config as cfg_lib
from jaxtrain import analysis, data, sharding, train
from jaxtrain.checkpoint import Checkpointer
from jaxtrain.metrics import read_metrics


def analyse(row, config) -> dict:
  """One placement's run (its runner result `row`): metrics, diagnostics, and its final checkpoint's per-layer
  measurements."""
  workdir = row["workdir"]
  rows = read_metrics(workdir)
  out = {"placement": row["values"]["placement"], "seed": row["values"].get("seed", 0),
         "status": "finished" if row["status"] == "ok" else row["status"],
         "seconds": row["wall_s"], "eval": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
         "diag": [r for r in rows if "layers/grad_norm" in r]}
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  prog = train.build(config, mesh)
  restored = Checkpointer(f"{workdir}/checkpoints", keep=99).restore_latest(prog.abstract_state,
                                                                              config.model.to_dict())
  params = restored.state["params"]
  kw = dict(seq_len=config.data.seq_len, global_batch=config.train.global_batch)
  batches = data.eval_batches(config.data, num_batches=config.train.eval_batches, **kw)
  # Every eval batch (not only the first: 16 last tokens are a noisy sample), averaged; equal batch sizes, so the
  # mean of the batches' means is the mean over all their sequences.
  last, every = [], []
  for b in batches:
    states = analysis.stream_states(prog.graphdef, params, b["inputs"])
    last.append(analysis.stream_distances(states, last_token=True))
    every.append(analysis.stream_distances(states, last_token=False))
  out["angular_last"], out["angular_all"] = np.mean(last, axis=0), np.mean(every, axis=0)
  out["final_loss"], out["skip_drop"] = analysis.layer_skip_drops(
      prog.graphdef, params, batches, config.model.num_layers,
      output=config.model.output, dtype=config.train.loss_dtype)
  out["step"] = restored.step
  return out


def measurement(r) -> dict:
  """summary.json's numbers for one placement: final loss, per-layer skip drop and angular distance to the next
  layer, and the diagnostics' shapes the checks compare (residual variance growth, gradient norms over depth)."""
  L = len(r["skip_drop"])
  deep = slice(2 * L // 3, L)
  angular = np.asarray(r["angular_last"][0][:L])
  m = {"placement": r["placement"], "seed": r["seed"], "status": r["status"], "step": int(r["step"]),
       "seconds": float(r["seconds"]),
       "final_loss": float(r["final_loss"]), "final_ppl": float(np.exp(r["final_loss"])),
       "skip_drop": [float(x) for x in r["skip_drop"]], "angular_next": [float(x) for x in angular],
       "angular_next_all": [float(x) for x in np.asarray(r["angular_all"][0][:L])],
       "skip_first_mean": float(np.mean(np.asarray(r["skip_drop"])[: L // 3])),
       "skip_deep_mean": float(np.mean(np.asarray(r["skip_drop"])[deep])),
       "angular_deep_mean": float(np.mean(angular[deep])), "angular_first_mean": float(np.mean(angular[: L // 3])),
       "diagnostics": bool(r["diag"])}
  if r["diag"]:
    var = np.asarray(r["diag"][-1]["layers/resid_var"])
    g_early = np.asarray(r["diag"][0]["layers/grad_norm"])
    g_mean = np.mean([x["layers/grad_norm"] for x in r["diag"]], axis=0)
    m |= {"resid_var_growth": float(var[-1] / var[0]), "grad_early_ratio": float(g_early[-1] / g_early[0]),
          "grad_early_step": int(r["diag"][0]["step"]), "grad_cv": float(np.std(g_mean) / np.mean(g_mean))}
  return m


def load_config(config_path, placement, size, steps):
  """The study's config for one placement, and its overrides; `steps` rescales the step-based intervals with it.
  `size`: "cpu" (the config's default size), "small" or "gpu"."""
  overrides = []
  if steps:
    overrides = [f"train.steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
                 f"train.diagnostics_every={max(1, steps // 10)}", f"train.eval_every={max(1, steps // 4)}",
                 f"train.checkpoint_every={max(1, steps // 4)}"]
  spec = f"{config_path}:{placement}" + ("" if size == "cpu" else f",{size}")
  return spec, overrides, cfg_lib.load(spec, overrides)
