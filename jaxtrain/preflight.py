"""Preflight: every check that can run before compiling, in one fixed order.

`validate` runs `config.check` (the schema's own rules: choices, sizes, divisibility,
lengths, vocabulary; it resolves the mesh) and then each feature's
`check(config, target)`, where the feature's rules live beside its code. Each raises
`config.ConfigError` with a one-line message that names the problem and the fix.
"""

from __future__ import annotations

from jaxtrain import attention, data, downstream, fp8, growth, hosts, munit, optim, placement, profiling, stablemax
from jaxtrain import trackers
from jaxtrain import config as cfg_lib

# The order the features are checked in, after config.check: the first failing rule is the one reported.
CHECKS = (hosts.check, placement.check, attention.check, stablemax.check, optim.check, munit.check, fp8.check,
          growth.check, data.check, trackers.check, profiling.check, downstream.check)


def validate(config, num_devices: int, vocab_size: int | None = None, platform: str | None = None,
             process_count: int = 1, local_devices: int | None = None,
             compute_capability: str | None = None) -> dict[str, int]:
  """Checks everything that can be checked before compiling; returns the mesh shape.

  `platform` ('cpu', 'gpu', 'tpu'; None: not checked) rules out what the hardware cannot do.
  `process_count` and `local_devices` (this process's share of the `num_devices`; None:
  not checked) rule out host layouts that cannot run (`hosts.check`).

  Raises ConfigError with a one-line message naming the problem and the fix.
  """
  target = cfg_lib.Target(num_devices, vocab_size, platform, process_count, local_devices, compute_capability)
  mesh = cfg_lib.check(config, target)
  for check in CHECKS:
    check(config, target)
  return mesh
