"""Sweeps and the studies' runner: a list of points (a grid is one way to make it), each a resumable subprocess.

  grid.py     the `--grid` mini-language: axes, their product, the points' names
  runner.py   points, device slots, process supervision, resume, the exit-code map, the lock and signals
  results.py  result.json, the tables (results.csv, results.md), the plot, grouping over seeds
  cli.py      `python -m jaxtrain.sweep` (its docstring is the user's guide)

`from jaxtrain import sweep` gives the names below: `sweep.run(config, grid, workdir)` for a grid,
`sweep.run_points(points, workdir)` for any list of `sweep.Point`s, `sweep.read_results(workdir)`.
"""

from jaxtrain.sweep.cli import USAGE, main, parser
from jaxtrain.sweep.grid import (Axis, expand, format_value, geometric, parse_axis, parse_grid, point_name,
                                 resolve_field, short_names)
from jaxtrain.sweep.results import (Reporter, describe, group, read_result, read_results, summary, table_rows,
                                    to_csv, to_markdown, value)
from jaxtrain.sweep.runner import (EXIT_STATUS, FINISHED, STATUSES, Attempt, Interrupted, Plan, Point, Slot,
                                   check_definition, command_line, dry_run, finish, grid_points, losses, plan, run,
                                   run_points, seed_name, seeded, slots, start, status_of, study_seeds,
                                   with_seeds)
