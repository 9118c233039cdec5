#!/usr/bin/env bash
# One machine, all its local devices (CPU, or every GPU/TPU chip attached).
#   launch/local.sh CONFIG=configs/beauty.py WORKDIR=workdirs/beauty [EXTRA="--config.train.num_epochs=5"]
set -euo pipefail
for kv in "$@"; do export "${kv?}"; done
: "${CONFIG:?CONFIG=configs/X.py required}" "${WORKDIR:?WORKDIR=DIR required}"
exec llm4rec train --config="$CONFIG" --workdir="$WORKDIR" ${EXTRA:-}
