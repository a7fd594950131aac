"""Config loading, overrides and the checks made before anything compiles."""

import jax
import pytest

from jaxtrain import config as cfg_lib
from jaxtrain import preflight
from jaxtrain import model, sharding
from jaxtrain.__main__ import parse


def test_config_files_load_and_variants():
  for spec in ("configs/default.py", "configs/lm_small.py", "configs/lm_small.py:tiny",
               "configs/lm_small.py:medium"):
    c = cfg_lib.load(spec)
    cfg_lib.check_keys(c)
  assert cfg_lib.load("configs/lm_small.py:tiny").model.d_model < cfg_lib.load("configs/lm_small.py").model.d_model
  with pytest.raises(cfg_lib.ConfigError, match="unknown size 'huge'"):
    cfg_lib.load("configs/lm_small.py:huge")


def test_overrides_parse_types():
  c, workdir = parse(["--config=configs/default.py", "--workdir=/tmp/x", "--config.model.num_layers=12",
                      "--config.model.num_kv_heads=2", "--config.optim.lr=1", "--config.model.qk_norm=true",
                      "--config.data.name=c4/en", "--config.mesh.fsdp=4"])
  assert (c.model.num_layers, c.model.num_kv_heads, c.optim.lr, c.model.qk_norm) == (12, 2, 1.0, True)
  assert isinstance(c.optim.lr, float) and c.data.name == "c4/en" and c.mesh.fsdp == 4 and workdir == "/tmp/x"


@pytest.mark.parametrize("override, message", [
    ("modle.num_layers=2", "did you mean 'model.num_layers'"),
    ("model.num_layrs=2", "did you mean 'model.num_layers'"),
    ("model.num_layers=two", "expected a value of type int"),
    ("model.qk_norm=maybe", "expected true or false"),
    ("model.num_layers", "--config.model.num_layers has no value: write --config.model.num_layers=VALUE"),
    ("model.num_layrs", "did you mean 'model.num_layers'"),
])
def test_bad_overrides(override, message):
  with pytest.raises(cfg_lib.ConfigError, match=message):
    cfg_lib.load("configs/default.py", [override])


def test_config_file_with_unknown_key(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from jaxtrain.config import base\n"
                  "def get_config(arg=None):\n  c = base()\n  c.train.stepz = 3\n  return c\n")
  with pytest.raises(cfg_lib.ConfigError, match="'train.stepz'; did you mean 'train.steps'"):
    cfg_lib.load(str(path))
  with pytest.raises(cfg_lib.ConfigError, match="does not exist"):
    cfg_lib.load(str(tmp_path / "missing.py"))


