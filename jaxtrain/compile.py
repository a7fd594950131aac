r"""Ahead-of-time compilation for a topology this machine does not have: does the config fit, and how fast will it run?

    python -m jaxtrain.compile --config=configs/lm_small.py --topology=v5e:4x4 [--config.<field>=<value> ...]
    python -m jaxtrain.compile --config=configs/lm_small.py --topology=h100:8 --mfu=0.5

What MaxText's train_compile.py does for MaxText (a "cross ahead-of-time" compile: shaped state and batch, never
built), for jaxtrain: the train step that `train.build(config, mesh)` returns, with its shardings and donation,
lowered and compiled for the target's devices on a CPU-only machine (XLA's compile-only devices: libtpu for TPUs,
the CUDA plugin with a GpuTargetConfigProto for NVIDIA GPUs, no accelerator or driver needed). The config goes
through every check the trainer runs first (`train.check`: the same one-line errors), its mesh settings applied
to the topology's devices, all of them on a multi-host topology (v5e:16x16 is 64 hosts: one compile of the
program every host runs). It prints:

- the mesh, and the compile time;
- per-device memory from the executable's `memory_analysis()`: arguments (the train state's shard and the batch's),
  outputs, the part of them aliased (the donated state, counted once), temporaries, generated code, and their total
  against the chip's HBM (`flops.HBM_BYTES`) with a verdict. On TPU a step that does not fit fails to compile
  (XLA's RESOURCE_EXHAUSTED, as on the pod): that is the verdict. JAX on a GPU takes 75% of its memory unless
  XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise; the verdict is against the whole HBM;
- model FLOPs per step from jaxtrain's formula (flops.py), and XLA's `cost_analysis()` FLOPs beside it, per device,
  labelled: XLA counts the body of a loop once, so a scanned model (model.scan_layers) is undercounted by about
  its layer count;
- the step time expected at `--mfu` (default 0.4) of the chip's peak (flops.py's table, the config's compute dtype;
  train.peak_flops overrides it), and the tokens per second that makes.

Topologies (`--topology`):
    v5e:AxB, v6e:AxB           TPU chips in a 2D torus (v5e:16x16 = v5e-256, 64 hosts of 4 chips)
    v4:AxBxC, v5p:AxBxC        TPU chips in a 3D torus (v4:2x2x2 = v4-16)
    v5e-N, v6e-N, v4-N, v5p-N  Cloud TPU's names (N: chips for v5e/v6e, TensorCores for v4/v5p)
    h100:N, h200:N, a100:N, b200:N   N NVIDIA GPUs on one host; h100:HxN for H hosts of N
    cpu:N                      N CPU devices of this host's kind (jax_num_cpu_devices)

Growth configs (growth.events) compile every phase: each one's model is a program of its own, the last the biggest.
Only the train step is compiled; with train.diagnostics_every the diagnostics step is a second program of about
the same size, and the eval step a smaller one.

Exit codes: 0 fits, 1 does not fit (one line), 2 a command line, config or topology that cannot compile (one line).

The TPU and GPU compilers are not jaxtrain dependencies: `make aot` (part of `make test`) installs libtpu and the
CUDA plugin outside the virtual environment's import path (.venv/tpu-aot, .venv/gpu-aot: installed in it, they
slow every CPU start and print warnings), and this tool adds them to its own path; JAXTRAIN_TPU_AOT and
JAXTRAIN_GPU_AOT name other directories. Installed in the environment itself (`pip install -e '.[aot]'`) they work too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time

from jaxtrain import __main__ as cli
from jaxtrain.config import ConfigError

USAGE = ("python -m jaxtrain.compile --config=CONFIG[:ARG] --topology=TOPOLOGY [--config.<field>=<value> ...]\n"
         "       [--mfu=0.4] [--flagfile=FILE]")
GiB = 2**30


# ---------------------------------------------------------------- topologies

# Cloud TPU names: version -> (libtpu's name, chip config, dims, cores per chip in the vN-M count).
_TPU = {"v5e": ("v5e", "default", 2, 1), "v6e": ("v6e", "default", 2, 1),
        "v4": ("v4", "megacore", 3, 2), "v5p": ("v5", "megacore", 3, 2)}
# Chips -> torus shape of the slice shapes Cloud TPU sells (MaxText's accelerator_to_spec_map.py).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 768: "8x8x12", 1024: "8x8x16", 1536: "8x12x16", 2048: "8x16x16", 3072: "12x16x16",
              4096: "16x16x16", 6144: "16x16x24", 8192: "16x16x32"}

# NVIDIA GPUs as XLA's GPU target specs describe them (openxla/xla xla/backends/gpu/target_config/specs/*.txtpb,
# Apache-2.0), trimmed to the fields jaxlib 0.10.2 reads: (SMs, FP32 lanes per SM, memory bandwidth B/s, L2 bytes,
# clock GHz, device memory bytes, shared memory per SM, opt-in shared memory per block, compute capability, name).
_GPUS = {
    "h100": (132, 128, 3352320000000, 52428800, 1.98, 84942979072, 233472, 232448, (9, 0), "NVIDIA H100 80GB HBM3"),
    "h200": (132, 128, 4800000000000, 52428800, 1.98, 151397597184, 233472, 232448, (9, 0), "NVIDIA H200 141GB HBM3e"),
    "a100": (108, 64, 2039040000000, 41943040, 1.41, 85100068864, 167936, 166912, (8, 0), "NVIDIA A100-SXM4-80GB"),
    "b200": (148, 128, 7672320000000, 132644864, 1.965, 191514411008, 233472, 232448, (10, 0), "NVIDIA B200"),
}


def gpu_target_config(gpu: str) -> str:
  """The GpuTargetConfigProto text of one of `_GPUS` (what `get_topology_desc(platform='cuda')` compiles for)."""
  sms, lanes, bandwidth, l2, ghz, memory, smem, smem_optin, (major, minor), name = _GPUS[gpu]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152 shared_memory_per_core: {smem}
  threads_per_core_limit: 2048 core_count: {sms} fpus_per_core: {lanes} block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535 block_dim_limit_z: 65535 memory_bandwidth: {bandwidth} l2_cache_size: {l2}
  clock_rate_ghz: {ghz} device_memory_size: {memory} shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }} registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 1 }}
device_description_str: "{name}"
"""


