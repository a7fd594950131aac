#!/usr/bin/env bash
# Start jaxtrain on every worker of a Cloud TPU VM slice.
# Usage: tpu/launch.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${JAXTRAIN_REPO:-https://github.com/your-org/jaxtrain.git}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  [ -d jaxtrain ] || git clone $repo jaxtrain
  cd jaxtrain && git pull --ff-only
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'
  .venv/bin/python -m jaxtrain --distributed --config=$config --workdir=$workdir $*
"
