"""python -m jaxtrain.compile: the real train step compiled for a TPU topology, an H100 target and cpu:8 on this
CPU-only machine; the memory it reports is the executable's own, a step too big for the chip is refused in one line.

One child process compiles both configs for the three targets (the compile-only devices need a fresh JAX backend,
and the TPU and GPU compilers live outside the venv's import path: jaxtrain/compile.py). Under `make test` (which
installs them, JAXTRAIN_TPU_AOT and JAXTRAIN_GPU_AOT set) a missing compiler fails its test; elsewhere it skips,
saying why.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtrain import attention, compile as aot, flops
from jaxtrain import config as cfg_lib
from jaxtrain import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lm_small shrunk where compile time goes (sequence, layers; one sequence per device), its widths and heads kept.
CONFIGS = {"default": ("configs/default.py", []),
           "lm_small": ("configs/lm_small.py", ["data.seq_len=128", "model.num_layers=1"])}
TOO_BIG = ("configs/default.py", ["train.global_batch=65536"])  # ~100 GiB of activations per chip
TARGETS = {"tpu": "v5e:2x2", "gpu": "h100:1", "cpu": "cpu:8"}

# In the child: each config through compile_config (what the CLI runs), with, beside the printed lines, what the
# executable itself says and what the state's and batch's shards hold; then the too-big config on the TPU through
# the CLI's main().
_CHILD = r'''
import contextlib, io, json, math, sys
from jaxtrain import compile as aot, config as cfg_lib
targets, configs, too_big = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for platform in list(targets):
  try:
    aot.use_compiler(platform)
  except cfg_lib.ConfigError as e:
    out[platform] = {"missing": str(e)}
    del targets[platform]
import jax
jax.config.update("jax_num_cpu_devices", 8)
for platform, spec in targets.items():
  target, out[platform] = aot.parse_topology(spec), {}
  for name, (path, overrides) in configs.items():
    lines = []
    config = cfg_lib.load(path, overrides + [f"train.global_batch={target.devices}"])
    (r,), fits = aot.compile_config(config, target, out=lines.append)
    infos, shardings = jax.tree.leaves(r.compiled.args_info), jax.tree.leaves(r.compiled.input_shardings[0])
    shard_bytes = sum(math.prod(s.shard_shape(i.shape)) * i.dtype.itemsize for i, s in zip(infos, shardings))
    out[platform][name] = dict(lines=lines, fits=fits, total=r.total, own=aot.memory_of(r.compiled),
                               shard_bytes=shard_bytes, model_flops=r.model_flops, xla_flops=r.xla_flops,
                               mosaic="tpu_custom_call" in r.compiled.as_text(), mesh=r.mesh)
  if platform == "tpu":
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      rc = aot.main(["--config=" + too_big[0], "--topology=" + spec] + ["--config." + o for o in too_big[1]])
    out[platform]["too_big"] = dict(rc=rc, stderr=err.getvalue())
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def compiled():
  """{platform: {config name: figures}} from one child process."""
  env = aot.child_env("tpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (aot.aot_dir("gpu"), env["PYTHONPATH"]) if p)
  run = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(TARGETS), json.dumps(CONFIGS), json.dumps(TOO_BIG)],
                       capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))[7:])


def _results(compiled, platform):
  out = compiled[platform]
  if "missing" in out:
    required = f"JAXTRAIN_{platform.upper()}_AOT" in os.environ  # set by `make test`, which installs the compilers
    (pytest.fail if required else pytest.skip)(out["missing"])
  return out


def _check_report(res, n_devices, xla_flops=True):
  """The printed total is the executable's own memory_analysis(); arguments hold the state's and batch's shards;
  the model FLOPs are flops.py's."""
  own = res["own"]
  assert res["total"] == own["arguments"] + own["outputs"] - own["aliased"] + own["temporaries"] + own["code"]
  assert own["temporaries"] > 0 and own["aliased"] > 0  # the donated state: outputs written over the arguments
  assert any(aot._size(res["total"]) in line and "fits" in line for line in res["lines"]), res["lines"]
  assert any(aot._size(own["temporaries"]) in line for line in res["lines"])
  # TPUs pad small arrays to their (8, 128) tiles: arguments may exceed the shards' bytes, never fall short.
  assert res["shard_bytes"] <= own["arguments"] <= 2 * res["shard_bytes"] + 2**20, (own, res["shard_bytes"])
  assert any(f"{res['model_flops']:.3g} model FLOPs" in line for line in res["lines"])
  assert res["xla_flops"] > 0 if xla_flops else math.isnan(res["xla_flops"])  # the GPU compiler counts none
  assert math.prod(res["mesh"].values()) == n_devices


