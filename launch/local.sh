#!/usr/bin/env bash
# One machine, all its local devices (CPU, or every GPU/TPU chip attached to it).
#
#   launch/local.sh CONFIG=configs/beauty.py WORKDIR=workdirs/beauty [EXTRA="--config.train.num_epochs=5"]
#
# Arguments are KEY=VALUE (or the same variables in the environment):
#   CONFIG    experiment file[:preset]              (required)
#   WORKDIR   checkpoints, logs and metrics          (required; a run there resumes)
#   COMMAND   train | evaluate                       (default train)
#   EXTRA     more flags, e.g. "--config.mesh.shape=(1,2,4)"
#   DRY_RUN=1 print the command instead of running it
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
for kv in "$@"; do
  [[ "$kv" == *=* ]] || { echo "launch/local.sh: expected KEY=VALUE, got '$kv' (see --help)" >&2; exit 2; }
  export "${kv?}"
done
: "${CONFIG:?CONFIG=configs/X.py required (see --help)}" "${WORKDIR:?WORKDIR=DIR required (see --help)}"
read -r -a extra <<< "${EXTRA:-}"
cmd=(llm4rec "${COMMAND:-train}" --config="$CONFIG" --workdir="$WORKDIR" "${extra[@]}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