@dataclasses.dataclass(frozen=True)
class Target:
  """A parsed --topology: what to ask XLA for."""
  spec: str            # as given
  platform: str        # tpu | gpu | cpu
  name: str            # libtpu's topology name ('v5e:4x4'), the CUDA topology ('1x1x8') or the CPU device count
  chip: str = ""       # TPU chip config (default | megacore) or GPU model (h100)
  devices: int = 1


def parse_topology(spec: str) -> Target:
  """A Target from `--topology`; ConfigError (one line) for anything it does not describe."""
  s = spec.strip().lower()
  kinds = "v5e:4x4, v4:2x2x2, v5p:2x2x1, v6e:2x2, v5e-256, h100:8, h200:8, h100:2x8, cpu:8"
  bad = lambda why: ConfigError(f"--topology={spec!r}: {why}; e.g. one of {kinds}")
  m = re.fullmatch(r"(v5e|v6e|v4|v5p)-(\d+)", s)
  if m:  # Cloud TPU's name: chips (v5e, v6e) or TensorCores (v4, v5p)
    version, n = m.group(1), int(m.group(2))
    libtpu, chip, dims, cores = _TPU[version]
    shape = (_SHAPES_2D if dims == 2 else _SHAPES_3D).get(n // cores if n % cores == 0 else -1)
    if shape is None:
      sizes = sorted(k * cores for k in (_SHAPES_2D if dims == 2 else _SHAPES_3D))
      raise bad(f"{version}-{n} is not a {version} slice size ({', '.join(map(str, sizes[:8]))}, ...)")
    s = f"{version}:{shape}"
  m = re.fullmatch(r"(v5e|v6e|v4|v5p):(\d+(?:x\d+)*)", s)
  if m:
    version, shape = m.group(1), [int(d) for d in m.group(2).split("x")]
    libtpu, chip, dims, _ = _TPU[version]
    if len(shape) != dims or min(shape) < 1:
      raise bad(f"{version} slices are {'AxB' if dims == 2 else 'AxBxC'} chips")
    if math.prod(shape) > 1 and any(d % 2 and d != 1 for d in shape):
      raise bad(f"{version}:{m.group(2)} is not a slice shape (sides are 1 or even)")
    return Target(spec, "tpu", f"{libtpu}:{m.group(2)}", chip, math.prod(shape))
  m = re.fullmatch(r"([a-z]\d+):(?:(\d+)x)?(\d+)", s)
  if m and m.group(1) in _GPUS:
    hosts, per_host = int(m.group(2) or 1), int(m.group(3))
    if not (hosts >= 1 and 1 <= per_host <= 8):
      raise bad(f"{m.group(1)}: one host holds 1 to 8 GPUs (h100:HxN for H hosts of N)")
    return Target(spec, "gpu", f"1x{hosts}x{per_host}", m.group(1), hosts * per_host)
  if m and m.group(1) not in ("cpu",):
    raise bad(f"no GPU target {m.group(1)!r} (known: {', '.join(_GPUS)})")
  m = re.fullmatch(r"cpu:(\d+)", s)
  if m and int(m.group(1)) >= 1:
    return Target(spec, "cpu", m.group(1), devices=int(m.group(1)))
  raise bad("not a topology")


# ---------------------------------------------------------------- the compilers (outside the venv's import path)


def aot_dir(platform: str) -> str:
  """Where `make aot` puts the TPU or GPU compiler: $JAXTRAIN_<TPU|GPU>_AOT, else <venv>/<tpu|gpu>-aot."""
  return os.environ.get(f"JAXTRAIN_{platform.upper()}_AOT") or os.path.join(sys.prefix, f"{platform}-aot")


def _module(platform: str) -> str:
  return {"tpu": "libtpu", "gpu": "jax_plugins.xla_cuda12"}[platform]


def _importable(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # the parent package (jax_plugins) is absent
    return False


def child_env(platform: str, env=None) -> dict:
  """Environment for a child process that compiles for `platform`: its compiler on PYTHONPATH, JAX on the CPU
  backend alone (the compile-only devices need no other), no simulated device count from the parent."""
  env = dict(os.environ if env is None else env, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  extra = [aot_dir(platform)] if platform in ("tpu", "gpu") else []
  env["PYTHONPATH"] = os.pathsep.join(p for p in extra + [env.get("PYTHONPATH", "")] if p)
  return env


def use_compiler(platform: str) -> None:
  """Makes the TPU or GPU compiler importable in this process (before JAX loads its plugins); ConfigError if absent."""
  if platform == "cpu":
    return
  if platform == "tpu":  # libtpu locks /tmp/libtpu_lockfile for the process that drives the chips: none here
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  path = aot_dir(platform)
  if not _importable(_module(platform)) and os.path.isdir(path):
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    if "jax_plugins" in sys.modules:  # a namespace package imported before: let it see the new directory
      sys.modules["jax_plugins"].__path__.append(os.path.join(path, "jax_plugins"))
  if not _importable(_module(platform)):
    what = "libtpu" if platform == "tpu" else "jax-cuda12-plugin and jax-cuda12-pjrt"
    raise ConfigError(f"compiling for {platform.upper()} needs {what} ({path} has none): run `make aot`, or "
                      "`pip install -e '.[aot]'` in an environment used only to compile")


def topology_devices(target: Target) -> list:
  """The compile-only devices of `target`, all hosts' (call `use_compiler` first)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if target.platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) != target.devices:
      raise ConfigError(f"--topology={target.spec}: this process has {len(devices)} CPU devices; run "
                        "`python -m jaxtrain.compile` as its own process (it sets the count before JAX starts)")
    return devices
  try:
    if target.platform == "tpu":
      # Hosts of 2x2 chips, as Cloud TPU VMs have them (one chip: one host); the topology's devices span them all.
      per_host = (1, 1, 1) if target.devices == 1 else (2, 2, 1)
      topo = topologies.get_topology_desc(topology_name=target.name, platform="tpu", chip_config_name=target.chip,
                                          chips_per_host_bounds=per_host, num_slices=1)
    else:
      topo = topologies.get_topology_desc(platform="cuda", topology=target.name,
                                          target_config=gpu_target_config(target.chip))
  except Exception as e:  # pylint: disable=broad-except  # XLA's errors: keep their first line
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"--topology={target.spec}: XLA cannot describe it: {first[:300]}") from None
  return list(topo.devices)


# ---------------------------------------------------------------- compile and measure


@dataclasses.dataclass
class Result:
  """One program's figures (per device unless said otherwise)."""
  label: str                # 'train step' or 'train step, phase 2 (after stack at step 1500)'
  mesh: dict
  lower_s: float
  compile_s: float
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  code: int
  model_flops: float        # jaxtrain's formula, the whole step over all devices
  xla_flops: float          # cost_analysis(), per device
  tokens: int               # per step
  compiled: object = None   # the executable, for callers that want more

  @property
  def total(self) -> int:
    """Peak memory a device needs: arguments + outputs (the donated state's aliased part once) + temporaries +
    generated code."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


class DoesNotFit(Exception):
  """The step does not fit in the chip's memory; the message is the one line to print."""


def memory_of(compiled) -> dict:
  """{arguments, outputs, aliased, temporaries, code} bytes per device from `compiled.memory_analysis()`."""
  m = compiled.memory_analysis()
  return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
          "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
          "code": m.generated_code_size_in_bytes}


def compile_step(config, devices, label: str = "train step", phase_config=None, lr_schedule=None,
                 peak_lr=None) -> Result:
  """Compiles the train step of `phase_config` (default `config`) over `devices` with `config`'s mesh; a Result.

  DoesNotFit when XLA refuses it for memory (TPU); other compile errors propagate.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtrain import config as cfg_lib, data, flops, sharding, train  # pylint: disable=g-import-not-at-top
  c = phase_config or config
  mesh = sharding.make_mesh(cfg_lib.mesh_shape(config.mesh, len(devices)), devices)
  prog = train.build(c, mesh, lr_schedule, peak_lr)
  t = config.train
  batch_sh = jax.sharding.NamedSharding(mesh, sharding.spec(("batch", None)))
  batch = {k: jax.ShapeDtypeStruct((t.global_batch, config.data.seq_len), jnp.dtype(dt), sharding=batch_sh)
           for k, dt in data.packing.batch_dtypes(config.data).items()}  # with the documents' boundaries if on
  start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      lowered = prog.train_step.jitted.lower(prog.abstract_state, batch)
  except RuntimeError as e:
    if "cuDNN not found" not in str(e):
      raise
    raise ConfigError(f"{label}: cuDNN attention (model.attention=cudnn, or auto on a GPU with 16-bit compute) "
                      f"needs cuDNN to compile: install nvidia-cudnn-cu12 beside the CUDA plugin ({aot_dir('gpu')}), "
                      "or compile with --config.model.attention=xla") from None
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
      # libtpu's two wordings: "Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.8G." and "the total memory
      # required for HLO temporaries (126.13G) exceeds available HBM (15.75G)".
      used = re.search(r"Used ([\d.]+)G of ([\d.]+)G hbm", text) or re.search(
          r"required for ([\w ]+?) \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", text)
      if used:
        need, have = map(float, used.groups()[-2:])
        what = f" for {used.group(1)}" if len(used.groups()) == 3 else ""
        how = f"needs {need:.2f}G{what} per chip, {need - have:.2f}G over the {have:.2f}G of HBM XLA can use"
      else:
        how = next((l.strip() for l in text.splitlines() if "RESOURCE_EXHAUSTED" in l), text.splitlines()[0])[:300]
      raise DoesNotFit(f"{label}: does not fit: {how} (XLA, compiling for {devices[0].device_kind})") from None
    raise
  done = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older JAX: one dict per program
  return Result(label, dict(mesh.shape), lowered_at - start, done - lowered_at, **memory_of(compiled),
                model_flops=flops.train_flops_per_step(c.model, config.data.seq_len, t.global_batch),
                xla_flops=float((cost or {}).get("flops", math.nan)), tokens=t.global_batch * config.data.seq_len,
                compiled=compiled)


def device_memory(device, platform: str, n: int) -> tuple[float, str]:
  """(Bytes of memory one device has, what the figure is): the HBM table, or on CPU this host's RAM / n."""
  from jaxtrain import flops  # pylint: disable=g-import-not-at-top
  if platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram / n, f"this host's RAM / {n} devices"
  hbm = flops.HBM_BYTES.get(device.device_kind)
  if hbm is None:
    return math.nan, f"no HBM size for {device.device_kind!r} in jaxtrain/flops.py"
  return hbm, f"HBM of {device.device_kind}"


def _size(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if abs(b) >= GiB / 10 else f"{b / 2**20:.1f} MiB"


def _seconds(t: float) -> str:
  return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} µs"


def _flops(f: float) -> str:
  return "n/a" if math.isnan(f) else f"{f:.3g}"


def report(r: Result, target: Target, device, memory: float, memory_what: str, peak: float, peak_what: str,
           mfu: float) -> tuple[list[str], bool]:
  """(The lines that describe `r`, whether it fits)."""
  n = target.devices
  fits = not memory < r.total  # unknown memory (NaN): not refused
  mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
  lines = [f"{r.label}:",
           f"  mesh            {mesh}",
           f"  compile         {r.compile_s:.1f} s (+ {r.lower_s:.1f} s tracing and lowering)",
           f"  memory/device   arguments {_size(r.arguments)}, outputs {_size(r.outputs)} ({_size(r.aliased)} of them "
           f"aliased to the donated arguments), temporaries {_size(r.temporaries)}, code {_size(r.code)}"]
  if math.isnan(memory):
    lines.append(f"                  total {_size(r.total)} ({memory_what}: no verdict)")
  else:
    verdict = (f"fits, {_size(memory - r.total)} to spare" if fits else
               f"DOES NOT FIT, {_size(r.total - memory)} over")
    lines.append(f"                  total {_size(r.total)} of {_size(memory)} ({memory_what}, {r.total / memory:.0%}):"
                 f" {verdict}")
  lines += [f"  FLOPs/step      {_flops(r.model_flops)} model FLOPs (jaxtrain/flops.py), {_flops(r.model_flops / n)} "
            "per device",
            f"                  {_flops(r.xla_flops)} per device by XLA's cost_analysis() (counts a loop body once: "
            "a scanned model's layers count as one)"]
  if math.isnan(peak):
    lines.append(f"  step time       unknown: {peak_what}; pass --config.train.peak_flops=<per-device FLOP/s>")
  else:
    step_s = r.model_flops / (n * peak * mfu)
    lines.append(f"  step time       {_seconds(step_s)} at {mfu:.0%} MFU of {peak / 1e12:.4g} TFLOP/s per device "
                 f"({peak_what}): {r.tokens / step_s:,.0f} tokens/s")
  return lines, fits


def peak_of(config, device) -> tuple[float, str]:
  """Per-device peak FLOP/s for the config's compute dtype: train.peak_flops, else flops.py's table."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import flops  # pylint: disable=g-import-not-at-top
  if config.train.peak_flops > 0:
    return config.train.peak_flops, "config train.peak_flops"
  if device.platform == "cpu":
    return math.nan, "no peak table for CPUs"
  precision = jax.config.jax_default_matmul_precision
  return flops.device_peak_flops(device.device_kind, config.model.compute_dtype, precision)


def compile_config(config, target: Target, mfu: float = 0.4, out=print) -> tuple[list[Result], bool]:
  """Compiles every growth phase's train step of `config` for `target` and prints their report through `out`;
  (results, all fit). ConfigError before compiling for a config the topology cannot run; DoesNotFit."""
  from jaxtrain import train  # pylint: disable=g-import-not-at-top
  devices = topology_devices(target)
  _, phases = train.check(config, devices)
  device, hosts = devices[0], len({d.process_index for d in devices})
  memory, memory_what = device_memory(device, target.platform, len(devices))
  peak, peak_what = peak_of(config, device)
  out(f"{target.spec}: {len(devices)} x {device.device_kind}" + (f" on {hosts} hosts" if hosts > 1 else "") +
      " (compile-only devices)" * (target.platform != "cpu"))
  results, all_fit = [], True
  for i, p in enumerate(phases):
    label = "train step" if len(phases) == 1 else (
        f"train step, growth phase {i} (steps {p.start}-{phases[i + 1].start if i + 1 < len(phases) else 'end'})")
    r = compile_step(config, devices, label, p.config, p.lr_schedule, p.peak_lr)
    lines, fits = report(r, target, device, memory, memory_what, peak, peak_what, mfu)
    for line in lines:
      out(line)
    if not fits:
      raise DoesNotFit(f"{label}: does not fit: {_size(r.total)} per device, {_size(r.total - memory)} over the "
                       f"{_size(memory)} of {memory_what} (arguments {_size(r.arguments)}, temporaries "
                       f"{_size(r.temporaries)}); lower train.global_batch, raise train.microbatches, shard with "
                       "mesh.fsdp or set model.remat")
    results.append(r)
    all_fit &= fits
  return results, all_fit


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
  p = cli.tool_parser("python -m jaxtrain.compile", USAGE, __doc__)
  p.add_argument("--config", required=True, help="a config file, optionally with :arg for get_config(arg)")
  p.add_argument("--topology", required=True, help="what to compile for: v5e:4x4, v4:2x2x2, v5e-256, h100:8, cpu:8")
  p.add_argument("--mfu", type=float, default=0.4, help="the MFU the expected step time assumes (default 0.4)")
  return p


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 fits, 1 does not fit, 2 a command line, config or topology that cannot compile."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, overrides = cli.parse_tool_args(parser(), argv)
    target = parse_topology(args.topology)
    if not 0 < args.mfu <= 1:
      raise ConfigError(f"--mfu={args.mfu} must be in (0, 1]")
    from jaxtrain import config as cfg_lib  # pylint: disable=g-import-not-at-top
    config = cfg_lib.load(args.config, overrides)
    use_compiler(target.platform)
    if target.platform == "cpu":
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_num_cpu_devices", target.devices)
    print(f"jaxtrain.compile: {args.config} for {target.spec}", flush=True)
    compile_config(config, target, args.mfu, out=lambda line: print(line, flush=True))
  except ConfigError as e:
    print(f"jaxtrain.compile: error: {e}", file=sys.stderr)
    return 2
  except DoesNotFit as e:
    print(f"jaxtrain.compile: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices need no backend but the CPU's
  sys.exit(main())