def _model_flops(name, devices):
  path, overrides = CONFIGS[name]
  c = cfg_lib.load(os.path.join(REPO, path), overrides + [f"train.global_batch={devices}"])
  return flops.train_flops_per_step(c.model, c.data.seq_len, c.train.global_batch)


def test_compiles_for_a_tpu_topology_with_splash_attention_and_refuses_a_step_too_big_for_hbm(compiled):
  out = _results(compiled, "tpu")
  for name in CONFIGS:
    _check_report(out[name], 4)
    assert out[name]["model_flops"] == _model_flops(name, 4)
    assert "TPU v5 lite" in out[name]["lines"][0]
    assert out[name]["mosaic"]  # model.attention=auto is splash on TPU: a Pallas (Mosaic) kernel, not interpreted
  assert out["too_big"]["rc"] == 1
  line, = out["too_big"]["stderr"].strip().splitlines()  # one line
  assert "does not fit" in line and "HBM" in line, line


def test_compiles_for_an_h100_target(compiled):
  out = _results(compiled, "gpu")
  for name in CONFIGS:
    _check_report(out[name], 1, xla_flops=False)
    assert out[name]["model_flops"] == _model_flops(name, 1)
    assert "NVIDIA H100 80GB HBM3" in out[name]["lines"][0]
    assert "step time" in out[name]["lines"][-1] and "TFLOP/s" in out[name]["lines"][-1]


def test_compiles_for_cpu_devices(compiled):
  out = _results(compiled, "cpu")
  for name in CONFIGS:
    _check_report(out[name], 8)
    assert out[name]["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("spec, expect", [
    ("v5e:16x16", ("tpu", "v5e:16x16", "default", 256)), ("v5e-256", ("tpu", "v5e:16x16", "default", 256)),
    ("v4-16", ("tpu", "v4:2x2x2", "megacore", 8)), ("v5p:2x2x1", ("tpu", "v5:2x2x1", "megacore", 4)),
    ("v6e:2x2", ("tpu", "v6e:2x2", "default", 4)), ("h100:8", ("gpu", "1x1x8", "h100", 8)),
    ("h200:2x8", ("gpu", "1x2x8", "h200", 16)), ("cpu:8", ("cpu", "8", "", 8))])
def test_topology_strings(spec, expect):
  t = aot.parse_topology(spec)
  assert (t.platform, t.name, t.chip, t.devices) == expect


@pytest.mark.parametrize("spec", ["v5e:3x3", "v5e:4x4x4", "v4:2x2", "v5e-12", "h100:9", "x100:8", "cpu:0", "tpu"])
def test_a_bad_topology_is_refused_in_one_line(spec, capsys):
  assert aot.main(["--config=configs/default.py", f"--topology={spec}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "--topology" in err, err


def test_splash_attention_equals_xla_on_cpu_in_pallas_interpret_mode():
  """The TPU kernel's outputs and gradients (jaxtrain's scale, layout and grouped heads around it), run by Pallas'
  interpreter at its smallest tile."""
  B, T, H, G, K = 1, 128, 2, 1, 16
  q, k, v = (jax.random.normal(jax.random.key(i), (B, T, n, K)) for i, n in enumerate((H, G, G)))
  ct = jax.random.normal(jax.random.key(9), (B, T, H, K))
  outs = {}
  for kind in ("splash", "xla"):
    f = lambda *a: attention.causal(*a, kind)[0]  # pylint: disable=cell-var-from-loop
    out, vjp = jax.vjp(f, q, k, v)
    outs[kind] = (out, vjp(ct))
  np.testing.assert_allclose(outs["splash"][0], outs["xla"][0], rtol=1e-5, atol=1e-5)
  for g, r in zip(outs["splash"][1], outs["xla"][1]):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
  assert attention.kernel("auto", "float32", "tpu") == "splash"


def test_splash_is_refused_off_tpu_and_at_lengths_its_tile_does_not_divide(tiny):
  with pytest.raises(cfg_lib.ConfigError, match="TPU kernel"):
    preflight.validate(tiny(model__attention="splash", data__seq_len=128, model__max_seq_len=128), 8, platform="gpu")
  with pytest.raises(cfg_lib.ConfigError, match="divisible by 128"):
    preflight.validate(tiny(model__attention="splash"), 8, platform="tpu")
  preflight.validate(tiny(model__attention="splash", data__seq_len=128, model__max_seq_len=128), 8, platform="tpu")
