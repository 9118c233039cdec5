#!/usr/bin/env bash
# Cloud TPU: create (or reuse) a TPU VM or pod slice, copy the project to every worker, install it,
# train on all workers at once (one process per host; jax.distributed.initialize() finds the
# slice's hosts itself), stream their logs here, and optionally delete the TPU afterwards.
#
#   launch/tpu.sh TPU_NAME=rec-v5e ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 \
#       BUCKET=my-bucket CONFIG=configs/beauty.py:1b WORKDIR=/home/\$USER/gcs/beauty-1b
#   launch/tpu.sh TPU_NAME=rec-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-128 \
#       RUNTIME_VERSION=v2-alpha-tpuv5 BUCKET=my-bucket CONFIG=... WORKDIR=... DELETE=1
#
# Arguments are KEY=VALUE (or the same variables in the environment):
#   TPU_NAME, ZONE           the TPU VM (required); PROJECT optional (gcloud's default otherwise)
#   ACCELERATOR_TYPE         e.g. v5litepod-8, v5litepod-256, v5p-128 (needed to create)
#   RUNTIME_VERSION          TPU software version (default v2-alpha-tpuv5-lite)
#   SPOT=1                   create as a Spot VM
#   CREATE=0                 never create: fail if TPU_NAME does not exist (default: create if missing)
#   CONFIG, WORKDIR          experiment file[:preset] and a workdir that every host sees (each host
#                            writes its shards of every checkpoint): gs://BUCKET/PATH (that bucket is
#                            mounted at ~/gcs with gcsfuse and the run writes ~/gcs/PATH), a path
#                            under the BUCKET mount such as '~/gcs/run' (~ is each worker's home), or
#                            an NFS path
#   BUCKET                   mount gs://BUCKET at ~/gcs on every worker with gcsfuse before training
#   DATA_DIR                 the datasets, put on every worker at ~/llm4rec_data (LLM4REC_DATA_DIR):
#                            gs://... is copied there by each worker, a local directory is shipped
#   EXTRA                    more llm4rec flags, e.g. "--config.mesh.shape=(1,-1,1)"
#   ENV                      environment for the run on each worker, e.g. "LLM4REC_DATA_DIR=/data"
#   LOG_DIR                  per-worker logs also saved here (default logs/TPU_NAME)
#   DELETE=1                 delete the TPU when the run ends (also when it fails)
#   DRY_RUN=1                print the gcloud commands instead of running them
#                            (the TPU is then taken as missing, so the create command is shown)
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
for kv in "$@"; do
  [[ "$kv" == *=* ]] || { echo "launch/tpu.sh: expected KEY=VALUE, got '$kv' (see --help)" >&2; exit 2; }
  export "${kv?}"
done
: "${TPU_NAME:?TPU_NAME required (see --help)}" "${ZONE:?ZONE required (see --help)}"
: "${CONFIG:?CONFIG=configs/X.py required (see --help)}" "${WORKDIR:?WORKDIR required (see --help)}"
cd "$(dirname "$0")/.."