@pytest.mark.parametrize("overrides, devices, message", [
    ({"train.global_batch": 12}, 8, "not divisible by the data-parallel size 8"),
    ({"train.global_batch": 16, "train.microbatches": 4}, 8, "microbatch of 4 sequences"),
    ({"train.global_batch": 16, "train.microbatches": 3}, 1, "not divisible by train.microbatches"),
    ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}, 8, "has 4 devices but 8 are present"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, 8, "at most one axis"),
    ({"mesh.data": 1, "mesh.tensor": 8, "model.num_heads": 4}, 8, "num_heads=4 is not divisible by the tensor axis"),
    ({"model.num_heads": 4, "model.num_kv_heads": 3}, 1, "not a multiple of model.num_kv_heads"),
    ({"data.seq_len": 512}, 1, "exceeds model.max_seq_len"),
    ({"model.norm.kind": "batchnorm"}, 1, "model.norm.kind='batchnorm' is not one of"),
    ({"optim.warmup_steps": 10_000, "optim.schedule_steps": 100}, 1, "exceeds optim.schedule_steps=100"),
    ({"model.vocab_size": 128}, 1, "the tokenizer has 256 tokens"),
    ({"model.num_heads": 0}, 1, "model.num_heads=0 must be positive"),
    ({"model.d_model": 2}, 1, "model.d_model=2 is not divisible by model.num_heads=4"),
    ({"model.num_kv_heads": 0}, 1, "model.num_kv_heads=0 must be positive"),
    ({"model.mlp_dim": -64}, 1, "model.mlp_dim=-64 must be positive"),
    ({"model.norm.eps": 0.0}, 1, "model.norm.eps=0.0 must be positive"),
    ({"train.eval_batches": 0}, 1, "train.eval_batches=0 must be positive"),
    ({"optim.lr": 0.0}, 1, "optim.lr=0.0 must be positive"),
    ({"model.param_dtype": "bfloat16"}, 1, "late small updates round away: keep model.param_dtype=float32"),
    ({"optim.clip_norm": -1.0}, 1, "optim.clip_norm=-1.0 must be >= 0"),
    ({"optim.b2": 1.0}, 1, r"optim.b2=1.0 must be in \[0, 1\)"),
    ({"optim.min_lr_ratio": 2.0}, 1, r"optim.min_lr_ratio=2.0 must be in \[0, 1\]"),
    ({"optim.schedule": "wsd", "optim.warmup_steps": 10, "optim.decay_fraction": 0.9, "optim.schedule_steps": 20},
     1, "schedule=wsd: warmup_steps=10 plus the decay"),
])
def test_validation_errors(tiny, overrides, devices, message):
  c = tiny()
  for key, value in overrides.items():
    cfg_lib.set_field(c, key, str(value))
  with pytest.raises(cfg_lib.ConfigError, match=message):
    preflight.validate(c, devices, vocab_size=256)


def test_platform_checks(tiny):
  c = tiny(model__attention="cudnn", model__compute_dtype="bfloat16")
  preflight.validate(c, 1, 256, platform="gpu")
  with pytest.raises(cfg_lib.ConfigError, match="cudnn runs on NVIDIA GPUs only, not on cpu"):
    preflight.validate(c, 1, 256, platform="cpu")


def test_valid_configs_pass(tiny):
  assert preflight.validate(tiny(), 8, 256) == {"data": 8, "fsdp": 1, "tensor": 1}
  c = tiny()
  c.mesh.update(data=2, fsdp=-1, tensor=2)
  assert preflight.validate(c, 8, 256) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_parameter_divisibility_is_checked_before_compiling(tiny):
  c = tiny(model__mlp_dim=66)
  _, params, axes = model.abstract(c.model)
  with pytest.raises(cfg_lib.ConfigError, match=r"parameter .*mlp.*cannot be split 4 ways over mesh axes \('tensor',\)"):
    sharding.check_divisible(params, axes, {"data": 2, "fsdp": 1, "tensor": 4})
  sharding.check_divisible(params, axes, {"data": 8, "fsdp": 1, "tensor": 1})  # pure DP splits no parameter


def test_rules_table_maps_logical_names():
  assert sharding.spec(("batch", None, "heads", None)) == jax.sharding.PartitionSpec(("data", "fsdp"), None,
                                                                                       "tensor", None)
  assert sharding.spec(("layers", "embed", "mlp")) == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


# ---------------------------------------------------------------- host layout (issue 11)


@pytest.mark.parametrize("mesh, processes, local, message", [
    # The case: 2 processes of 4, all 8 devices on the tensor axis (died in make_array_from_process_local_data).
    ({"data": 1, "fsdp": 1, "tensor": 8}, 2, 4, "mesh.tensor=8 does not divide the 4 devices of each of the 2 proc"),
    ({"data": 2, "fsdp": 1, "tensor": 4}, 4, 2, "mesh.tensor=4 does not divide the 2 devices"),
    ({"data": -1, "fsdp": 1, "tensor": 1}, 2, 3, "8 devices are not 2 processes x 3"),
    # Without the local count (a caller that cannot tell) the batch-shard check still catches it.
    ({"data": 1, "fsdp": 1, "tensor": 8}, 2, None, r"mesh.data·mesh.fsdp=1 is not divisible by the 2 processes"),
])
def test_host_layout_errors(tiny, mesh, processes, local, message):
  c = tiny(model__num_heads=8, model__d_model=64)
  c.mesh.update(mesh)
  preflight.validate(c, 8, 256)  # fine on one process
  with pytest.raises(cfg_lib.ConfigError, match=message):
    preflight.validate(c, 8, 256, process_count=processes, local_devices=local)


