#!/usr/bin/env bash
# Every accelerator measurement in one go (one GPU), each section under its own time limit so that a
# slow one costs only itself. Results land in ${OUT:-/tmp}/ (at most 8 files: what the device tool
# brings back):
#   env.txt            GPU, driver, jax; cuDNN-vs-XLA attention agreement
#   input_pipeline.json  the host's training-input rate (benchmarks/input_pipeline.py)
#   beauty_filter_seeds3.jsonl  seeds 0,1,2 of the best CPU config trained at once (replicas, one line each)
#   beauty_filter.json the same with model.filter_mix=0.7 (the best CPU config, seed 0)
#   beauty_filter_spc16.json  the same with train.steps_per_call=16 (16 steps per jitted call)
#   throughput.json    tokens/s, MFU against the datasheet peak, peak memory: 1b and base presets;
#                      1b with scanned, rematerialized blocks; then the small preset with 1 and 3 replicas in one vmapped step
#   events.tar.gz      the Beauty runs' events.jsonl
#   log.txt            stderr of everything
#   bash benchmarks/gpu_suite.sh          # on the GPU machine, LLM4REC_DATA_DIR holding amazon/beauty
#   QUICK=1 PRESETS=tiny,small BATCH_SIZES=8,8 bash benchmarks/gpu_suite.sh  # seconds on a CPU
set -uo pipefail
PRESETS=${PRESETS:-1b,base} BATCH_SIZES=${BATCH_SIZES:-64,128}
out=${OUT:-/tmp/gpu_suite}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
py=${PYTHON:-python3}
quick=${QUICK:+--quick}
limit() { if [ -n "${QUICK:-}" ]; then echo 600; else echo "$1"; fi; }
log="$out/log.txt"
D128=(--set model.d_model=128 --set model.num_heads=2 --set model.mlp_dim=256 --set model.dropout=0.5
      --set train.num_epochs=18 --set optimizer.learning_rate=3e-3 --set train.progress_bar=False)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  timeout "$(limit 60)" $py - <<'PY'
import jax, jax.numpy as jnp
from llm4rec_jax.model import layers
print('jax', jax.__version__, jax.devices())
if jax.default_backend() == 'gpu':
  # cuDNN's fused kernel against XLA's on a left-padded causal mask, as the decoder builds it.
  b, s, h, d = 4, 200, 16, 128
  q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, d), jnp.bfloat16) for i in range(3))
  valid = jnp.arange(s)[None] >= jnp.array([0, 10, 100, 190])[:, None]
  mask = ((jnp.tril(jnp.ones((s, s), bool))[None] & valid[:, None, :]) | jnp.eye(s, dtype=bool))[:, None]
  x = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla').astype(jnp.float32)
  c = layers.dot_product_attention(q, k, v, mask, 'cudnn').astype(jnp.float32)
  print('attention auto ->', layers.attention_impl('auto', jnp.bfloat16),
        '| max |cudnn - xla| on valid rows:', float(jnp.max(jnp.abs(c - x) * valid[..., None, None])))
PY
} > "$out/env.txt" 2>>"$log"
echo "== env done $(date -u +%T)" >> "$log"

timeout "$(limit 60)" $py benchmarks/input_pipeline.py $quick --batches 1000 "${D128[@]}" \
  > "$out/input_pipeline.json" 2>>"$log"
echo "== input_pipeline rc=$? $(date -u +%T)" >> "$log"


timeout "$(limit 150)" $py benchmarks/beauty.py $quick --workdir=/tmp/wd/beauty_filter --seed 0 "${D128[@]}" \
  --set model.filter_mix=0.7 > "$out/beauty_filter.json" 2>>"$log"
echo "== beauty_filter rc=$? $(date -u +%T)" >> "$log"
# The same run with 16 train steps per jitted call (train.steps_per_call): dispatch-bound at this size.
timeout "$(limit 150)" $py benchmarks/beauty.py $quick --workdir=/tmp/wd/beauty_filter_spc16 --seed 0 "${D128[@]}" \
  --set model.filter_mix=0.7 --set train.steps_per_call=16 > "$out/beauty_filter_spc16.json" 2>>"$log"
echo "== beauty_filter_spc16 rc=$? $(date -u +%T)" >> "$log"
# Three seeds of the same config at once (llm4rec_jax.train.replicas: one vmapped step), each equal to
# its separate run; wall_s is the three seeds' together.
timeout "$(limit 200)" $py benchmarks/beauty.py $quick --workdir=/tmp/wd/beauty_filter_seeds3 --seeds 0,1,2 \
  "${D128[@]}" --set model.filter_mix=0.7 > "$out/beauty_filter_seeds3.jsonl" 2>>"$log"
echo "== beauty_filter_seeds3 rc=$? $(date -u +%T)" >> "$log"
(cd /tmp/wd && tar czf "$out/events.tar.gz" $(find . -name events.jsonl -o -name metrics.json) 2>/dev/null)

# Printed line by line (one per run), so a run cut by the limit loses only itself.
timeout "$(limit 170)" $py benchmarks/throughput.py $quick --dataset=random --presets=${PRESETS} \
  --batch_sizes=${BATCH_SIZES} --max_len=200 --num_items=32768 --variants=id --attention=auto,xla \
  --steps=10 --peak --keep_going > "$out/throughput.json" 2>>"$log"
echo "== throughput rc=$? $(date -u +%T)" >> "$log"
# The first preset again with scanned, rematerialized blocks (model.scan_layers, model.remat=full).
timeout "$(limit 120)" $py benchmarks/throughput.py $quick --dataset=random --presets=${PRESETS%%,*} \
  --batch_sizes=${BATCH_SIZES%%,*} --max_len=200 --num_items=32768 --variants=id --steps=10 --peak \
  --set model.scan_layers=True --set model.remat=full >> "$out/throughput.json" 2>>"$log"
echo "== throughput scan+remat rc=$? $(date -u +%T)" >> "$log"
timeout "$(limit 90)" $py benchmarks/throughput.py $quick --dataset=beauty --presets=small --variants=id \
  --replicas=1,3 --steps=50 >> "$out/throughput.json" 2>>"$log"
echo "== throughput replicas rc=$? $(date -u +%T)" >> "$log"
