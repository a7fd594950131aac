"""The command line (absl-style flags, --flagfile, --helpfull, --distributed) and the launch scripts (issue 11)."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from jaxtrain import __main__ as cli
from jaxtrain import config as cfg_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--config=configs/default.py", "--workdir=/tmp/x"]


def test_space_separated_flags_are_the_equals_form():
  spaced, _ = cli.parse(["--config", "configs/default.py", "--workdir", "/tmp/x", "--config.model.num_layers", "12",
                         "--config.optim.lr", "-1e-3", "--config.data.name", "c4/en", "--config.model.qk_norm",
                         "--config.model.tie_embeddings", "false", "--config.mesh.fsdp", "-1"])
  equals, _ = cli.parse(BASE + ["--config.model.num_layers=12", "--config.optim.lr=-1e-3", "--config.data.name=c4/en",
                                "--config.model.qk_norm=true", "--config.model.tie_embeddings=false",
                                "--config.mesh.fsdp=-1"])
  assert spaced.to_dict() == equals.to_dict()
  assert (spaced.model.num_layers, spaced.optim.lr, spaced.model.qk_norm, spaced.model.tie_embeddings) == (
      12, -1e-3, True, False)


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--config.model.num_layrs", "12"],
     "unknown config key 'model.num_layrs'; did you mean 'model.num_layers'"),
    (BASE + ["--config.model.num_layers"], "--config.model.num_layers has no value"),
    (BASE + ["--config.model.num_layers", "--config.optim.lr=1"], "--config.model.num_layers has no value"),
    (BASE + ["12"], "unrecognized argument '12'"),
    (BASE + ["--confg.model.num_layers=2"], "unrecognized argument '--confg.model.num_layers=2'"),
    (["--config=configs/default.py"], "--workdir is required"),
    (BASE + ["--num_processes=two"], "argument --num_processes: invalid int value: 'two'"),
    (BASE + ["--flagfile=/nonexistent/flags"], "--flagfile=/nonexistent/flags: cannot read it"),
])
def test_bad_command_lines_are_one_line_errors(argv, message):
  with pytest.raises(cfg_lib.ConfigError, match=message.replace("(", r"\(")) as e:
    cli.parse(argv)
  assert "\n" not in str(e.value)


def test_flagfile_holds_a_long_command(tmp_path):
  model = tmp_path / "model.flags"
  model.write_text("# the model\n--config.model.num_layers=6\n--config.model.d_model 512\n")
  flags = tmp_path / "run.flags"
  flags.write_text(textwrap.dedent(f"""\
      # a run, absl's format: one flag per line
      --config=configs/default.py

      --workdir=/tmp/runs/with space
      // nested flag files are read in place
      --flagfile={model}
      --config.data.text_glob=/data/*.txt
      """))
  config, workdir = cli.parse([f"--flagfile={flags}", "--config.model.num_layers", "8"])  # later flags win
  assert workdir == "/tmp/runs/with space"
  assert (config.model.num_layers, config.model.d_model, config.data.text_glob) == (8, 512, "/data/*.txt")
  (tmp_path / "loop.flags").write_text(f"--flagfile={tmp_path / 'loop.flags'}\n")
  with pytest.raises(cfg_lib.ConfigError, match="includes itself"):
    cli.parse(["--flagfile", str(tmp_path / "loop.flags")])


def test_helpfull_lists_every_field_with_type_default_and_value(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse(["--helpfull"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha() and "." in line.split()[0]}
  keys = cfg_lib.flat_keys(cfg_lib.base())
  assert set(keys) - {"seed"} <= set(rows), set(keys) - set(rows)
  assert rows["model.num_layers"][1:3] == ["int", "4"]
  assert rows["model.head_dim"][1:3] == ["int", "None"]  # a placeholder shows its declared type
  assert rows["optim.lr"][1] == "float" and rows["model.qk_norm"][1:3] == ["bool", "False"]
  assert "swiglu | gelu" in " ".join(rows["model.mlp"])  # the comment in base() is the description
  # With a config (and overrides): its values, starred where they differ from the default.
  with pytest.raises(SystemExit):
    cli.parse(["--config", "configs/default.py", "--config.model.num_layers", "12", "--helpfull"])
  out = capsys.readouterr().out
  rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("model.")}
  assert rows["model.num_layers"][1:4] == ["int", "4", "*12"]
  assert rows["model.qk_norm"][1:4] == ["bool", "False", "False"]


# ---------------------------------------------------------------- --distributed


def _args(*argv):
  args, rest = cli.parser().parse_known_args(list(argv))
  assert not rest
  return args


@pytest.fixture
def no_jax_env(monkeypatch):
  for var in cli.ENV.values():
    monkeypatch.delenv(var, raising=False)
  return monkeypatch


def test_distributed_arguments_from_flags_and_environment(no_jax_env):
  assert cli.distributed_kwargs(_args()) is None  # one process: jax.distributed is not touched
  assert cli.distributed_kwargs(_args("--distributed")) == dict(  # TPU, SLURM, Open MPI: JAX detects them all
      coordinator_address=None, num_processes=None, process_id=None)
  assert cli.distributed_kwargs(_args("--coordinator=10.0.0.1:1234", "--num_processes", "2", "--process_id=1")) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)  # the flags imply --distributed
  no_jax_env.setenv("JAX_COORDINATOR_ADDRESS", "host0:5000")
  no_jax_env.setenv("JAX_NUM_PROCESSES", "4")
  no_jax_env.setenv("JAX_PROCESS_ID", "3")
  assert cli.distributed_kwargs(_args()) is None  # the variables alone start nothing
  assert cli.distributed_kwargs(_args("--distributed", "--process_id=2")) == dict(
      coordinator_address="host0:5000", num_processes=4, process_id=2)  # a flag wins over its variable


@pytest.mark.parametrize("argv, env, message", [
    (["--coordinator=localhost:1234", "--num_processes=2"], {}, "--coordinator=localhost:1234 needs --process_id too"),
    (["--coordinator=localhost:1234"], {}, "needs --num_processes and --process_id too"),
    (["--coordinator=localhost", "--num_processes=2", "--process_id=0"], {}, "'localhost' is not HOST:PORT"),
    (["--coordinator=h:1", "--num_processes=2", "--process_id=2"], {}, r"--process_id=2 must be in \[0, "),
    (["--coordinator=h:1", "--num_processes=0", "--process_id=0"], {}, "--num_processes=0 must be at least 1"),
    (["--distributed"], {"JAX_PROCESS_ID": "one"}, "JAX_PROCESS_ID='one' is not an integer"),
])
def test_distributed_errors(no_jax_env, argv, env, message):
  for k, v in env.items():
    no_jax_env.setenv(k, v)
  with pytest.raises(cfg_lib.ConfigError, match=message) as e:
    cli.parse(BASE + argv)
  assert "\n" not in str(e.value)


def test_distributed_calls_initialize_with_the_flags(no_jax_env):
  import jax  # pylint: disable=g-import-not-at-top
  calls = []
  no_jax_env.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  config, _ = cli.parse(BASE + ["--coordinator", "localhost:1234", "--num_processes", "2", "--process_id", "0",
                                "--config.model.num_layers", "3"])
  assert calls == [dict(coordinator_address="localhost:1234", num_processes=2, process_id=0)]
  assert config.model.num_layers == 3

  def fails(**kw):
    raise ValueError("coordinator_address should be defined.")

  no_jax_env.setattr(jax.distributed, "initialize", fails)
  with pytest.raises(cfg_lib.ConfigError, match=r"--distributed: jax.distributed.initialize\(nothing\) failed: "
                                                "coordinator_address should be defined.; outside a TPU pod"):
    cli.parse(BASE + ["--distributed"])


TWO_PROCESS_CHECK = """
import sys
import jax, numpy as np
from jaxtrain import __main__ as cli, sharding
config, _ = cli.parse(sys.argv[1:])
mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, jax.devices())
x = jax.make_array_from_callback((8,), sharding.NamedSharding(mesh, sharding.spec(("batch",))),
                                 lambda i: np.arange(8.0, dtype=np.float32)[i])
total = float(jax.jit(lambda a: a.sum(), out_shardings=sharding.NamedSharding(mesh, sharding.P()))(x))
print("RESULT", jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
      config.model.num_layers, total)
"""


def test_two_local_processes_form_one_8_device_mesh(tmp_path):
  """The flags H4's two-process harness uses: 2 processes x 4 CPU devices = one mesh, a collective across both."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # XLA_FLAGS (8 devices, from conftest) is overridden by --cpu_devices
  for var in cli.ENV.values():
    env.pop(var, None)
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_CHECK, *BASE, "--config.model.num_layers", "3",
                             f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                             "--cpu_devices=4"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=120)[0])
    finally:
      p.kill()
  results = sorted(line.split()[1:] for out in outs for line in out.splitlines() if line.startswith("RESULT"))
  assert results == [["0", "2", "4", "8", "3", "28.0"], ["1", "2", "4", "8", "3", "28.0"]], outs


# ---------------------------------------------------------------- launch scripts

TRICKY = ["--config.data.text_glob=/data/my corpus/*.txt", "--config.data.text_key", "it's \"quoted\" $HOME `x`"]


def _fake(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)


def _record_argv(log):
  return f'for a in "$@"; do printf "%s\\0" "$a"; done >> {log}; printf "\\n\\0" >> {log}\n'


def _calls(log):
  """The argv of each recorded call."""
  return [c.strip("\0").split("\0") for c in log.read_text().split("\n\0") if c.strip("\0")]


def test_tpu_launch_quotes_every_argument_and_pins_one_commit(tmp_path):
  # A checkout of this repository's launcher with one commit and an origin.
  src = tmp_path / "src"
  (src / "tpu").mkdir(parents=True)
  (src / "tpu" / "launch.sh").write_bytes(open(os.path.join(REPO, "tpu", "launch.sh"), "rb").read())
  (src / "tpu" / "launch.sh").chmod(0o755)
  git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "launcher"], check=True)
  subprocess.run(git[:3] + ["remote", "add", "origin", "https://example.com/org/jaxtrain.git"], check=True)
  sha = subprocess.run(git[:3] + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

  # gcloud records its argv; the worker's git, python3 and the venv's python record theirs.
  bin_dir, worker, log = tmp_path / "bin", tmp_path / "worker", tmp_path / "calls"
  bin_dir.mkdir()
  (worker / "jaxtrain" / ".git").mkdir(parents=True)
  (worker / "jaxtrain" / ".venv" / "bin").mkdir(parents=True)
  for name in ("gcloud", "python3"):
    _fake(bin_dir, name, f"printf '{name}\\0' >> {log}\n" + _record_argv(log))
  for name in ("python", "pip"):
    _fake(worker / "jaxtrain" / ".venv" / "bin", name, f"printf '{name}\\0' >> {log}\n" + _record_argv(log))
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXTRAIN_")}
  env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"  # the launcher's own git calls are real ones
  launch = [str(src / "tpu" / "launch.sh"), "my-tpu", "us-central2-b", "configs/lm_small.py:medium",
            "/mnt/runs/a b", *TRICKY]
  subprocess.run(launch, check=True, env=env, capture_output=True, text=True)
  ((gcloud, *argv),) = _calls(log)
  assert gcloud == "gcloud" and argv[:8] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-central2-b",
                                             "--worker=all"]
  assert argv[8] == "--command"
  remote = argv[9]

  # What one worker does with the command: run it in bash, in its home directory, with the fakes.
  log.write_text("")
  _fake(bin_dir, "git", "printf 'git\\0' >> " + str(log) + "\n" + _record_argv(log))
  subprocess.run(["bash", "-c", remote], check=True, cwd=worker, env=dict(env, PATH=f"{bin_dir}:/usr/bin:/bin"))
  calls = _calls(log)
  assert ["git", "fetch", "-q", "origin"] in calls and ["git", "checkout", "-q", "--detach", sha] in calls
  assert not any(c[:2] == ["git", "pull"] for c in calls)
  assert calls[-1] == ["python", "-m", "jaxtrain", "--distributed", "--config=configs/lm_small.py:medium",
                       "--workdir=/mnt/runs/a b", *TRICKY]


def test_slurm_script_starts_one_distributed_process_per_node(tmp_path):
  bin_dir, log = tmp_path / "bin", tmp_path / "calls"
  bin_dir.mkdir()
  _fake(bin_dir, "srun", f"printf 'srun\\0%s\\0' \"$JAX_LOCAL_DEVICE_IDS\" >> {log}\n" + _record_argv(log))
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_GPUS_ON_NODE="4")
  env.pop("JAXTRAIN_PYTHON", None)
  subprocess.run(["bash", "slurm/train.sbatch", "configs/lm_small.py", "/shared/runs/a b", *TRICKY], check=True,
                 cwd=REPO, env=env)
  ((srun, local_ids, *argv),) = _calls(log)
  assert (srun, local_ids) == ("srun", "0,1,2,3")  # every GPU of the node to its one process
  assert argv == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "jaxtrain", "--distributed",
                  "--config=configs/lm_small.py", "--workdir=/shared/runs/a b", *TRICKY]
  # What srun starts parses to those values (SLURM itself is detected by jax.distributed.initialize).
  config, workdir = cli.parse(argv[6:])
  assert workdir == "/shared/runs/a b" and config.data.text_glob == "/data/my corpus/*.txt"
  assert config.data.text_key == "it's \"quoted\" $HOME `x`"