def test_host_layouts_that_run(tiny):
  c = tiny(model__num_heads=8, model__d_model=64)
  for mesh, processes, local in [({"data": 1, "fsdp": -1, "tensor": 4}, 2, 4),
                                 ({"data": 2, "fsdp": 2, "tensor": 2}, 2, 4),
                                 ({"data": -1, "fsdp": 1, "tensor": 1}, 8, 1),
                                 ({"data": 1, "fsdp": 1, "tensor": 8}, 1, 8)]:
    c.mesh.update(mesh)
    assert preflight.validate(c, 8, 256, process_count=processes, local_devices=local)["tensor"] == mesh["tensor"]
  c.mesh.update(data=1, fsdp=1, tensor=8)  # a TPU slice's interconnect spans its hosts: tensor may too
  preflight.validate(c, 8, 256, platform="tpu", process_count=2, local_devices=4)


# ---------------------------------------------------------------- a run shorter than its warmup (issue 11)


def test_run_shorter_than_warmup_warns_and_runs(caplog):
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  c = cfg_lib.load("configs/default.py", ["train.steps=30"])  # the smoke test of the issue: warmup is 60
  with caplog.at_level("WARNING", logger="jaxtrain.optim"):
    preflight.validate(c, 8, 256)
  (message,) = [r.getMessage() for r in caplog.records]
  end = float(optim.schedule(c.optim, 30)(29))  # the learning rate of the last step, as the optimizer has it
  assert message.startswith("optim.warmup_steps=60 exceeds train.steps=30: running anyway")
  assert f"ends at {end:.3g} (29/60 of optim.lr=0.003)" in message, (message, end)


def test_wsd_cut_short_warns_with_the_true_final_rate(caplog):
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  c = cfg_lib.load("configs/lm_small.py:tiny", ["train.steps=1100"])  # warmup 1000 + decay 220 > 1100
  with caplog.at_level("WARNING", logger="jaxtrain.optim"):
    preflight.validate(c, 8, 256)
  (message,) = [r.getMessage() for r in caplog.records]
  end = float(optim.schedule(c.optim, 1100)(1099))
  assert "optim.schedule=wsd: warmup_steps=1000 plus the decay (decay_fraction·steps=220) exceed" in message
  assert f"ending at {end:.3g} rather than min_lr_ratio·lr" in message, (message, end)
  caplog.clear()
  preflight.validate(cfg_lib.load("configs/default.py"), 8, 256)  # a full-length run warns of nothing
  assert not caplog.records


@pytest.mark.parametrize("feature, key, value", [
    ("attention", "model.attention", "flash"),
    ("fp8", "model.fp8", "e4m3"),
    ("munit", "model.parametrization", "mup"),
    ("optim", "optim.name", "sgd"),
    ("placement", "model.norm.placement", "sandwich"),
    ("stablemax", "model.output", "softmin"),
    ("stablemax", "train.loss_dtype", "float16"),
    ("growth", "growth.opt", "keep"),
])
def test_each_feature_owns_its_choices(tiny, feature, key, value):
  """config.check leaves a feature's field to the feature's own check; preflight runs both."""
  import importlib  # pylint: disable=g-import-not-at-top
  c = tiny()
  cfg_lib.set_field(c, key, value)
  target = cfg_lib.Target(num_devices=1)
  assert cfg_lib.check(c, target) == {"data": 1, "fsdp": 1, "tensor": 1}
  message = f"{key}='{value}' is not one of"
  with pytest.raises(cfg_lib.ConfigError, match=message):
    importlib.import_module(f"jaxtrain.{feature}").check(c, target)
  with pytest.raises(cfg_lib.ConfigError, match=message):
    preflight.validate(c, 1)


def test_describe(tiny):
  assert cfg_lib.describe(tiny().model) == "2 layers, d_model 32, 4 heads of 8, mlp 64"
