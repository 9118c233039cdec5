#!/usr/bin/env bash
# The accelerator measurements in one go (one GPU): attention kernels agree, then throughput/MFU of
# the base and 1b presets with cuDNN and XLA attention. Results land in ${OUT:-/tmp}/.
#   bash benchmarks/gpu_suite.sh
set -euo pipefail
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY'
import jax, jax.numpy as jnp
from llm4rec_jax.model import layers
print('jax', jax.__version__, jax.devices())
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
python3 benchmarks/throughput.py --dataset=random --presets=base,1b --batch_sizes=128,64 \
  --max_len=200 --num_items=32768 --variants=id --attention=auto,xla --steps=10 --peak \
  --keep_going "$@" | tee "$out/throughput_gpu.json"
