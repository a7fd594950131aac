"""Score a run's checkpoint on downstream tasks by log-likelihood, as lm-evaluation-harness does.

    python -m jaxtrain.evaluate --workdir=runs/default --tasks=tests/data/tasks
    python -m jaxtrain.evaluate --workdir=runs/default --tasks=mc.jsonl,wiki.jsonl --step=600 --output=scores.json

Task files (JSONL: multiple_choice and perplexity documents), the requests and the metrics are
jaxtrain/downstream.py's (docs/evaluation.md). The checkpoint is read with `jaxtrain.run.load_run` (parameters
only, on one device, nothing written into the run) and its own tokenizer (`Model.tokenizer`); the window is
model.max_seq_len (what an export's max_position_embeddings says, so lm-eval on the export reads the same
tokens) unless --max_length. One forward pass is jitted per padded shape ([--batch_size, a power of two]).

Refused in one line each (exit code 2): a task file that is missing, empty, not JSON, or has a document with
an unknown type or a missing field (the file, line and field named); a workdir without checkpoints; a step it
does not have.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxtrain.config import ConfigError

USAGE = ("python -m jaxtrain.evaluate --workdir=RUN --tasks=FILE.jsonl[,FILE|DIR...] [--step=N] [--batch_size=16] "
         "[--max_length=W] [--output=FILE.json]")


def model_loglik(model):
  """`downstream.score`'s loglik for a `run.Model`: one jitted forward pass per padded shape."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtrain import downstream  # pylint: disable=g-import-not-at-top

  @jax.jit
  def loglik(params, inputs_BT, targets_BT, mask_BT):
    return downstream.loglikelihood(nnx.merge(model.graphdef, params)(inputs_BT), targets_BT, mask_BT)

  return lambda inputs_BT, targets_BT, mask_BT: loglik(model.params, inputs_BT, targets_BT, mask_BT)


def evaluate(workdir: str, tasks, step: int | None = None, batch_size: int = 16, max_length: int | None = None,
             with_loglikelihoods: bool = False) -> dict:
  """{'workdir', 'step', 'max_length', 'tasks': {task: {metric: value}}} for checkpoint `step` (default: newest)."""
  from jaxtrain import downstream  # pylint: disable=g-import-not-at-top
  from jaxtrain.run import load_run  # pylint: disable=g-import-not-at-top
  loaded = downstream.load_tasks(tasks)  # bad task files are refused before any checkpoint is read
  if batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be positive")
  run = load_run(workdir)
  if step is not None and step not in run.steps:
    raise ConfigError(f"--step={step}: {workdir} has checkpoints at steps {run.steps}; pick one of them")
  model = run.model(step)
  window = max_length or model.config.model.max_seq_len
  if not 0 < window <= model.config.model.max_seq_len:
    raise ConfigError(f"--max_length={max_length} must be in 1..model.max_seq_len={model.config.model.max_seq_len}")
  results = downstream.evaluate(loaded, model.tokenizer, model_loglik(model), window, batch_size,
                                with_loglikelihoods)
  return {"workdir": workdir, "step": model.step, "max_length": window, "tasks": results}


def parser() -> argparse.ArgumentParser:
  from jaxtrain import __main__ as cli  # pylint: disable=g-import-not-at-top
  p = cli.tool_parser("python -m jaxtrain.evaluate", USAGE, __doc__)
  p.add_argument("--workdir", required=True, help="the run to score")
  p.add_argument("--tasks", required=True, help="comma-separated task files (JSONL) or directories of them")
  p.add_argument("--step", type=int, help="the checkpoint step (default: the newest)")
  p.add_argument("--batch_size", type=int, default=16, help="requests per forward pass")
  p.add_argument("--max_length", type=int, help="the window in tokens (default: model.max_seq_len)")
  p.add_argument("--output", help="also write the results as JSON here")
  return p


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 with the scores printed, 2 for a command that cannot run (one line)."""
  from jaxtrain import __main__ as cli  # pylint: disable=g-import-not-at-top
  done = cli.run_tool("evaluate", parser(), argv, lambda a: evaluate(a.workdir, a.tasks, a.step, a.batch_size,
                                                                      a.max_length))
  if done is None:
    return 2
  args, out = done
  print(f"{out['workdir']} step {out['step']} (window {out['max_length']} tokens)")
  for task, values in out["tasks"].items():
    print(f"  {task}: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in values.items()))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(out, f, indent=2)
    print(f"written to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