# The workdir as each worker's shell must see it: a gs:// workdir is read and written through the
# bucket's gcsfuse mount at ~/gcs, and a leading ~ is the worker's home (never a folder named "~").
if [[ "$WORKDIR" == gs://* ]]; then
  wd_bucket="${WORKDIR#gs://}"; wd_bucket="${wd_bucket%%/*}"
  wd_path="${WORKDIR#gs://"$wd_bucket"}"; wd_path="${wd_path#/}"
  [[ -n "$wd_bucket" && -n "$wd_path" ]] || {
    echo "launch/tpu.sh: WORKDIR=$WORKDIR needs a bucket and a folder (gs://BUCKET/PATH)" >&2; exit 2; }
  if [[ -n "${BUCKET:-}" && "$BUCKET" != "$wd_bucket" ]]; then
    echo "launch/tpu.sh: WORKDIR is in bucket $wd_bucket but BUCKET=$BUCKET is mounted" >&2; exit 2
  fi
  BUCKET="$wd_bucket"
  remote_workdir="\$HOME/gcs/$(printf '%q' "$wd_path")"
elif [[ "$WORKDIR" == "~" || "$WORKDIR" == "~/"* ]]; then
  rest="${WORKDIR#\~}"; rest="${rest#/}"
  remote_workdir="\$HOME${rest:+/$(printf '%q' "$rest")}"
else
  remote_workdir="$(printf '%q' "$WORKDIR")"
fi

run() {  # run a command, or print it under DRY_RUN=1
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})

if [[ "${DRY_RUN:-0}" != 1 ]] && "${tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  echo "reusing TPU $TPU_NAME" >&2
elif [[ "${CREATE:-1}" == 0 ]]; then
  echo "launch/tpu.sh: TPU $TPU_NAME not found in $ZONE and CREATE=0" >&2; exit 1
else
  run "${tpu[@]}" create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="${ACCELERATOR_TYPE:?ACCELERATOR_TYPE required to create $TPU_NAME}" \
      --version="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}" $([[ "${SPOT:-0}" == 1 ]] && echo --spot)
fi
if [[ "${DELETE:-0}" == 1 ]]; then
  trap 'run "${tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet' EXIT
fi

# The working tree (tracked and new files, not what .gitignore excludes), copied to every worker.
tmp="$(mktemp -d)"
git ls-files --cached --others --exclude-standard > "$tmp/files"
bundle="$tmp/llm4rec_jax.tar.gz"
run tar czf "$bundle" -T "$tmp/files"
run "${tpu[@]}" scp "$bundle" "$TPU_NAME":llm4rec_jax.tar.gz "${where[@]}" --worker=all
setup='mkdir -p llm4rec_jax && tar xzf llm4rec_jax.tar.gz -C llm4rec_jax && cd llm4rec_jax && pip install -q -e . "jax[tpu]"'
if [[ -n "${BUCKET:-}" ]]; then
  setup+=" && mkdir -p ~/gcs && (mountpoint -q ~/gcs || gcsfuse --implicit-dirs $(printf '%q' "$BUCKET") ~/gcs)"
fi
# The datasets reach every worker at ~/llm4rec_data, and the run reads them from there.
data_env=''
if [[ -n "${DATA_DIR:-}" ]]; then
  if [[ "$DATA_DIR" == gs://* ]]; then
    setup+=" && mkdir -p ~/llm4rec_data && gcloud storage rsync --recursive $(printf '%q' "$DATA_DIR") ~/llm4rec_data"
  else
    [[ -d "$DATA_DIR" ]] || { echo "launch/tpu.sh: DATA_DIR=$DATA_DIR is not a directory" >&2; exit 2; }
    run tar czf "$tmp/llm4rec_data.tar.gz" -C "$DATA_DIR" .
    run "${tpu[@]}" scp "$tmp/llm4rec_data.tar.gz" "$TPU_NAME":llm4rec_data.tar.gz "${where[@]}" --worker=all
    setup+=" && mkdir -p ~/llm4rec_data && tar xzf ~/llm4rec_data.tar.gz -C ~/llm4rec_data"
  fi
  data_env='LLM4REC_DATA_DIR=$HOME/llm4rec_data '
fi
# EXTRA's words are quoted for the worker's shell, so "--config.mesh.shape=(1,-1,1)" arrives intact.
extra=''
for word in ${EXTRA:-}; do extra+=" $(printf '%q' "$word")"; done
train="llm4rec train --config=$(printf '%q' "$CONFIG") --workdir=$remote_workdir --config.distributed.initialize=true${extra}"
run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$setup"

# Every worker trains; gcloud streams all workers' output, prefixed by worker, and a copy is kept.
log_dir="${LOG_DIR:-logs/$TPU_NAME}"
mkdir -p "$log_dir"
run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all \
    --command="cd llm4rec_jax && ${data_env:+env $data_env}${ENV:+env $ENV }$train" 2>&1 | tee "$log_dir/train.log"
