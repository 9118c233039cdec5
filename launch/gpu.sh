#!/usr/bin/env bash
# GPUs: one node with all its GPUs, or several nodes (one process per node, all its GPUs each).
#
#   One node:     launch/gpu.sh CONFIG=configs/beauty.py:base WORKDIR=/ckpt/beauty
#   Multi-node:   on every node i of N:
#                 launch/gpu.sh CONFIG=... WORKDIR=/shared/ckpt COORDINATOR=node0:1234 NUM_PROCESSES=N PROCESS_ID=i
#   SLURM:        inside an allocation (salloc/sbatch), NODES=N starts one task per node with srun;
#                 each task reads its rank and the coordinator from the SLURM environment
#                 (jax.distributed.initialize() detects SLURM):
#                 sbatch --nodes=4 --gpus-per-node=8 --wrap "launch/gpu.sh NODES=4 CONFIG=... WORKDIR=..."
#
# Arguments are KEY=VALUE (or the same variables in the environment):
#   CONFIG, WORKDIR        experiment file[:preset] and its workdir (required; WORKDIR must be shared
#                          by all nodes: checkpoints are written by every process)
#   COORDINATOR            host:port of process 0; with NUM_PROCESSES and PROCESS_ID
#   NODES                  under SLURM: number of nodes to srun on (one task each)
#   EXTRA                  more flags, e.g. "--config.train.batch_size=1024 --config.mesh.shape=(-1,1,8)"
#   DRY_RUN=1              print the command instead of running it
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
for kv in "$@"; do
  [[ "$kv" == *=* ]] || { echo "launch/gpu.sh: expected KEY=VALUE, got '$kv' (see --help)" >&2; exit 2; }
  export "${kv?}"
done
: "${CONFIG:?CONFIG=configs/X.py required (see --help)}" "${WORKDIR:?WORKDIR=DIR required (see --help)}"
show() { printf '%q ' "$@"; echo; }

# In a SLURM allocation but not yet inside a task: start one task per node running this script.
if [[ -n "${NODES:-}" && -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" ]]; then
  cmd=(srun --nodes="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 "$0" "$@")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then show "${cmd[@]}"; exit 0; fi
  exec "${cmd[@]}"
fi

dist=()
if [[ -n "${COORDINATOR:-}" ]]; then
  dist=(--config.distributed.initialize=true
        --config.distributed.coordinator_address="$COORDINATOR"
        --config.distributed.num_processes="${NUM_PROCESSES:?NUM_PROCESSES required with COORDINATOR}"
        --config.distributed.process_id="${PROCESS_ID:?PROCESS_ID required with COORDINATOR}")
elif [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  dist=(--config.distributed.initialize=true)
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
read -r -a extra <<< "${EXTRA:-}"
cmd=(llm4rec train --config="$CONFIG" --workdir="$WORKDIR" "${dist[@]}" "${extra[@]}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then show "${cmd[@]}"; exit 0; fi
exec "${cmd[@]}"
