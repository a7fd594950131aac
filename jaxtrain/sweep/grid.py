"""The grid mini-language of `--grid`: axes, their cartesian product, and the points' names.

Each `--grid` is one axis and the grid is their cartesian product (the last axis varies fastest); fields joined
by `;` in one `--grid` vary together (zipped). Values are `a,b,c` (parsed as the field's type, as `--config.`
values are) or `LO:HI:xK`, the geometric grid LO, LO·K, LO·K², ... up to HI (relative tolerance 1e-9; integers
stay integers, floats are rounded to 12 significant digits, so `1e-4:9e-4:x3` is 0.0001, 0.0003, 0.0009, not
0.00030000000000000003, ...). `seed` is a field like any other (`--grid seed=0,1,2`).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re

import ml_collections

from jaxtrain import config as cfg_lib

GEOMETRIC = re.compile(r"([^:,]+):([^:,]+):x([^:,]+)")
REL_TOL = 1e-9
MAX_POINTS_PER_AXIS = 1000


@dataclasses.dataclass(frozen=True)
class Axis:
  """One `--grid`: its fields (several when zipped) and each field's values as command-line strings."""
  spec: str
  fields: tuple[str, ...]
  raws: tuple[tuple[str, ...], ...]  # raws[i]: the values of fields[i]
  geometric: tuple[bool, ...]

  def __len__(self):
    return len(self.raws[0])


def _number(raw: str, spec: str) -> int | float:
  try:
    return int(raw)
  except ValueError:
    pass
  try:
    return float(raw)
  except ValueError:
    raise cfg_lib.ConfigError(f"--grid {spec}: {raw!r} is not a number (LO:HI:xK needs numbers)") from None


def geometric(lo: int | float, hi: int | float, k: int | float, spec: str = "") -> list[int | float]:
  """LO, LO·K, LO·K², ... while ≤ HI·(1 + 1e-9); integers if all three are, else floats to 12 digits."""
  where = f"--grid {spec}: " if spec else ""
  if not (lo > 0 and k > 1 and hi >= lo):
    raise cfg_lib.ConfigError(f"{where}LO:HI:xK needs 0 < LO <= HI and K > 1 (got LO={lo}, HI={hi}, K={k})")
  ints = all(isinstance(v, int) for v in (lo, hi, k))
  values = []
  while len(values) <= MAX_POINTS_PER_AXIS:
    v = lo * k ** len(values)  # a power, not repeated products: no drift over long grids
    if v > hi * (1 + REL_TOL):
      return values
    values.append(v if ints else float(f"{v:.12g}"))
  raise cfg_lib.ConfigError(f"{where}more than {MAX_POINTS_PER_AXIS} values; raise K or narrow LO:HI")


def parse_axis(spec: str) -> Axis:
  """One `--grid` value: `field=a,b,c`, `field=LO:HI:xK`, or several such joined by `;` (zipped)."""
  fields, raws, geo = [], [], []
  for part in spec.split(";"):
    field, eq, values = (s.strip() for s in part.partition("="))
    if not (field and eq and values):
      raise cfg_lib.ConfigError(f"--grid {spec!r}: expected FIELD=VALUES (a,b,c or LO:HI:xK), several joined by ';'")
    field = field.removeprefix("--config.").removeprefix("config.")
    if field in fields:
      raise cfg_lib.ConfigError(f"--grid {spec!r}: {field} appears twice")
    m = GEOMETRIC.fullmatch(values)
    if m:
      nums = geometric(*(_number(g.strip(), spec) for g in m.groups()), spec=spec)
      raws.append(tuple(repr(v) for v in nums))
    else:
      items = tuple(v.strip() for v in values.split(","))
      if not all(items):
        raise cfg_lib.ConfigError(f"--grid {spec!r}: an empty value in {values!r}")
      raws.append(items)
    fields.append(field)
    geo.append(bool(m))
  lengths = {f: len(r) for f, r in zip(fields, raws)}
  if len(set(lengths.values())) > 1:
    raise cfg_lib.ConfigError(f"--grid {spec!r}: zipped fields need equally many values, got "
                              + ", ".join(f"{n} for {f}" for f, n in lengths.items()))
  return Axis(spec, tuple(fields), tuple(raws), tuple(geo))


