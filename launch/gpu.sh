#!/usr/bin/env bash
# GPUs: one node with all its GPUs, or several nodes (one process per node).
#   Single node:  launch/gpu.sh CONFIG=configs/beauty.py:base WORKDIR=/ckpt/beauty
#   Multi-node:   launch/gpu.sh CONFIG=... WORKDIR=... COORDINATOR=host0:1234 NUM_PROCESSES=4 PROCESS_ID=$RANK
#   Under SLURM (srun, one task per node), COORDINATOR/NUM_PROCESSES/PROCESS_ID may be omitted:
#   jax.distributed.initialize() reads them from the SLURM environment.
# Extra flags: EXTRA="--config.train.batch_size=1024 --config.mesh.shape=(-1,1,8)"
set -euo pipefail
for kv in "$@"; do export "${kv?}"; done
: "${CONFIG:?CONFIG=configs/X.py required}" "${WORKDIR:?WORKDIR=DIR required}"
DIST=()
if [[ -n "${COORDINATOR:-}" ]]; then
  DIST=(--config.distributed.initialize=true
        --config.distributed.coordinator_address="$COORDINATOR"
        --config.distributed.num_processes="${NUM_PROCESSES:?}"
        --config.distributed.process_id="${PROCESS_ID:?}")
elif [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  DIST=(--config.distributed.initialize=true)
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec llm4rec train --config="$CONFIG" --workdir="$WORKDIR" "${DIST[@]}" ${EXTRA:-}
