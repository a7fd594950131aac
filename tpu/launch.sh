#!/usr/bin/env bash
# Start one jaxtrain run on every worker of a Cloud TPU VM slice, all workers at the same commit.
#
# Usage: tpu/launch.sh TPU_NAME ZONE CONFIG WORKDIR [FLAG ...]
#   FLAG: any jaxtrain flag (--config.x=y, --config.x y, --flagfile=F on the workers' disk); each reaches the
#   workers' command line as one argument, spaces and quotes included.
# Environment:
#   JAXTRAIN_COMMIT  what to run (default HEAD of this checkout), resolved here to one commit id: every worker
#                    fetches and checks out exactly that commit (push it first)
#   JAXTRAIN_REPO    the git URL the workers clone (default: this checkout's `origin`)
#   JAXTRAIN_DIR     the checkout on each worker (default: jaxtrain, in the home directory)
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [FLAG ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
src=$(cd "$(dirname "$0")/.." && pwd)

if ! commit=$(git -C "$src" rev-parse --verify --quiet "${JAXTRAIN_COMMIT:-HEAD}^{commit}"); then
  echo "$0: cannot resolve ${JAXTRAIN_COMMIT:-HEAD} to a commit in $src; set JAXTRAIN_COMMIT to a commit id" >&2
  exit 2
fi
if ! repo=${JAXTRAIN_REPO:-$(git -C "$src" remote get-url origin 2>/dev/null)}; then
  echo "$0: $src has no 'origin' remote; set JAXTRAIN_REPO to the URL the workers clone" >&2
  exit 2
fi
if [ -n "$(git -C "$src" status --porcelain --untracked-files=no)" ]; then
  echo "$0: warning: uncommitted changes in $src are not run; the workers run commit $commit" >&2
fi
if [ -z "$(git -C "$src" branch -r --contains "$commit" 2>/dev/null)" ]; then
  echo "$0: warning: commit $commit is on no remote branch known here; the workers fetch it from $repo" >&2
fi

# The command every worker runs, each value quoted for the worker's shell (bash) with printf %q.
q() { printf '%q' "$1"; }
args=$(printf ' %q' --config="$config" --workdir="$workdir" "$@")
dir=$(q "${JAXTRAIN_DIR:-jaxtrain}")
remote="set -euo pipefail
[ -d $dir/.git ] || git clone -q $(q "$repo") $dir
cd $dir
git fetch -q origin
git cat-file -e $commit^{commit} 2>/dev/null || git fetch -q origin $commit  # a commit on no branch: by id
git checkout -q --detach $commit
python3 -m venv .venv
.venv/bin/pip install -q -e . 'jax[tpu]'
exec .venv/bin/python -m jaxtrain --distributed$args"

echo "$0: running commit $commit on every worker of $tpu" >&2
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote"