def parse_grid(grid) -> list[Axis]:
  """All `--grid` values; a field may be swept by one axis only."""
  if not grid:
    raise cfg_lib.ConfigError("a sweep needs at least one --grid FIELD=VALUES")
  axes = [parse_axis(g) for g in grid]
  seen = [f for a in axes for f in a.fields]
  twice = sorted({f for f in seen if seen.count(f) > 1})
  if twice:
    raise cfg_lib.ConfigError(f"--grid: {twice[0]} is swept by two --grid axes; zip them with ';' or drop one")
  return axes


def generic(raw: str):
  """A value without a schema to go by: bool, int, float, None, else the string (as a `--config.` value reads)."""
  if raw.lower() in ("true", "false"):
    return raw.lower() == "true"
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw
  return value if isinstance(value, (int, float, type(None))) else raw


def typed(config, field: str, raw: str):
  """`raw` parsed as `field`'s type in `config`, by the CLI's own parser; unknown fields name the nearest."""
  c = ml_collections.ConfigDict(config)  # a copy: `config` stays untouched
  try:
    cfg_lib.set_field(c, field, raw)
  except cfg_lib.ConfigError as e:
    raise cfg_lib.ConfigError(f"--grid: {e}") from None
  return cfg_lib.get_field(c, field)


def product(axes: list[Axis]) -> list[dict[str, str]]:
  """The cartesian product of the axes, last fastest: [{field: raw value}, ...]."""
  rows = []
  for combo in itertools.product(*(range(len(a)) for a in axes)):
    rows.append({f: a.raws[j][i] for a, i in zip(axes, combo) for j, f in enumerate(a.fields)})
  return rows


def expand(grid: list[str], config=None) -> list[dict[str, object]]:
  """The points' values, in order: the cartesian product of the `--grid` axes (last fastest), zipped fields together.

  Without `config` values are parsed as the CLI parses a literal (bool, int, float, else str);
  with a loaded `config` as the type of each field there, unknown fields being an error.
  """
  axes = parse_grid(grid)
  parse = (lambda f, r: generic(r)) if config is None else (lambda f, r: typed(config, f, r))
  return [{f: parse(f, r) for f, r in p.items()} for p in product(axes)]


# ---------------------------------------------------------------- names


def short_names(fields) -> dict[str, str]:
  """{field: its shortest dotted suffix that no other field ends with} ('optim.lr' -> 'lr')."""
  out = {}
  for f in fields:
    parts = f.split(".")
    for n in range(1, len(parts) + 1):
      s = ".".join(parts[-n:])
      if not any(g != f and (g == s or g.endswith("." + s)) for g in fields):
        break
    out[f] = s
  return out


def format_value(v) -> str:
  """A value as it appears in a point's name: `%g` for floats, str otherwise."""
  return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(values: dict, shorts: dict[str, str]) -> str:
  """`d_model=64,lr=0.0002`: the point's values in grid order, fields by their short names ('/' becomes '_')."""
  return ",".join(f"{shorts[f]}={format_value(v)}" for f, v in values.items()).replace(os.sep, "_")


def resolve_field(name: str, fields: list[str], what: str) -> str:
  """A swept field named in full or by a unique dotted suffix (as `--plot lr,d_model`)."""
  if name in fields:
    return name
  hits = [f for f in fields if f.endswith("." + name)]
  if len(hits) == 1:
    return hits[0]
  raise cfg_lib.ConfigError(f"{what} {name!r} is {'ambiguous among ' + str(hits) if hits else 'not a swept field'}; "
                            f"the swept fields are {fields}")
